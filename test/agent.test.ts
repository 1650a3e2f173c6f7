// The agent with real parts: the local cloud (S3, IMDS, KMS), the enclave app,
// the PKCS#11 module and real nginx. Two tokens from acm.yaml (an ACM certificate
// and a sealed S3 bundle); a renewal under continuous load with zero failed
// handshakes and no nginx restart; an unchanged certificate costs one conditional
// request; a killed enclave comes back with every token and the same PINs.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { Agent } from '../src/agent/agent.ts';
import { ProvisionClient } from '../shared/provision-wire.ts';
import { parseAddress } from '../shared/address.ts';
import { parseConfig } from '../src/agent/config.ts';
import { registerWithP11Kit } from '../src/local/p11kit.ts';
import { launchNginx, freePort, handshake, fingerprintOf, servedSteadily, nginxMainLine, type RunningServer } from '../src/local/webservers.ts';
import { render } from '../src/templates.ts';
import { tmpdir } from './helpers/enclave.ts';
import { startTestCloud, type TestCloud } from './helpers/cloud.ts';

const dir = tmpdir('agent');
fs.chmodSync(dir, 0o755);
let tc: TestCloud;
const CERT_ARN = 'arn:aws:acm:us-east-1:123456789012:certificate/agent-test';

test.before(async () => { tc = await startTestCloud(dir); });
test.after.always(async () => { await tc?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });

const publish = (bucket: string, key: string, name: string) => tc.publish(bucket, key, [name]);

