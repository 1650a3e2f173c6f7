// nitro-acm local, the main job: a sealed demo certificate in the local S3, the
// enclave app decrypting its key through the local KMS with attestation, nginx
// (or httpd) serving it; the key is never on disk; a second run reuses the same
// state; status and renew work from the command line against a running one.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { runLocal } from '../src/local/local-mode.ts';
import { freePort, handshake } from '../src/local/webservers.ts';
import { cli } from './helpers/cli.ts';
import { tmpdir } from './helpers/enclave.ts';


// One directory for both: the challenge signature's PKCS#11 module is loaded once per
// process, for one enclave address, as in the agent.
const dir = tmpdir('local');
fs.chmodSync(dir, 0o755);
test.after.always(() => fs.rmSync(dir, { recursive: true, force: true }));

test.serial('local mode serves https with a key only the enclave app decrypted, and again on a second run', async (t) => {
  const o = { port: await freePort(), stateDir: path.join(dir, 'state'), runtimeDir: path.join(dir, 'run') };
  const first = await runLocal(o);
  let served: string;
  try {
    const ca = fs.readFileSync(first.caFile, 'utf8');
    const h = await handshake(o.port, { servername: 'localhost', ca });
    t.regex(h.body, /signed by the enclave app/);
    t.is(h.subjectCN, 'localhost');
    served = h.fingerprint256;
    t.regex(first.curl, /^curl --cacert \S+demo-ca\.pem https:\/\/localhost:\d+\/$/);
    // Local mode turns the metrics on, on loopback; the handshake above is counted there.
    t.regex(first.service.metricsUrl ?? '', /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const metrics = await (await fetch(first.service.metricsUrl!)).text();
    t.regex(metrics, /^nitro_acm_operations_total\{token="localhost",operation="sign",result="ok"\} [1-9]\d*$/m);
    t.regex(metrics, /^nitro_acm_token_state\{token="localhost",state="serving"\} 1$/m);
    // And the assessment passes: nothing FAILs, the direct decrypt from the parent is BLOCKED.
    const a = await cli(['assess', '--socket', first.controlSocket]);
    t.is(a.status, 0, a.stdout + a.stderr);
    t.regex(a.stdout, /^\[PASS\] localhost: direct decrypt from the parent is BLOCKED \(attestation required\)$/m);
    t.regex(a.stdout, /^\d+ PASS, 0 WARN, 0 FAIL$/m);
    // A working install, as nitro-acm doctor sees it: the running agent tells it
    // which acm.yaml and which nginx configuration to check.
    const d = await cli(['doctor', '--socket', first.controlSocket]);
    t.is(d.status, 0, d.stdout + d.stderr);
    t.regex(d.stdout, /^ok {4}acm\.yaml: \S+\/run\/acm\.yaml: 1 token\(s\), service nginx \(the file the running agent serves\)$/m);
    t.regex(d.stdout, /^ok {4}nginx -t: \S+\/run\/nginx\/nginx\.conf: syntax is ok$/m);
    t.regex(d.stdout, /^ok {4}stanza localhost: \S+localhost\.conf is included in a server block$/m);
    t.regex(d.stdout, /^ok {4}token localhost: serving CN=localhost/m);
    t.regex(d.stdout, /no problems found\n$/);
  } finally { await first.stop(); }
  // No private key of a serving certificate anywhere on disk: only the demo CA's.
  const keys = fs.readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile())
    .map((e) => path.join(e.parentPath ?? e.path, e.name))
    .filter((f) => fs.readFileSync(f, 'latin1').includes('PRIVATE KEY-----'))
    .map((f) => path.relative(dir, f)).sort();
  t.deepEqual(keys.filter((f) => !f.startsWith('state/cloud/') && !f.startsWith('state/nsm-sim/')), ['state/demo-ca.key']);
  const second = await runLocal(o);
  try {
    const h = await handshake(o.port, { servername: 'localhost', ca: fs.readFileSync(second.caFile, 'utf8') });
    t.is(h.fingerprint256, served, 'the same sealed certificate is served again');
  } finally { await second.stop(); }
});

