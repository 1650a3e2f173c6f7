// A certificate added to acm.yaml while nginx serves under load, on each OpenSSL
// path: a reload cannot load the new token's key (the engine and pkcs11-provider
// read the token list once per master process; nginx keeps its previous
// configuration and says so), and the agent's binary upgrade (a new master on the
// same listening sockets, then the old one told to finish) serves it with no
// failed handshake on the names already served. The figures are printed.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { startService } from '../src/agent/service.ts';
import { nginxBinaryUpgrade } from '../src/agent/nginx-upgrade.ts';
import { registerWithP11Kit } from '../src/local/p11kit.ts';
import { freePort, handshake, fingerprintOf, nginxMainLine, run, waitForPort } from '../src/local/webservers.ts';
import { tmpdir } from './helpers/enclave.ts';
import { startTestCloud, type TestCloud } from './helpers/cloud.ts';

const dir = tmpdir('add-token');
fs.chmodSync(dir, 0o755);
let tc: TestCloud;
test.before(async () => { tc = await startTestCloud(dir); });
test.after.always(async () => { await tc?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });

for (const openssl of ['engine', 'provider'] as const) test.serial(`${openssl}: a token added under load is served after an in-place nginx upgrade, with no failed handshake`, async (t) => {
  const run_ = path.join(dir, openssl);
  const etc = path.join(run_, 'etc');
  fs.mkdirSync(etc, { recursive: true, mode: 0o755 });
  fs.chmodSync(run_, 0o755);
  const [first, added] = [`first-${openssl}`, `added-${openssl}`];
  const certs = new Map<string, string>();
  for (const n of [first, added]) certs.set(n, await tc.publish(tc.cloud.bucket(), `bundles/${n}.json`, [`${n}.test`]));
  const opensslConf = path.join(run_, 'openssl.cnf');
  const token = (n: string) => `  - label: ${n}\n    source:\n      S3:\n        uri: "s3://${tc.cloud.bucket()}/bundles/${n}.json"\n    target:\n      NginxStanza:\n        path: ${etc}/${n}.conf\n`;
  const configFile = path.join(run_, 'acm.yaml');
  const header = `options:\n  openssl: ${openssl}\n  openssl_conf: ${opensslConf}\ntokens:\n`;
  fs.writeFileSync(configFile, header + token(first));
  const service = await startService({ configFile, controller: () => tc.controller(), endpoints: tc.endpoints, controlSocket: false, healthIntervalMs: 500, reload: async () => {} });
  t.teardown(async () => { await service.stop(); await service.agent.stop(); });
  registerWithP11Kit();

  // nginx as systemd runs it: daemonized from its absolute path, with the environment the provider needs and `env` keeping it.
  const port = await freePort();
  const prefix = path.join(run_, 'nginx');
  fs.mkdirSync(path.join(prefix, 'tmp'), { recursive: true });
  const conf = path.join(prefix, 'nginx.conf');
  const server = (n: string) => `  server {\n    listen 127.0.0.1:${port} ssl;\n    server_name ${n}.test;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    include ${etc}/${n}.conf;\n    location / { return 200 "${n}\\n"; }\n  }\n`;
  const nginxConf = (names: string[]) => `daemon on;\nworker_processes 2;\nerror_log ${prefix}/error.log notice;\npid ${prefix}/nginx.pid;\n${nginxMainLine(openssl)}\nenv NITRO_ACM_KEY_ADDRESS;\nevents { worker_connections 256; }\nhttp {\n  access_log off;\n  ssl_session_cache off;\n  ssl_session_tickets off;\n  client_body_temp_path ${prefix}/tmp;\n${names.map(server).join('')}}\n`;
  fs.writeFileSync(conf, nginxConf([first]));
  const env = { ...process.env, NITRO_ACM_KEY_ADDRESS: service.agent.enclaveEndpoints!.keyAddress, ...(openssl === 'provider' ? { OPENSSL_CONF: opensslConf } : {}) };
  const started = await run('/usr/sbin/nginx', ['-p', prefix, '-c', conf], env);
  t.is(started.status, 0, started.out);
  await waitForPort(port);
  const masterPid = () => Number(fs.readFileSync(path.join(prefix, 'nginx.pid'), 'utf8').trim());
  t.teardown(() => { try { process.kill(masterPid(), 'SIGQUIT'); } catch { /* stopped */ } });
  const served = async (n: string) => (await handshake(port, { servername: `${n}.test`, ca: tc.ca.certPem, timeoutMs: 5000 })).fingerprint256;
  t.is(await served(first), fingerprintOf(certs.get(first)!));

  // New connections on the name already served, the whole time.
  let stop = false, ok = 0, failed = 0;
  const errors: string[] = [];
  const loader = Promise.all([0, 1].map(async () => {
    while (!stop) {
      try { await served(first); ok++; } catch (e) { failed++; errors.push((e as Error).message.slice(0, 80)); }
    }
  }));

  // The operator adds a token and its server block; the agent provisions it and writes its files.
  fs.writeFileSync(configFile, header + token(first) + token(added));
  for (const end = Date.now() + 20_000; service.agent.tokens.get(added)?.state !== 'serving' && Date.now() < end;) await new Promise((r) => setTimeout(r, 100));
  t.is(service.agent.tokens.get(added)?.state, 'serving', service.agent.tokens.get(added)?.error);
  fs.writeFileSync(conf, nginxConf([first, added]));

  // A reload: the master that started before the token existed cannot load its key, and keeps its previous configuration.
  const before = masterPid();
  process.kill(before, 'SIGHUP');
  await new Promise((r) => setTimeout(r, 1500));
  t.regex(fs.readFileSync(path.join(prefix, 'error.log'), 'utf8'), new RegExp(`cannot load certificate key[^\\n]*${added}`), 'the reload could not load the new key');
  t.not(await served(added).catch(() => 'refused'), fingerprintOf(certs.get(added)!), 'not served after a reload');

  // The in-place upgrade: a new master loads every token; the old one finishes its connections.
  const u = await nginxBinaryUpgrade(before);
  // Another token right after (nginx ignores SIGUSR2 while the previous master still finishes): the upgrade waits for it.
  const again = await nginxBinaryUpgrade(u.newMaster);
  for (const old of [before, u.newMaster]) {
    for (const end = Date.now() + 10_000; fs.existsSync(`/proc/${old}`) && Date.now() < end;) await new Promise((r) => setTimeout(r, 50));
    t.false(fs.existsSync(`/proc/${old}`), `the previous master ${old} is gone`);
  }
  t.is(await served(added), fingerprintOf(certs.get(added)!), 'the added token is served');
  t.is(masterPid(), again.newMaster, 'the pid file names the newest master');
  await new Promise((r) => setTimeout(r, 500));
  stop = true;
  await loader;
  t.log(`${openssl}: token added under load: ${ok} handshakes on ${first}, ${failed} failed; the new master served ${u.seconds.toFixed(2)} s after SIGUSR2, the next upgrade right after it took ${again.seconds.toFixed(2)} s ${errors.slice(0, 3).join('; ')}`);
  t.is(failed, 0, 'no failed handshake on the name already served');
  t.true(ok > 20);
  t.is(await served(first), fingerprintOf(certs.get(first)!));
});
