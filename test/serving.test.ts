// The agent service with real nginx and real Apache httpd at once, on each OpenSSL
// path (the pkcs11 engine, and pkcs11-provider): three tokens each (SNI picks
// every certificate), nitro-acm status over the control socket, a renewal on both
// servers under continuous load with zero failed handshakes and no restart, and
// the enclave app killed under load: serving resumes by itself; the failed
// handshakes and the seconds to recover are printed. On the provider path also
// TLS 1.2 with ECDHE and with RSA key exchange (a decryption in the enclave,
// which the engine path cannot do) and TLS 1.3.
import test from 'ava';
import fs from 'node:fs';
import { controlCall } from '../src/agent/control.ts';
import { handshake, fingerprintOf } from '../src/local/webservers.ts';
import { serveWithBothServers } from './helpers/served.ts';
import { cli } from './helpers/cli.ts';
import { tmpdir } from './helpers/enclave.ts';
import { startTestCloud, type TestCloud } from './helpers/cloud.ts';

const dir = tmpdir('serving');
fs.chmodSync(dir, 0o755);
let tc: TestCloud;
test.before(async () => { tc = await startTestCloud(dir); });
test.after.always(async () => { await tc?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });

const NGINX_TOKENS = ['n1', 'n2', 'n3'];
const HTTPD_TOKENS = ['h1', 'h2', 'h3'];


/** New TLS connections against every name, round robin, until stopped. */
function load(targets: { port: number; name: string }[]) {
  let stop = false, ok = 0, failed = 0;
  let lastFailure = 0;
  const errors = new Map<string, number>();
  const failures: { at: number; server: string }[] = [];
  const runners = [0, 1].map(async (k) => {
    for (let i = k; !stop; i += 2) {
      const tg = targets[i % targets.length];
      try { await handshake(tg.port, { servername: `${tg.name}.test`, ca: tc.ca.certPem, timeoutMs: 5000 }); ok++; } catch (e) {
        failed++; lastFailure = Date.now();
        failures.push({ at: lastFailure, server: tg.name.startsWith('n') ? 'nginx' : 'httpd' });
        const m = `${tg.name.startsWith('n') ? 'nginx' : 'httpd'}: ${(e as Error).message.replace(/^[0-9A-F]+:error:[0-9A-F]+:SSL routines:\w+:/, '').slice(0, 60)}`;
        errors.set(m, (errors.get(m) ?? 0) + 1);
      }
    }
  });
  return { get ok() { return ok; }, get failed() { return failed; }, get lastFailure() { return lastFailure; }, errors, failures, async stop() { stop = true; await Promise.all(runners); } };
}

