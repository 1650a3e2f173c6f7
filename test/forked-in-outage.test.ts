// A web-server worker started while the enclave is down must serve once the
// enclave is back. httpd starts new children whenever it needs them (and nginx a
// new worker when one dies); a child that makes its first signature during an
// outage must not stay broken. Reproduces the CI failure of the provider path's
// "enclave killed under load": pkcs11-provider, after a fork, looks every key up
// again by its attributes (C_FindObjects) and, if that finds nothing, keeps the
// key without a handle for the child's whole life. On both OpenSSL paths and both
// web servers: the enclave is killed and kept down, every worker is killed (the
// master starts new ones), handshakes reach the new workers during the outage,
// the enclave comes back, and then every handshake must verify.
import test from 'ava';
import fs from 'node:fs';
import { handshake, fingerprintOf } from '../src/local/webservers.ts';
import { serveWithBothServers } from './helpers/served.ts';
import type { EnclaveController } from '../src/agent/enclave-controller.ts';
import { tmpdir } from './helpers/enclave.ts';
import { startTestCloud, type TestCloud } from './helpers/cloud.ts';

const dir = tmpdir('outage-fork');
fs.chmodSync(dir, 0o755);
let tc: TestCloud;
test.before(async () => { tc = await startTestCloud(dir); });
test.after.always(async () => { await tc?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The pids whose parent is `pid`. */
function children(pid: number): number[] {
  const out: number[] = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(d));
    } catch { /* gone */ }
  }
  return out;
}

for (const openssl of ['engine', 'provider'] as const) test.serial(`${openssl}: workers started while the enclave is down serve once it is back (nginx and httpd)`, async (t) => {
  const names = { nginx: `fn${openssl[0]}`, httpd: `fh${openssl[0]}` };

  // The enclave controller, with a gate: while it is closed a new enclave runs
  // but the agent does not know yet, so it holds no token.
  const real = tc.controller();
  let gate: Promise<void> = Promise.resolve();
  let started!: () => void;
  const enclaveUp = new Promise<void>((r) => { started = r; });
  const controller: EnclaveController = {
    start: async () => { const ep = await real.start(); started(); await gate; return ep; },
    running: () => real.running(),
    stop: (o) => real.stop(o),
    expected: () => real.expected(),
  };
  const { service, nginx, httpd, nginxPort, httpdPort, certs } = await serveWithBothServers(t, { tc, dir, openssl, controller, healthIntervalMs: 300, nginxNames: [names.nginx], httpdNames: [names.httpd] });
  const servers = [['nginx', nginx, nginxPort, names.nginx], ['httpd', httpd, httpdPort, names.httpd]] as const;
  const attempt = (port: number, n: string) => handshake(port, { servername: `${n}.test`, ca: tc.ca.certPem, timeoutMs: 5000 }).then((h) => h.fingerprint256, (e: Error) => e);
  for (const [, , port, n] of servers) t.is(await attempt(port, n), fingerprintOf(certs.get(n)!), `${n} serves before the outage`);

  // The outage: the enclave dies; a new one starts and holds no token yet; every
  // worker is replaced meanwhile.
  let open!: () => void;
  gate = new Promise((r) => { open = r; });
  await real.process!.stop('SIGKILL');
  await enclaveUp;
  const before = new Map(servers.map(([s, srv]) => [s, children(srv.pid)]));
  for (const pids of before.values()) for (const p of pids) { try { process.kill(p, 'SIGKILL'); } catch { /* gone */ } }
  // httpd starts children again within its once-a-second maintenance, nginx at once.
  for (const [s, srv] of servers) {
    for (let i = 0; i < 60 && children(srv.pid).filter((p) => !before.get(s)!.includes(p)).length === 0; i++) await sleep(100);
  }
  // Handshakes reach the new workers while the enclave has no token: each fails,
  // and each makes that worker's OpenSSL look its key up while the token is absent.
  for (let i = 0; i < 12; i++) for (const [, , port, n] of servers) t.true(await attempt(port, n) instanceof Error, 'no handshake succeeds while the enclave holds no token');
  const replaced = servers.map(([s, srv]) => `${s}: ${before.get(s)!.length} workers killed, ${children(srv.pid).length} running`).join('; ');

  open();
  const t0 = Date.now();
  while (!(await service.agent.status()).tokens.every((x) => x.state === 'serving' && x.inEnclave)) {
    if (Date.now() - t0 > 30_000) { t.fail('the tokens are not back within 30 s'); return; }
    await sleep(100);
  }
  await sleep(500);
  // Every worker, old or new, signs again: many handshakes to each server, all verified.
  const failures: string[] = [];
  for (let i = 0; i < 40; i++) {
    for (const [s, , port, n] of servers) {
      const r = await attempt(port, n);
      if (r !== fingerprintOf(certs.get(n)!)) failures.push(`${s}: ${r instanceof Error ? r.message.slice(0, 90) : r}`);
    }
  }
  t.log(`${openssl}: ${replaced}; after the enclave came back: ${80 - failures.length} of 80 handshakes verified`);
  t.deepEqual(failures, [], 'every handshake verifies once the enclave is back');
  t.deepEqual([nginx.proc.exitCode, httpd.proc.exitCode], [null, null], 'the web servers themselves kept running');
});
