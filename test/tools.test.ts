// The module as operators meet it: OpenSC's pkcs11-tool on the module itself,
// and through p11-kit (the module registered by its .module file) GnuTLS's
// p11tool and the OpenSSL pkcs11 engine with no configuration of its own.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { startEnclave, MODULE_PATH, type EnclaveFixture } from './helpers/enclave.ts';
import { registerWithP11Kit } from '../src/local/p11kit.ts';

const PIN = '135790';
let fx: EnclaveFixture;
let env: NodeJS.ProcessEnv;

test.before(async () => {
  registerWithP11Kit();
  fx = await startEnclave([{ label: 'tools', pin: PIN, names: ['tools.test'] }, { label: 'tools-ec', pin: PIN, names: ['tools-ec.test'], keyType: 'ec-p256' }], { prefix: 'tools' });
  env = { ...process.env, NITRO_ACM_KEY_ADDRESS: fx.address };
});
test.after.always(async () => { await fx?.cleanup(); });

function run(cmd: string, args: string[]) {
  const r = spawnSync(cmd, args, { env, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

test('pkcs11-tool on an ECDSA (P-256) token: --test passes (its signature tests are RSA only), ECDSA and ECDSA-SHA256 signatures verify with openssl', (t) => {
  const r = run('pkcs11-tool', ['--module', MODULE_PATH, '--token-label', 'tools-ec', '--login', '--pin', PIN, '--test']);
  t.is(r.status, 0, r.out);
  t.regex(r.out, /No errors/);
  const dir = fs.mkdtempSync(path.join(fx.dir, 'ec-'));
  const data = path.join(dir, 'data'), digest = path.join(dir, 'digest'), pub = path.join(dir, 'pub.pem');
  fs.writeFileSync(data, crypto.randomBytes(1000));
  fs.writeFileSync(digest, crypto.createHash('sha256').update(fs.readFileSync(data)).digest());
  fs.writeFileSync(pub, new crypto.X509Certificate(fx.tokens[1].certPem).publicKey.export({ type: 'spki', format: 'pem' }));
  for (const [mech, input] of [['ECDSA', digest], ['ECDSA-SHA256', data]]) {
    const sig = path.join(dir, `${mech}.sig`);
    const s = run('pkcs11-tool', ['--module', MODULE_PATH, '--token-label', 'tools-ec', '--login', '--pin', PIN, '--sign', '--mechanism', mech, '--signature-format', 'openssl', '--input-file', input, '--output-file', sig]);
    t.is(s.status, 0, s.out);
    const v = run('openssl', ['dgst', '-sha256', '-verify', pub, '-signature', sig, data]);
    t.regex(v.out, /Verified OK/, `${mech}: ${v.out}`);
  }
});

test('pkcs11-tool --test passes on the module', (t) => {
  const r = run('pkcs11-tool', ['--module', MODULE_PATH, '--token-label', 'tools', '--login', '--pin', PIN, '--test']);
  t.is(r.status, 0, r.out);
  t.regex(r.out, /No errors/);
  t.regex(r.out, /RSA-PKCS: OK/);
  t.regex(r.out, /SHA256-RSA-PKCS: OK/);
  t.regex(r.out, /RSA-PKCS-OAEP:[\s\S]*OK/);
});

// OpenSC's own thread and fork checks, as its test suite runs them: threads that
// initialize (IN) and that, in turn, initialize, list slots, get info, list
// slots with tokens and token info (ILGISLT0) while the main thread lists slots;
// and C_Initialize again in a forked child. (pkcs11-tool waits 30 s before its
// cleanup whenever a thread is still running then, as ILGISLT0's is: the 30 s
// are its own, not the module's.)
test('pkcs11-tool --test-threads and --test-fork pass on the module', (t) => {
  let t0 = Date.now();
  const threads = run('pkcs11-tool', ['--module', MODULE_PATH, '--test-threads', 'IN', '--test-threads', 'ILGISLT0', '-L']);
  t.log(`--test-threads: ${Date.now() - t0} ms`);
  t.is(threads.status, 0, threads.out);
  t.regex(threads.out, /Slot 0 \(0x1\): nitro-acm enclave token tools/);
  // A thread that initializes after the main thread did is told so (CKR_CRYPTOKI_ALREADY_INITIALIZED); nothing else fails.
  t.notRegex(threads.out, /(returned|rv:) ?CKR_(?!OK|CRYPTOKI_ALREADY_INITIALIZED)/);
  t0 = Date.now();
  const fork = run('pkcs11-tool', ['--module', MODULE_PATH, '--login', '--pin', PIN, '--test-fork']);
  t.log(`--test-fork: ${Date.now() - t0} ms`);
  t.is(fork.status, 0, fork.out);
  t.notRegex(fork.out, /CKR_(?!OK)|failed/i, fork.out);
});

test('pkcs11-tool with a wrong PIN is refused', (t) => {
  const r = run('pkcs11-tool', ['--module', MODULE_PATH, '--login', '--pin', '999999', '--list-objects']);
  t.not(r.status, 0);
  t.regex(r.out, /CKR_PIN_INCORRECT/);
});

test('p11tool lists the tokens, their keys (RSA and ECDSA) and certificates through p11-kit', (t) => {
  const tokens = run('p11tool', ['--list-tokens']);
  t.regex(tokens.out, /Label: tools/);
  t.regex(tokens.out, /Manufacturer: nitro-acm/);
  const all = run('p11tool', ['--login', '--set-pin', PIN, '--list-all', 'pkcs11:token=tools']);
  t.is(all.status, 0, all.out);
  t.regex(all.out, /Type: Private key \(RSA-2048\)/);
  t.regex(all.out, /Type: Public key \(RSA-2048\)/);
  t.is(all.out.match(/Type: X\.509 Certificate/g)?.length, 2, all.out);
  t.regex(all.out, /CKA_CERTIFICATE_CATEGORY=CA/);
  // The ECDSA token: its keys as GnuTLS names them.
  const ec = run('p11tool', ['--login', '--set-pin', PIN, '--list-all', 'pkcs11:token=tools-ec']);
  t.is(ec.status, 0, ec.out);
  t.regex(ec.out, /Type: Private key \(EC\/ECDSA-SECP256R1\)/);
  t.regex(ec.out, /Type: Public key \(EC\/ECDSA-SECP256R1\)/);
});

test('openssl with the pkcs11 engine signs through p11-kit and the signature verifies', (t) => {
  const data = path.join(fx.dir, 'data.txt');
  const sig = path.join(fx.dir, 'data.sig');
  const pub = path.join(fx.dir, 'tools.pub.pem');
  fs.writeFileSync(data, 'signed in the enclave\n');
  fs.writeFileSync(pub, crypto.createPublicKey(fx.tokens[0].certPem).export({ type: 'spki', format: 'pem' }));
  for (const opts of [[], ['-sigopt', 'rsa_padding_mode:pss', '-sigopt', 'rsa_pss_saltlen:32']]) {
    const s = run('openssl', ['dgst', '-sha256', '-engine', 'pkcs11', '-keyform', 'engine', '-sign', `pkcs11:token=tools;type=private;pin-value=${PIN}`, ...opts, '-out', sig, data]);
    t.is(s.status, 0, s.out);
    const v = run('openssl', ['dgst', '-sha256', '-verify', pub, ...opts, '-signature', sig, data]);
    t.is(v.status, 0, v.out);
    t.regex(v.out, /Verified OK/);
  }
});

test('openssl pkeyutl -engine pkcs11 signs a digest with a pkcs11: URI and the signature verifies', (t) => {
  const digest = path.join(fx.dir, 'digest.bin');
  const sig = path.join(fx.dir, 'digest.sig');
  const data = crypto.randomBytes(100);
  fs.writeFileSync(digest, crypto.createHash('sha256').update(data).digest());
  const r = run('openssl', ['pkeyutl', '-sign', '-engine', 'pkcs11', '-keyform', 'engine', '-inkey', `pkcs11:token=tools;type=private;pin-value=${PIN}`, '-pkeyopt', 'digest:sha256', '-in', digest, '-out', sig]);
  t.is(r.status, 0, r.out);
  t.true(crypto.verify('sha256', data, fx.tokens[0].certPem, fs.readFileSync(sig)));
});

test('openssl pkeyutl decrypts through the engine what was encrypted to the certificate', (t) => {
  const secret = crypto.randomBytes(32);
  const ct = path.join(fx.dir, 'secret.enc');
  const pt = path.join(fx.dir, 'secret.dec');
  fs.writeFileSync(ct, crypto.publicEncrypt({ key: fx.tokens[0].certPem, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, secret));
  const r = run('openssl', ['pkeyutl', '-decrypt', '-engine', 'pkcs11', '-keyform', 'engine', '-inkey', `pkcs11:token=tools;type=private;pin-value=${PIN}`, '-pkeyopt', 'rsa_padding_mode:oaep', '-in', ct, '-out', pt]);
  t.is(r.status, 0, r.out);
  t.deepEqual(fs.readFileSync(pt), secret);
});