// Serial, on one runtime directory: the challenge's PKCS#11 module is loaded once per process, for one enclave address.
test.serial('two tokens served by nginx; renewal under load with zero failures; ETag polling; enclave restart', async (t) => {
  const etc = path.join(dir, 'etc');
  fs.mkdirSync(etc);
  fs.mkdirSync(path.join(dir, 'bucket-b'), { recursive: true });
  const acmCert = await publish(tc.cloud.bucket(), `${tc.cloud.identity.roleArn}/${CERT_ARN}`, 'acm.test');
  const s3Cert = await publish(tc.cloud.bucket(), 'sealed/s3.json', 's3.test');
  const config = parseConfig(`
options:
  service: nginx
tokens:
  - label: acm-token
    source:
      Acm:
        certificate_arn: "${CERT_ARN}"
    target:
      NginxStanza:
        path: ${etc}/acm.conf
  - label: s3-token
    pin: "s3-token-pin"
    source:
      S3:
        uri: "s3://${tc.cloud.bucket()}/sealed/s3.json"
    target:
      NginxStanza:
        path: ${etc}/s3.conf
`, 'acm.yaml');
  const controller = tc.controller();
  let nginx: RunningServer | undefined;
  let reloads = 0;
  const agent = new Agent({ config, enclave: controller, endpoints: tc.endpoints, reload: async () => { reloads++; nginx?.reload(); } });
  t.teardown(async () => { await nginx?.stop(); await agent.stop(); });
  await agent.start();
  t.deepEqual([...agent.tokens.values()].map((x) => x.state), ['serving', 'serving']);
  t.is(fs.readFileSync(`${etc}/s3.pin`, 'utf8'), 's3-token-pin');
  const acmPin = fs.readFileSync(`${etc}/acm.pin`, 'utf8');

  // nginx with both stanzas, one server block per name.
  registerWithP11Kit();
  const prefix = path.join(dir, 'nginx');
  fs.mkdirSync(path.join(prefix, 'tmp'), { recursive: true });
  const port = await freePort();
  const conf = render('local/nginx.conf', { PREFIX: prefix, PORT: String(port), STANZA: `${etc}/acm.conf`, OPENSSL_MAIN: nginxMainLine('engine') })
    .replace('server_name localhost;', 'server_name acm.test;')
    .replace(/\n}\n$/, `\n    server {\n        listen 127.0.0.1:${port} ssl;\n        server_name s3.test;\n        include ${etc}/s3.conf;\n        location / { return 200 "s3\\n"; }\n    }\n}\n`)
    .replace('ssl_engine pkcs11;', `ssl_engine pkcs11;\nenv NITRO_ACM_KEY_ADDRESS;`);
  fs.writeFileSync(path.join(prefix, 'nginx.conf'), conf);
  nginx = await launchNginx({ prefix, conf: path.join(prefix, 'nginx.conf'), port, env: { NITRO_ACM_KEY_ADDRESS: agent.enclaveEndpoints!.keyAddress } });
  const hs = (name: string) => handshake(port, { servername: name, ca: tc.ca.certPem, timeoutMs: 5000 });
  t.is((await hs('acm.test')).fingerprint256, fingerprintOf(acmCert));
  t.is((await hs('s3.test')).fingerprint256, fingerprintOf(s3Cert));

  // Unchanged: nothing renewed, nothing reloaded.
  t.deepEqual(await agent.sync(), []);
  t.is(reloads, 1);

  // Renewal under continuous load.
  let stop = false, ok = 0, failed = 0;
  const load = (async () => { while (!stop) { try { await hs('acm.test'); ok++; } catch { failed++; } } })();
  await new Promise((r) => setTimeout(r, 300));
  let renewed = await publish(tc.cloud.bucket(), `${tc.cloud.identity.roleArn}/${CERT_ARN}`, 'acm.test');
  t.deepEqual(await agent.sync(), ['acm-token']);
  const deadline = Date.now() + 10_000;
  while ((await hs('acm.test')).fingerprint256 !== fingerprintOf(renewed)) {
    if (Date.now() > deadline) { t.fail(`the renewed certificate is not served: ${nginx.errorLog().slice(-1500)}`); break; }
    await new Promise((r) => setTimeout(r, 100));
  }
  await new Promise((r) => setTimeout(r, 300));
  stop = true;
  await load;
  t.log(`renewal under load: ${ok} handshakes, ${failed} failed`);
  t.is(failed, 0, 'zero failed handshakes during the renewal');
  t.true(ok > 10);
  t.is(nginx.proc.exitCode, null, 'nginx was reloaded, not restarted');
  t.is(fs.readFileSync(`${etc}/acm.pin`, 'utf8'), acmPin, 'same PIN after the renewal');

  // A renewal that stops half way: the enclave takes the new key but the stanza
  // files cannot be written (its directory became group-writable). nginx keeps its files and is not reloaded; the enclave makes the
  // previous key current again (a retired key would be dropped after its grace
  // period, and nginx with it); the next poll rolls the new certificate out.
  const describeCurrent = async () => {
    const c = await ProvisionClient.connect(parseAddress(agent.enclaveEndpoints!.provisionAddress));
    try { return (await c.op('describe', {})).tokens.find((x) => x.label === 'acm-token')!.fingerprint256; } finally { c.close(); }
  };
  // Made group-writable, the directory is one the agent refuses to write into.
  const etcMode = fs.statSync(etc).mode & 0o7777;
  fs.chmodSync(etc, etcMode | 0o020);
  const stalled = await publish(tc.cloud.bucket(), `${tc.cloud.identity.roleArn}/${CERT_ARN}`, 'acm.test');
  const reloadsBefore = reloads;
  t.deepEqual(await agent.sync(), [], 'nothing rolled out');
  t.regex(agent.tokens.get('acm-token')!.error!, /acm\.chain\.pem: directory .* is writable by its group/);
  t.is(agent.tokens.get('acm-token')!.state, 'serving');
  t.is(reloads, reloadsBefore, 'nginx not reloaded');
  t.is(await describeCurrent(), fingerprintOf(renewed), 'the enclave serves the previous key as the current one');
  t.is((await hs('acm.test')).fingerprint256, fingerprintOf(renewed));
  fs.chmodSync(etc, etcMode);
  t.deepEqual(await agent.sync(), ['acm-token'], 'the next poll tries again although S3 did not change since');
  t.is(await describeCurrent(), fingerprintOf(stalled));
  const stalledBefore = renewed;
  renewed = stalled;
  const served = await servedSteadily(port, { servername: 'acm.test', ca: tc.ca.certPem, timeoutMs: 5000 }, fingerprintOf(renewed));
  const which = new Map([[fingerprintOf(acmCert), 'the first'], [fingerprintOf(renewed), 'the retried'], [fingerprintOf(stalledBefore), 'the one before the stall']]);
  t.is(served, fingerprintOf(renewed), `and nginx serves it (it serves ${which.get(served) ?? 'an unknown'} certificate): ${nginx.errorLog().slice(-1500)}`);

  // The enclave dies; the agent brings it back with every token.
  await controller.process!.stop('SIGKILL');
  const started = Date.now();
  t.is(await agent.healthCheck(), 'restarted');
  t.is((await hs('s3.test')).fingerprint256, fingerprintOf(s3Cert));
  t.is((await hs('acm.test')).fingerprint256, fingerprintOf(renewed));
  t.log(`serving again ${((Date.now() - started) / 1000).toFixed(2)} s after the enclave was killed`);
  t.is(await agent.healthCheck(), 'ok');

  // acm.yaml edited: s3-token removed, a third token added; acm-token untouched keeps serving.
  const third = await publish(tc.cloud.bucket(), 'sealed/third.json', 's3.test');
  const edited = parseConfig(`
tokens:
  - label: acm-token
    source:
      Acm:
        certificate_arn: "${CERT_ARN}"
    target:
      NginxStanza:
        path: ${etc}/acm.conf
  - label: third-token
    source:
      S3:
        uri: "s3://${tc.cloud.bucket()}/sealed/third.json"
    target:
      NginxStanza:
        path: ${etc}/s3.conf
`, 'acm.yaml');
  const pinBefore = fs.readFileSync(`${etc}/acm.pin`, 'utf8');
  const diff = await agent.applyConfig(edited);
  t.deepEqual(diff, { added: ['third-token'], removed: ['s3-token'], changed: [] });
  t.is(fs.readFileSync(`${etc}/acm.pin`, 'utf8'), pinBefore, 'the unchanged token was not touched');
  t.is((await hs('acm.test')).fingerprint256, fingerprintOf(renewed), 'the untouched token keeps serving');
  t.is(fs.readFileSync(`${etc}/s3.chain.pem`, 'utf8').split('-----END CERTIFICATE-----')[0] + '-----END CERTIFICATE-----\n', third, 'the new token\'s files are written');
  // A token added to a running nginx needs its engine started afresh: the OpenSSL pkcs11 engine
  // (libp11 0.4.12) keeps the slot list it read when nginx started, across reloads. A new nginx
  // master (here: a restart; in production the agent's reload command decides) sees it.
  await nginx.stop();
  nginx = await launchNginx({ prefix, conf: path.join(prefix, 'nginx.conf'), port, env: { NITRO_ACM_KEY_ADDRESS: agent.enclaveEndpoints!.keyAddress } });
  t.is((await hs('s3.test')).fingerprint256, fingerprintOf(third));
  t.is((await hs('acm.test')).fingerprint256, fingerprintOf(renewed));
});

