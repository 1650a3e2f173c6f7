// The private key never leaves the enclave app: every byte on the key channel
// (recorded by a proxy between the module and the enclave while pkcs11-tool and
// real nginx use the key), the enclave's log, and every file under the web
// server's prefix are scanned for the key in every form it could take.
import test from 'ava';
import fs from 'node:fs';
import crypto from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { startEnclave, MODULE_PATH, type EnclaveFixture } from './helpers/enclave.ts';
import { registerWithP11Kit } from '../src/local/p11kit.ts';
import { startNginx, freePort, handshake, fingerprintOf, run } from '../src/local/webservers.ts';
import { keyNeedles, findSecrets } from './helpers/secrets.ts';

let fx: EnclaveFixture;
test.before(async () => {
  registerWithP11Kit();
  fx = await startEnclave([{ label: 'secret', pin: '97531000', names: ['secret.test'] }], { prefix: 'isolation' });
});
test.after.always(async () => { await fx?.cleanup(); });

function recordingProxy(listenPath: string, target: string): { server: net.Server; recorded: Buffer[] } {
  const recorded: Buffer[] = [];
  const server = net.createServer((client) => {
    const upstream = net.connect(target);
    client.on('data', (d) => { recorded.push(Buffer.from(d)); upstream.write(d); });
    upstream.on('data', (d) => { recorded.push(Buffer.from(d)); client.write(d); });
    const end = () => { client.destroy(); upstream.destroy(); };
    client.on('close', end); upstream.on('close', end);
    client.on('error', end); upstream.on('error', end);
  });
  server.listen(listenPath);
  fs.chmodSync(path.dirname(listenPath), 0o711);
  return { server, recorded };
}

function filesUnder(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true, recursive: true }).filter((e) => e.isFile()).map((e) => path.join(e.parentPath ?? e.path, e.name));
}

test('no key bytes on the key channel, in the logs, or in any file the web server side holds', async (t) => {
  const tok = fx.tokens[0];
  const needles = keyNeedles(tok.keyPem);
  // The scan must be able to fail: it finds the key in the key file itself.
  t.true(findSecrets(fs.readFileSync(tok.key), needles).includes('PEM body (first 64 chars)'), 'scanner recognises the PEM file');
  const der = crypto.createPrivateKey(tok.keyPem).export({ type: 'pkcs1', format: 'der' });
  t.true(['PKCS#1 DER', 'd (raw bytes)', 'p (raw bytes)', 'q (raw bytes)'].every((n) => findSecrets(der, needles).includes(n)), 'scanner recognises DER and raw components');

  const proxySock = path.join(fx.dir, 'proxy.sock');
  const proxy = recordingProxy(proxySock, fx.socket);
  await new Promise((r) => setTimeout(r, 100));
  fs.chmodSync(proxySock, 0o666);
  const env = { ...process.env, NITRO_ACM_KEY_ADDRESS: `unix:path=${proxySock}` };

  // Asynchronously: the proxy runs on this process's event loop.
  const tool = await run('pkcs11-tool', ['--module', MODULE_PATH, '--login', '--pin', tok.pin, '--test'], env);
  t.is(tool.status, 0, tool.out);

  const prefix = path.join(fx.dir, 'nginx-prefix');
  fs.mkdirSync(prefix);
  const pinFile = path.join(prefix, 'secret.pin');
  fs.writeFileSync(pinFile, tok.pin, { mode: 0o400 });
  const nginx = await startNginx({ dir: prefix, port: await freePort(), env: { NITRO_ACM_KEY_ADDRESS: `unix:path=${proxySock}` }, sites: [{ serverName: 'secret.test', certificateFile: tok.fullchain, key: `engine:pkcs11:pkcs11:token=secret;type=private?pin-source=file:${pinFile}` }] });
  for (const v of ['TLSv1.2', 'TLSv1.3'] as const) {
    const h = await handshake(nginx.port, { servername: 'secret.test', ca: fx.ca.certPem, minVersion: v, maxVersion: v });
    t.is(h.fingerprint256, fingerprintOf(tok.certPem));
  }
  await nginx.stop();
  proxy.server.close();

  const traffic = Buffer.concat(proxy.recorded);
  t.true(traffic.length > 10_000, `traffic was recorded (${traffic.length} bytes)`);
  t.deepEqual(findSecrets(traffic, needles), [], 'key channel');
  t.deepEqual(findSecrets(Buffer.from(fx.log()), needles), [], 'enclave log');
  t.false(fx.log().includes(tok.pin), 'PIN not in the enclave log');
  for (const f of filesUnder(prefix)) {
    t.deepEqual(findSecrets(fs.readFileSync(f), needles), [], f);
  }
  t.false(nginx.errorLog().includes(tok.pin), 'PIN not in the web server log');
});