for (const openssl of ['engine', 'provider'] as const) test.serial(`${openssl}: nginx and httpd, three tokens each: SNI, status, renewal under load with zero failures, enclave killed under load`, async (t) => {
  const NGINX = NGINX_TOKENS.map((n) => `${n}${openssl[0]}`), HTTPD = HTTPD_TOKENS.map((n) => `${n}${openssl[0]}`);
  const controller = tc.controller();
  const { service, nginx, httpd, nginxPort, httpdPort, certs, socket } = await serveWithBothServers(t, { tc, dir, openssl, controller, healthIntervalMs: 500, nginxNames: NGINX, httpdNames: HTTPD });
  const portOf = (n: string) => (n.startsWith('n') ? nginxPort : httpdPort);
  const serverOf = (n: string) => (n.startsWith('n') ? nginx : httpd);
  // A handshake that fails says which server it was, whether that server is still
  // running, and the end of its error log: a flaky failure must explain itself.
  const served = async (n: string) => {
    try {
      return (await handshake(portOf(n), { servername: `${n}.test`, ca: tc.ca.certPem, timeoutMs: 5000 })).fingerprint256;
    } catch (e) {
      const s = serverOf(n);
      throw new Error(`${n} on ${n.startsWith('n') ? 'nginx' : 'httpd'} (pid ${s.pid}, ${s.proc.exitCode === null && s.proc.signalCode === null ? 'running' : `exited: ${s.proc.exitCode ?? s.proc.signalCode}`}): ${(e as Error).message}\n${s.errorLog().slice(-2500)}`);
    }
  };

  // SNI picks each token's certificate, on both servers.
  for (const n of [...NGINX, ...HTTPD]) t.is(await served(n), fingerprintOf(certs.get(n)!), `${n} serves its own certificate`);

  // nitro-acm status, as an operator runs it.
  const st = await cli(['status', '--socket', socket, '--json']);
  t.is(st.status, 0, st.stderr);
  const report = JSON.parse(st.stdout) as { enclave: { reachable: boolean; health: { tokens: number } }; tokens: { label: string; state: string; sans: string[]; keyType: string; notAfter: string; inEnclave: boolean }[] };
  t.true(report.enclave.reachable);
  t.is(report.enclave.health.tokens, 6);
  t.deepEqual(report.tokens.map((x) => [x.label, x.state, x.sans.join(), x.keyType, x.inEnclave]), [...NGINX, ...HTTPD].map((n) => [n, 'serving', `DNS:${n}.test`, 'RSA-2048', true]));
  const text = await cli(['status', '--socket', socket]);
  t.regex(text.stdout, new RegExp(`^${HTTPD[1]}: SERVING\n {2}certificate {2}CN=${HTTPD[1]}\\.test\n {2}names {8}DNS:${HTTPD[1]}\\.test\n {2}not after {4}\\S+ \\(\\d+ days left\\)\n {2}key {10}RSA-2048$`, 'm'));

  // Each server took the path asked for: the libp11 engine, or pkcs11-provider and no engine at all.
  const loaded = (pid: number) => {
    const maps = fs.readFileSync(`/proc/${pid}/maps`, 'utf8');
    return { engine: /engines-\d+\/(lib)?pkcs11\.so/.test(maps), provider: /ossl-modules\/pkcs11\.so/.test(maps) };
  };
  for (const [server, pid] of [['nginx', nginx.pid], ['httpd', httpd.pid]] as const) {
    t.deepEqual(loaded(pid), openssl === 'engine' ? { engine: true, provider: false } : { engine: false, provider: true }, `${server} (pid ${pid}) uses the ${openssl}`);
  }

  if (openssl === 'provider') {
    // Every TLS version and key exchange, each verified against the token's own certificate.
    const kinds: [string, { minVersion: 'TLSv1.2' | 'TLSv1.3'; maxVersion: 'TLSv1.2' | 'TLSv1.3'; ciphers?: string }][] = [
      ['TLS 1.3', { minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' }],
      ['TLS 1.2 ECDHE', { minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2', ciphers: 'ECDHE-RSA-AES128-GCM-SHA256' }],
      ['TLS 1.2 RSA key exchange', { minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2', ciphers: 'AES128-GCM-SHA256' }],
    ];
    for (const n of [NGINX[0], HTTPD[0]]) {
      for (const [what, o] of kinds) {
        const h = await handshake(portOf(n), { servername: `${n}.test`, ca: tc.ca.certPem, timeoutMs: 5000, ...o }).catch((e: Error) => e);
        t.false(h instanceof Error, `${n} ${what}: ${h instanceof Error ? h.message : ''}`);
        if (!(h instanceof Error)) t.deepEqual([h.protocol, h.fingerprint256], [o.maxVersion, fingerprintOf(certs.get(n)!)], `${n} ${what}`);
      }
    }
  }

  // Renewal of one nginx and one httpd token under continuous load: zero failures, no restart.
  const pids = [nginx.pid, httpd.pid];
  const targets = [...NGINX, ...HTTPD].map((name) => ({ name, port: portOf(name) }));
  let l = load(targets);
  t.teardown(() => l.stop()); // a failed assertion must not leave handshakes running forever
  await new Promise((r) => setTimeout(r, 500));
  const renewing = [NGINX[0], HTTPD[1]];
  for (const n of renewing) certs.set(n, await tc.publish(tc.cloud.bucket(), `bundles/${n}.json`, [`${n}.test`]));
  const t0 = Date.now();
  t.deepEqual((await controlCall(socket, 'sync')).renewed, renewing);
  for (const n of renewing) {
    while ((await served(n)) !== fingerprintOf(certs.get(n)!)) {
      if (Date.now() - t0 > 20_000) { t.fail(`${n}: the renewed certificate is not served`); break; }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  await new Promise((r) => setTimeout(r, 1000));
  await l.stop();
  t.log(`${openssl}: renewal on nginx and httpd under load: ${l.ok} handshakes, ${l.failed} failed ${JSON.stringify([...l.errors])}`);
  t.is(l.failed, 0, 'zero failed handshakes during the renewal');
  t.true(l.ok > 20);
  t.deepEqual([nginx.pid, httpd.pid, nginx.proc.exitCode, httpd.proc.exitCode], [...pids, null, null], 'reloaded, not restarted');
  for (const n of [...NGINX, ...HTTPD]) t.is(await served(n), fingerprintOf(certs.get(n)!));

  // The enclave app killed under load: the agent's health check starts a new one and
  // provisions every token with the same PINs; the web servers are not touched.
  l = load(targets);
  await new Promise((r) => setTimeout(r, 500));
  const killedAt = Date.now();
  await controller.process!.stop('SIGKILL');
  let recovered = 0;
  while (!recovered) {
    if (Date.now() - killedAt > 30_000) { t.fail('not serving again within 30 s'); break; }
    await new Promise((r) => setTimeout(r, 100));
    const all = await Promise.all(targets.map((x) => served(x.name).then(() => true, () => false)));
    if (all.every(Boolean) && (await service.agent.status()).enclave.reachable) recovered = Date.now();
  }
  await new Promise((r) => setTimeout(r, 1000));
  await l.stop();
  const seconds = ((Math.max(recovered, l.lastFailure) - killedAt) / 1000).toFixed(2);
  t.log(`${openssl}: enclave killed under load: ${l.failed} failed handshakes of ${l.ok + l.failed}; serving again ${seconds} s after the kill; ${JSON.stringify([...l.errors])}`);
  const buckets = new Map<number, { nginx: number; httpd: number }>();
  for (const f of l.failures) {
    const b = Math.floor((f.at - killedAt) / 500) * 0.5;
    const e = buckets.get(b) ?? { nginx: 0, httpd: 0 };
    e[f.server as 'nginx' | 'httpd']++;
    buckets.set(b, e);
  }
  t.log(`failed handshakes by half second after the kill: ${[...buckets].map(([b, e]) => `${b.toFixed(1)} s: nginx ${e.nginx}, httpd ${e.httpd}`).join('; ')}`);
  // A worker that httpd started during the outage once failed here for good on the
  // provider path (test/forked-in-outage.test.ts reproduces it): none may now.
  t.true(l.lastFailure < recovered + 1000, 'no failures once serving again');
  t.deepEqual([nginx.pid, httpd.pid, nginx.proc.exitCode, httpd.proc.exitCode], [...pids, null, null], 'the web servers were not restarted');
  for (const n of [...NGINX, ...HTTPD]) t.is(await served(n), fingerprintOf(certs.get(n)!));
});