test.serial('a renewal among many is rolled out and reloaded when its own poll sees it, not after every poll; renewals that come during a reload share the next one; a failed reload fails the sync', async (t) => {
  const etc = path.join(dir, 'etc-many');
  fs.mkdirSync(etc);
  const bucket = tc.cloud.bucket();
  await publish(bucket, 'many/shared.json', 'shared.test');
  await publish(bucket, 'many/first.json', 'first.test');
  await publish(bucket, 'many/last.json', 'last.test');
  const n = 16;
  const object = (i: number) => (i === 0 ? 'first' : i === n - 1 ? 'last' : 'shared');
  const tokensYaml = `tokens:\n${Array.from({ length: n }, (_, i) => `  - label: m${i}\n    source:\n      S3:\n        uri: "s3://${bucket}/many/${object(i)}.json"\n    target:\n      NginxStanza:\n        path: ${etc}/m${i}.conf\n`).join('')}`;
  const config = parseConfig(`options:\n  provision_concurrency: 1\n  sync_concurrency: 1\n${tokensYaml}`, 'acm.yaml');
  const reloads: { cause: string; lastPolled: boolean }[] = [];
  let syncStarted = 0;
  let failReload = false;
  const agent = new Agent({ config, enclave: tc.controller(), endpoints: tc.endpoints, reload: async (cause) => {
    reloads.push({ cause, lastPolled: (agent.tokens.get(`m${n - 1}`)!.lastSync ?? 0) >= syncStarted });
    await new Promise((r) => setTimeout(r, 150)); // a reload takes a while
    if (failReload) throw new Error('reload failed (test)');
  } });
  t.teardown(() => agent.stop());
  await agent.start();
  reloads.length = 0;

  // Every poll waits 80 ms, one at a time: the last token's poll ends ~1.3 s in.
  const firstCert = await publish(bucket, 'many/first.json', 'first.test');
  tc.cloud.faults.s3 = { delayMs: 80 };
  syncStarted = Date.now();
  t.deepEqual(await agent.sync(), ['m0']);
  tc.cloud.faults.s3 = undefined;
  t.is(reloads.length, 1);
  t.regex(reloads[0].cause, /renewed.*m0/);
  t.false(reloads[0].lastPolled, 'the reload began before the last token was polled');
  t.true(fs.readFileSync(`${etc}/m0.chain.pem`, 'utf8').startsWith(firstCert.trimEnd()));

  // Three renewals: the first reloads at once; the two that come while it runs go in one more.
  reloads.length = 0;
  await publish(bucket, 'many/first.json', 'first.test');
  await publish(bucket, 'many/shared.json', 'shared.test');
  await publish(bucket, 'many/last.json', 'last.test');
  syncStarted = Date.now();
  const all = Array.from({ length: n }, (_, i) => `m${i}`);
  t.deepEqual(await agent.sync(), all);
  t.true(reloads.length >= 2 && reloads.length < n, `${reloads.length} reloads for ${n} renewals`);
  t.regex(reloads[0].cause, /m0/);

  // A reload that fails: every renewal is still rolled out, then the sync says so.
  reloads.length = 0;
  failReload = true;
  const lastCert = await publish(bucket, 'many/last.json', 'last.test');
  await t.throwsAsync(agent.sync(), { message: 'reload failed (test)' });
  t.true(fs.readFileSync(`${etc}/m${n - 1}.chain.pem`, 'utf8').startsWith(lastCert.trimEnd()));
  t.is(agent.tokens.get(`m${n - 1}`)!.state, 'serving');
  await agent.stop();

  // options.sync_concurrency, not provision_concurrency, sets how many polls run at
  // once: with 80 ms a poll, one at a time spreads the 16 polls' ends over 1.2 s;
  // 16 at a time ends them together.
  const spreadOfPolls = async (syncConcurrency: number) => {
    const a = new Agent({ config: parseConfig(`options:\n  provision_concurrency: 1\n  sync_concurrency: ${syncConcurrency}\n${tokensYaml}`, 'acm.yaml'), enclave: tc.controller(), endpoints: tc.endpoints, reload: async () => {} });
    try {
      await a.start();
      tc.cloud.faults.s3 = { delayMs: 80 };
      await a.sync();
      tc.cloud.faults.s3 = undefined;
      const ends = [...a.tokens.values()].map((x) => x.lastSync!);
      return Math.max(...ends) - Math.min(...ends);
    } finally { tc.cloud.faults.s3 = undefined; await a.stop(); }
  };
  const oneAtATime = await spreadOfPolls(1), allAtOnce = await spreadOfPolls(16);
  t.true(oneAtATime >= 15 * 80, `one at a time: the polls ended over ${oneAtATime} ms`);
  t.true(allAtOnce < oneAtATime / 3, `16 at a time: the polls ended over ${allAtOnce} ms, one at a time over ${oneAtATime} ms`);
});
