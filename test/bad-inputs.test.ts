// Bad inputs against a running agent with a token that nginx serves: broken YAML,
// a schema violation, a missing S3 object, malformed bundles, KMS refusing the
// enclave, the enclave refusing a key, a stanza directory that does not exist, S3
// unreachable, the web server's reload failing. Each error names what is wrong;
// after each one the serving token still completes TLS handshakes with its own
// certificate. The messages are printed (docs/RELIABILITY.md lists them).
import test from 'ava';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { startService } from '../src/agent/service.ts';
import { parseConfig } from '../src/agent/config.ts';
import { controlCall } from '../src/agent/control.ts';
import { registerWithP11Kit } from '../src/local/p11kit.ts';
import { launchNginx, freePort, handshake, fingerprintOf, servedSteadily, type RunningServer } from '../src/local/webservers.ts';
import { issueServerCert } from '../src/local/pki.ts';
import { tmpdir } from './helpers/enclave.ts';
import { startTestCloud, type TestCloud } from './helpers/cloud.ts';
import type { StatusReport } from '../src/commands/status.ts';

const dir = tmpdir('bad-inputs');
fs.chmodSync(dir, 0o755);
let tc: TestCloud;
test.before(async () => { tc = await startTestCloud(dir); });
test.after.always(async () => { await tc?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });

/** A TCP proxy to the local cloud that can be switched off: "S3 unreachable". */
async function switchableProxy(target: string): Promise<{ url: string; off(): void; on(): Promise<void> }> {
  const { hostname, port } = new URL(target);
  const sockets = new Set<net.Socket>();
  let server: net.Server;
  const listenPort = await freePort();
  const on = () => new Promise<void>((resolve) => {
    server = net.createServer((c) => {
      const up = net.connect(Number(port), hostname);
      sockets.add(c); sockets.add(up);
      c.pipe(up).pipe(c);
      const drop = () => { c.destroy(); up.destroy(); sockets.delete(c); sockets.delete(up); };
      c.on('error', drop); up.on('error', drop); c.on('close', drop); up.on('close', drop);
    });
    server.listen(listenPort, '127.0.0.1', () => resolve());
  });
  await on();
  return { url: `http://127.0.0.1:${listenPort}`, on, off() { server.close(); for (const s of sockets) s.destroy(); } };
}