test.serial('local mode with --httpd: nitro-acm status and nitro-acm local renew show a renewal as a user would', async (t) => {
  const o = { port: await freePort(), stateDir: path.join(dir, 'state'), runtimeDir: path.join(dir, 'run'), server: 'httpd' as const };
  const local = await runLocal(o);
  t.teardown(() => local.stop());
  const ca = fs.readFileSync(local.caFile, 'utf8');
  const before = await handshake(o.port, { servername: 'localhost', ca });
  t.regex(before.body, /signed by the enclave app/);

  const status = await cli(['status', '--socket', local.controlSocket]);
  t.is(status.status, 0, status.stderr);
  t.regex(status.stdout, /^enclave: healthy, 1 token\(s\), NSM simulated, LOCAL MODE/m);
  t.regex(status.stdout, /^attestation: verified \d+ s ago \(fresh nonce, chain, PCR0\/1\/2 as the image; [1-9]\d* passed, 0 failed since the agent started\)$/m);
  t.regex(status.stdout, /^localhost: SERVING\n {2}certificate {2}CN=localhost\n {2}names {8}DNS:localhost, IP Address:127\.0\.0\.1\n/m);
  t.regex(status.stdout, /^ {2}target {7}Conf \S+localhost-httpd\.conf$/m);
  const d = await cli(['doctor', '--socket', local.controlSocket]);
  t.is(d.status, 0, d.stdout + d.stderr);
  t.regex(d.stdout, /^ok {4}attestation: the enclave proved its image \d+ s ago \(fresh nonce, chain, PCR0\/1\/2\)$/m);
  t.regex(d.stdout, /^ok {4}SSLCryptoDevice: SSLCryptoDevice pkcs11 in \S+\/run\/httpd\/httpd\.conf$/m);
  t.regex(d.stdout, /^ok {4}conf localhost: \S+localhost-httpd\.conf points SSLCertificateKeyFile at the enclave token$/m);

  const renew = await cli(['local', 'renew', 'localhost', '--runtime-dir', o.runtimeDir, '--json']);
  t.is(renew.status, 0, renew.stderr);
  const r = JSON.parse(renew.stdout) as { label: string; previous: string; fingerprint: string; seconds: number };
  t.is(r.previous, before.fingerprint256);
  t.not(r.fingerprint, r.previous);
  t.is((await handshake(o.port, { servername: 'localhost', ca })).fingerprint256, r.fingerprint, 'httpd serves the renewed certificate');
  t.log(`local renew: httpd served the new certificate ${r.seconds.toFixed(2)} s after it was put in S3`);
  t.is(local.server.proc.exitCode, null, 'httpd was reloaded, not restarted');

  const unknown = await cli(['local', 'renew', 'nope', '--runtime-dir', o.runtimeDir]);
  t.is(unknown.status, 1);
  t.regex(unknown.stderr, /no token "nope" \(local mode serves: localhost\)/);
  const none = await cli(['status', '--socket', path.join(dir, 'absent.sock')]);
  t.is(none.status, 2);
  t.regex(none.stderr, /absent\.sock: no agent is running there/);
});

test.serial('local mode with --openssl provider: nginx serves through pkcs11-provider, doctor agrees, RSA key exchange and a renewal work', async (t) => {
  const o = { port: await freePort(), stateDir: path.join(dir, 'state'), runtimeDir: path.join(dir, 'run'), openssl: 'provider' as const };
  const local = await runLocal(o);
  t.teardown(() => local.stop());
  const ca = fs.readFileSync(local.caFile, 'utf8');
  const before = await handshake(o.port, { servername: 'localhost', ca });
  t.regex(before.body, /signed by the enclave app/);
  // TLS 1.2 RSA key exchange: the enclave decrypts the premaster secret (the engine path cannot).
  const rsa = await handshake(o.port, { servername: 'localhost', ca, maxVersion: 'TLSv1.2', ciphers: 'AES128-GCM-SHA256' });
  t.is(rsa.fingerprint256, before.fingerprint256);
  const stanza = fs.readFileSync(path.join(o.runtimeDir, 'localhost.conf'), 'utf8');
  t.regex(stanza, new RegExp(`^ssl_certificate_key ${o.runtimeDir.replace(/\//g, '\\/')}\\/localhost\\.key-uri\\.pem;$`, 'm'));
  t.notRegex(stanza, /engine:pkcs11/);
  t.regex(fs.readFileSync(path.join(o.runtimeDir, 'localhost.key-uri.pem'), 'utf8'), /^-----BEGIN PKCS#11 PROVIDER URI-----\n/);

  const d = await cli(['doctor', '--socket', local.controlSocket]);
  t.is(d.status, 0, d.stdout + d.stderr);
  t.regex(d.stdout, /^ok {4}openssl path: keys through the pkcs11-provider \(options\.openssl: provider\)$/m);
  t.regex(d.stdout, new RegExp(`^ok {4}web server provider: nginx \\(pid ${local.server.pid}\\) has pkcs11-provider loaded$`, 'm'));
  t.notRegex(d.stdout, /ssl_engine/);

  const renew = await cli(['local', 'renew', 'localhost', '--runtime-dir', o.runtimeDir, '--json']);
  t.is(renew.status, 0, renew.stderr);
  const r = JSON.parse(renew.stdout) as { previous: string; fingerprint: string };
  t.is(r.previous, before.fingerprint256);
  t.is((await handshake(o.port, { servername: 'localhost', ca })).fingerprint256, r.fingerprint, 'nginx serves the renewed certificate');
  t.is(local.server.proc.exitCode, null, 'nginx was reloaded, not restarted');
});

test.serial('local mode with --key-type ec-p256 and --httpd: an ECDSA certificate from the enclave, status shows its key, a renewal keeps the type', async (t) => {
  const o = { port: await freePort(), stateDir: path.join(dir, 'state'), runtimeDir: path.join(dir, 'run'), server: 'httpd' as const, keyType: 'ec-p256' as const };
  const local = await runLocal(o);
  t.teardown(() => local.stop());
  const ca = fs.readFileSync(local.caFile, 'utf8');
  const before = await handshake(o.port, { servername: 'localhost', ca, sigalgs: 'ecdsa_secp256r1_sha256' });
  t.regex(before.body, /signed by the enclave app/);
  const status = await cli(['status', '--socket', local.controlSocket, '--json']);
  t.is(status.status, 0, status.stderr);
  t.is((JSON.parse(status.stdout) as { tokens: { keyType: string }[] }).tokens[0].keyType, 'EC-P256');
  const renew = await cli(['local', 'renew', 'localhost', '--runtime-dir', o.runtimeDir, '--json']);
  t.is(renew.status, 0, renew.stderr);
  const after = await handshake(o.port, { servername: 'localhost', ca, sigalgs: 'ecdsa_secp256r1_sha256' });
  t.is(after.fingerprint256, (JSON.parse(renew.stdout) as { fingerprint: string }).fingerprint, 'the renewed ECDSA certificate is served');
});
