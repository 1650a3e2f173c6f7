// Real nginx and Apache httpd serving HTTPS with keys held by the enclave app,
// reached through p11-kit-proxy, the OpenSSL pkcs11 engine and our module.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { startEnclave, type EnclaveFixture, type TokenFiles } from './helpers/enclave.ts';
import { registerWithP11Kit } from '../src/local/p11kit.ts';
import { startNginx, startHttpd, freePort, claimPort, listenerHolders, run, handshake, fingerprintOf, type SiteKey, type RunningServer } from '../src/local/webservers.ts';

let fx: EnclaveFixture;

test.before(async () => {
  registerWithP11Kit();
  fx = await startEnclave([
    { label: 'alpha', pin: '11112222', names: ['alpha.test'] },
    { label: 'beta', pin: '33334444', names: ['beta.test'] },
  ], { prefix: 'web' });
});
test.after.always(async () => { await fx?.cleanup(); });

function pinFile(t: TokenFiles): string {
  const f = path.join(fx.dir, `${t.label}.pin`);
  fs.writeFileSync(f, t.pin, { mode: 0o400 });
  return f;
}

function sites(engineKeyPrefix: string): SiteKey[] {
  return fx.tokens.map((t) => ({
    serverName: t.names[0],
    certificateFile: t.fullchain,
    key: `${engineKeyPrefix}pkcs11:token=${t.label};type=private?pin-source=file:${pinFile(t)}`,
  }));
}

const env = () => ({ NITRO_ACM_KEY_ADDRESS: fx.address, NITRO_ACM_TIMEOUT_MS: '2000' });

async function checkAll(t: import('ava').ExecutionContext, server: RunningServer, what: string) {
  for (const tok of fx.tokens) {
    for (const v of ['TLSv1.2', 'TLSv1.3'] as const) {
      const h = await handshake(server.port, { servername: tok.names[0], ca: fx.ca.certPem, minVersion: v, maxVersion: v });
      t.is(h.protocol, v, `${what} ${tok.label} ${v}`);
      t.is(h.fingerprint256, fingerprintOf(tok.certPem), `${what}: SNI ${tok.names[0]} gets its own certificate (${v})`);
    }
    // TLS 1.2 with a PKCS#1 v1.5 signature algorithm exercises CKM_RSA_PKCS.
    const pkcs1 = await handshake(server.port, { servername: tok.names[0], ca: fx.ca.certPem, maxVersion: 'TLSv1.2', sigalgs: 'RSA+SHA256' });
    t.is(pkcs1.fingerprint256, fingerprintOf(tok.certPem));
  }
}