test('bad inputs: each error names what is wrong; the serving token keeps serving', async (t) => {
  const etc = path.join(dir, 'etc');
  fs.mkdirSync(etc);
  const bucket = tc.cloud.bucket();
  const goodCert = await tc.publish(bucket, 'good.json', ['good.test']);
  const prefix = path.join(dir, 'nginx');
  const flag = path.join(dir, 'reload-breaks');
  // The reload command an operator might have, made to fail on demand like a broken nginx.conf would.
  const reloadCommand = `if [ -e ${flag} ]; then echo "nginx: [emerg] unknown directive \\"ssl_certifcate\\" in ${prefix}/nginx.conf:12" >&2; exit 1; fi; kill -HUP $(cat ${prefix}/nginx.pid)`;
  const goodToken = `  - label: good\n    source:\n      S3:\n        uri: "s3://${bucket}/good.json"\n    target:\n      NginxStanza:\n        path: ${etc}/good.conf\n`;
  const header = `options:\n  reload_command: '${reloadCommand.replace(/'/g, "''")}'\n  reload_wait_ms: 100\ntokens:\n`;
  const configFile = path.join(dir, 'acm.yaml');
  fs.writeFileSync(configFile, header + goodToken);
  const s3 = await switchableProxy(tc.cloud.endpoint);
  const socket = path.join(dir, 'agent.sock');
  const service = await startService({ configFile, controller: () => tc.controller(), endpoints: { ...tc.endpoints, s3: s3.url }, controlSocket: socket, healthIntervalMs: 500 });
  let nginx: RunningServer | undefined;
  t.teardown(async () => { await nginx?.stop(); await service.stop(); await service.agent.stop(); s3.off(); });
  registerWithP11Kit();
  const port = await freePort();
  fs.mkdirSync(path.join(prefix, 'tmp'), { recursive: true });
  fs.writeFileSync(path.join(prefix, 'nginx.conf'), `daemon off;\nworker_processes 1;\nerror_log ${prefix}/error.log notice;\npid ${prefix}/nginx.pid;\nssl_engine pkcs11;\nenv NITRO_ACM_KEY_ADDRESS;\nevents { worker_connections 64; }\nhttp {\n  access_log off;\n  client_body_temp_path ${prefix}/tmp;\n  server {\n    listen 127.0.0.1:${port} ssl;\n    server_name good.test;\n    include ${etc}/good.conf;\n  }\n}\n`);
  nginx = await launchNginx({ prefix, conf: path.join(prefix, 'nginx.conf'), port, env: { NITRO_ACM_KEY_ADDRESS: service.agent.enclaveEndpoints!.keyAddress } });
  let serving = goodCert;
  const stillServing = async (what: string) => t.is((await handshake(port, { servername: 'good.test', ca: tc.ca.certPem, timeoutMs: 5000 })).fingerprint256, fingerprintOf(serving), `after "${what}" the good token still serves; nginx: ${nginx?.errorLog().slice(-2500)}`);
  await stillServing('start');

  const rows: [string, string][] = [];
  const record = (input: string, message: string | undefined) => { rows.push([input, message ?? '(none)']); };

  // acm.yaml edits that do not parse or violate the schema: reported with file:line:column and ignored.
  const stderr: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  (process.stderr as unknown as { write: (s: string) => boolean }).write = (s: string) => { stderr.push(String(s)); return write(s); };
  t.teardown(() => { (process.stderr as unknown as { write: typeof write }).write = write; });
  const edit = async (input: string, text: string, expect: RegExp) => {
    stderr.length = 0;
    fs.writeFileSync(configFile, text);
    for (const until = Date.now() + 10_000; !stderr.join('').includes('the edit is ignored') && Date.now() < until;) await new Promise((r) => setTimeout(r, 50));
    await service.idle();
    const line = stderr.join('').split('\n').find((l) => l.includes('the edit is ignored'));
    t.regex(line ?? '', expect, input);
    record(input, line?.replace(/^\S+Z /, '').replace(dir, '…'));
    await stillServing(input);
  };
  await edit('broken YAML (unclosed quote)', `${header}${goodToken}  - label: "oops\n`, /acm\.yaml:\d+:\d+: .*the edit is ignored and everything keeps serving/);
  await edit('schema: PIN of 256 bytes', `${header}${goodToken}    pin: ${'7'.repeat(256)}\n`, /acm\.yaml:\d+:\d+: tokens\[0\]\.pin: 256 bytes; a PIN is 1 to 255 bytes/);
  await edit('schema: unknown source kind', `${header}${goodToken.replace('S3:', 'S4:')}`, /acm\.yaml:\d+:\d+: tokens\[0\]\.source: unknown kind "S4" \(expected Acm or S3 or FileDb\)/);
  await edit('schema: duplicate label', `${header}${goodToken}${goodToken}`, /acm\.yaml:\d+:\d+: tokens\[1\]\.label: "good" is already the label of the token at line 5/);
  fs.writeFileSync(configFile, header + goodToken);
  await new Promise((r) => setTimeout(r, 500));
  await service.idle();

  // Valid configuration, bad content: a token "bad" is added and fails; "good" is untouched.
  const addBad = async (input: string, source: string, target = `NginxStanza:\n        path: ${etc}/bad.conf`, expect?: RegExp) => {
    const next = parseConfig(`${header}${goodToken}  - label: bad\n    source:\n      ${source}\n    target:\n      ${target}\n`, 'acm.yaml');
    await service.queue('test', () => service.agent.applyConfig(next));
    const bad = service.agent.tokens.get('bad')!;
    t.is(bad.state, 'failed', input);
    if (expect) t.regex(bad.error ?? '', expect, input);
    record(input, bad.error?.replaceAll(dir, '…'));
    await stillServing(input);
  };
  await addBad('S3 object missing', `S3:\n        uri: "s3://${bucket}/missing.json"`, undefined, /NoSuchKey|does not exist/);
  await tc.put(bucket, 'not-json.json', 'this is not a bundle');
  await addBad('bundle is not JSON', `S3:\n        uri: "s3://${bucket}/not-json.json"`, undefined, /not-json\.json.*JSON/);
  await tc.put(bucket, 'no-key.json', JSON.stringify({ certificate: goodCert, certificateChain: tc.ca.certPem, encryptionMethod: 'KMS' }));
  await addBad('bundle without encryptedPrivateKey', `S3:\n        uri: "s3://${bucket}/no-key.json"`, undefined, /encryptedPrivateKey/);
  await tc.publish(bucket, 'wrong-pcr0.json', ['bad.test'], await tc.createKey('00'.repeat(48)));
  await addBad('KMS denies the enclave (key policy pins another PCR0)', `S3:\n        uri: "s3://${bucket}/wrong-pcr0.json"`, undefined, /KMS refused the decrypt: .*is not authorized to perform: kms:Decrypt/);
  const a = issueServerCert(tc.ca, ['a.test']);
  const b = issueServerCert(tc.ca, ['b.test']);
  await tc.put(bucket, 'mismatch.json', await tc.seal(a.certPem, b.keyPem));
  await addBad('enclave refuses: the key is not the certificate\'s', `S3:\n        uri: "s3://${bucket}/mismatch.json"`, undefined, /does not match|mismatch/i);
  await tc.publish(bucket, 'fine.json', ['bad.test']);
  await addBad('stanza directory missing', `S3:\n        uri: "s3://${bucket}/fine.json"`, `NginxStanza:\n        path: ${dir}/no-such-dir/bad.conf`, /no-such-dir/);

  // S3 unreachable while a renewal is pending: the token keeps its certificate; status shows why.
  fs.writeFileSync(configFile, header + goodToken);
  await service.queue('test', () => service.agent.applyConfig(parseConfig(header + goodToken, 'acm.yaml')));
  s3.off();
  t.deepEqual(await service.queue('sync', () => service.agent.sync()), []);
  const st = await controlCall(socket, 'status');
  const good = st.tokens.find((x) => x.label === 'good')!;
  t.is(good.state, 'serving');
  t.regex(good.error ?? '', /^sync: .*(ECONNREFUSED|connect)/);
  record('S3 unreachable (sync)', good.error);
  await stillServing('S3 unreachable');
  await s3.on();

  // The reload fails: nginx keeps its previous configuration, the agent retries, status says so.
  fs.writeFileSync(flag, '');
  const renewed = await tc.publish(bucket, 'good.json', ['good.test']);
  t.deepEqual(await service.queue('sync', () => service.agent.sync()), ['good']);
  const failing = await controlCall(socket, 'status');
  t.true(failing.webServer!.reloadPending);
  t.regex(failing.webServer!.error!, /\[emerg\] unknown directive/);
  record('web server reload fails', failing.webServer!.error!.replaceAll(dir, '…'));
  await stillServing('reload fails');
  fs.rmSync(flag);
  for (const until = Date.now() + 10_000; (await controlCall(socket, 'status')).webServer!.reloadPending && Date.now() < until;) await new Promise((r) => setTimeout(r, 100));
  serving = renewed;
  t.is(await servedSteadily(port, { servername: 'good.test', ca: tc.ca.certPem }, fingerprintOf(renewed)), fingerprintOf(renewed), 'the renewed certificate once the reload went through');
  await stillServing('reload retried');

  t.log('\n| input | what nitro-acm said |\n|---|---|\n' + rows.map(([i, m]) => `| ${i} | \`${m.replace(/\|/g, '\\|')}\` |`).join('\n'));
});