/** Handshakes until one succeeds; returns failures seen and seconds taken. */
async function untilServing(port: number, tok: TokenFiles, timeoutMs: number): Promise<{ failures: number; seconds: number }> {
  const start = Date.now();
  let failures = 0;
  for (;;) {
    try {
      const h = await handshake(port, { servername: tok.names[0], ca: fx.ca.certPem, timeoutMs: 3000 });
      if (h.fingerprint256 === fingerprintOf(tok.certPem)) return { failures, seconds: (Date.now() - start) / 1000 };
    } catch { failures++; }
    if (Date.now() - start > timeoutMs) throw new Error(`not serving again after ${timeoutMs} ms (${failures} failed handshakes)`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test.serial('nginx (2 workers): two tokens by SNI over TLS 1.2 and 1.3; survives an enclave restart without its own restart', async (t) => {
  const dir = path.join(fx.dir, 'nginx');
  fs.mkdirSync(dir);
  const nginx = await startNginx({ dir, port: await freePort(), sites: sites('engine:pkcs11:'), workers: 2, env: env() });
  t.teardown(() => nginx.stop());
  await checkAll(t, nginx, 'nginx');

  await fx.stop();
  await t.throwsAsync(handshake(nginx.port, { servername: 'alpha.test', ca: fx.ca.certPem, timeoutMs: 5000 }), undefined, 'no handshake while the enclave is down');
  await fx.start();
  const r = await untilServing(nginx.port, fx.tokens[0], 15_000);
  t.log(`nginx: serving again ${r.seconds.toFixed(2)} s after the enclave restarted, ${r.failures} failed handshakes meanwhile`);
  t.is(nginx.proc.exitCode, null, 'nginx was not restarted');
  t.true(fs.readFileSync(path.join(dir, 'nginx.pid'), 'utf8').trim() === String(nginx.pid));
  await checkAll(t, nginx, 'nginx after enclave restart');
});

test.serial('Apache httpd (event MPM, threads): two tokens by SNI, TLS 1.2 and 1.3, concurrent handshakes, enclave restart', async (t) => {
  const dir = path.join(fx.dir, 'httpd');
  fs.mkdirSync(dir);
  const httpd = await startHttpd({ dir, port: await freePort(), sites: sites(''), env: env() });
  t.teardown(() => httpd.stop());
  await checkAll(t, httpd, 'httpd');

  // Many handshakes at once: the event MPM signs from several threads over one connection per process.
  const results = await Promise.allSettled(Array.from({ length: 48 }, (_, i) => {
    const tok = fx.tokens[i % 2];
    return handshake(httpd.port, { servername: tok.names[0], ca: fx.ca.certPem, maxVersion: i % 3 ? 'TLSv1.3' : 'TLSv1.2' })
      .then((h) => h.fingerprint256 === fingerprintOf(tok.certPem));
  }));
  t.deepEqual(results.map((r) => r.status === 'fulfilled' && r.value), Array(48).fill(true), httpd.errorLog().slice(-2000));

  await fx.stop();
  await fx.start();
  const r = await untilServing(httpd.port, fx.tokens[1], 15_000);
  t.log(`httpd: serving again ${r.seconds.toFixed(2)} s after the enclave restarted, ${r.failures} failed handshakes meanwhile`);
  t.is(httpd.proc.exitCode, null, 'httpd was not restarted');
});

// CI once failed with ECONNREFUSED from a server the test had seen listening: test
// files run in parallel, and a port that was free when picked can be taken by
// another process before the server binds it. The server then fails to bind
// (nginx retries for 2.5 s) while the other process answers on its port.
test('a port another process holds: the server fails at once, naming the holder, and is not left running', async (t) => {
  const port = await freePort();
  const holder = (await import('node:net')).createServer();
  await new Promise<void>((r) => holder.listen(port, '127.0.0.1', () => r()));
  t.teardown(() => { holder.close(); });
  const dir = path.join(fx.dir, 'taken');
  const t0 = Date.now();
  const e = await t.throwsAsync(startNginx({ dir, port, env: env(), sites: sites('engine:pkcs11:') }));
  t.regex(e!.message, new RegExp(`port ${port} is already held by another process: pid ${process.pid} \\(node`));
  t.true(Date.now() - t0 < 2000, `failed after ${Date.now() - t0} ms, not after nginx gave up binding`);
  await new Promise((r) => setTimeout(r, 200));
  t.deepEqual(listenerHolders(port).map((h) => h.pid), [process.pid], 'the nginx that could not bind is gone');
  t.false(fs.readdirSync('/proc').some((d) => { try { return fs.readFileSync(`/proc/${d}/cmdline`, 'utf8').includes(dir); } catch { return false; } }), 'no process runs with its prefix');
});

test('freePort: below the ephemeral range, and a port one process picked cannot be claimed by another', async (t) => {
  const lowestEphemeral = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').split(/\s+/)[0]);
  const ports = await Promise.all(Array.from({ length: 20 }, () => freePort()));
  t.is(new Set(ports).size, 20, 'twenty different ports');
  for (const p of ports) t.true(p >= 20000 && p < lowestEphemeral, `${p} is outside ${lowestEphemeral}..`);
  t.false(await claimPort(ports[0]), 'this process holds it already');
  // Another process: the port this one claimed is refused, one nobody claimed is granted.
  let unclaimed = ports[0] + 1;
  while (ports.includes(unclaimed)) unclaimed++;
  const other = await run(process.execPath, ['--import', 'tsx', '-e', `import('${path.resolve('src/local/webservers.ts')}').then(async (w) => console.log(await w.claimPort(${ports[0]}), await w.claimPort(${unclaimed})))`]);
  t.is(other.out.trim(), 'false true', other.out);
});
