// KMS CiphertextForRecipient: the real samples in ../shared/vectors decrypt to
// their recorded plaintexts; parse-only samples give their recorded fields; a
// corrupted one fails with a reason; what the local KMS builds unwraps too.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import os from 'node:os';
import { spawnSync } from 'node:child_process';
import { unwrapCiphertextForRecipient, parseEnvelopedData, buildCiphertextForRecipient, recipientKeyId } from '../src/shared/cms.ts';
import { ROOT } from './helpers/enclave.ts';

const VECTORS = process.env.NITRO_ACM_VECTORS ?? path.join(ROOT, 'test/vectors');
const read = (name: string) => fs.readFileSync(path.join(VECTORS, name), 'utf8').trim();
const b64 = (name: string) => Buffer.from(read(name), 'base64');
const hex = (name: string) => Buffer.from(read(name), 'hex');
const key = (name: string) => crypto.createPrivateKey(fs.readFileSync(path.join(VECTORS, name)));

for (const sample of ['kms_cms_enclaver', 'kms_cms_edgebit_go', 'kms_cms_eks_ethsigner']) {
  test(`${sample}: decrypts to the recorded plaintext`, (t) => {
    const pk = key(`${sample}_key.pem`);
    const blob = b64(`${sample}.b64`);
    t.deepEqual(unwrapCiphertextForRecipient(blob, pk), hex(`${sample}_plaintext.hex`));
    t.deepEqual(parseEnvelopedData(blob).subjectKeyIdentifier, recipientKeyId(crypto.createPublicKey(pk)), 'rid is SHA-256 of the SPKI');
  });
}

for (const sample of ['kms_cms_sdkc_parse1', 'kms_cms_sdkc_parse2']) {
  test(`${sample}: parses to the recorded encrypted key, IV and ciphertext`, (t) => {
    const p = parseEnvelopedData(hex(`${sample}.hex`));
    t.deepEqual(p.encryptedKey, hex(`${sample}_encrypted_key.hex`));
    t.deepEqual(p.iv, hex(`${sample}_iv.hex`));
    t.deepEqual(p.encryptedContent, hex(`${sample}_ciphertext.hex`));
  });
}

test('one flipped byte in the encrypted key: refused with the OAEP reason', (t) => {
  t.throws(() => unwrapCiphertextForRecipient(b64('kms_cms_enclaver_NEG_bad_encrypted_key.b64'), key('kms_cms_enclaver_key.pem')), { message: /RSA-OAEP decoding error/ });
});

test('a ciphertext for another key is refused before any decryption', (t) => {
  t.throws(() => unwrapCiphertextForRecipient(b64('kms_cms_enclaver.b64'), key('kms_cms_edgebit_go_key.pem')), { message: /for another key/ });
});

test('truncated and garbled input fails with a reason, never a crash', (t) => {
  const blob = b64('kms_cms_eks_ethsigner.b64');
  const pk = key('kms_cms_eks_ethsigner_key.pem');
  for (let n = 0; n < blob.length; n += 7) {
    const e = t.throws(() => unwrapCiphertextForRecipient(blob.subarray(0, n), pk));
    t.is(e!.constructor.name, 'CmsError', e!.stack);
  }
  for (let i = 0; i < 300; i++) {
    const g = Buffer.from(blob);
    g[crypto.randomInt(g.length)] ^= 1 << crypto.randomInt(8);
    try { unwrapCiphertextForRecipient(g, pk); } catch (e) { t.is((e as Error).constructor.name, 'CmsError', (e as Error).stack); }
  }
});

test('what the local KMS builds has the KMS layout and unwraps; openssl cms agrees', (t) => {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const secret = Buffer.from('-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n');
  const blob = buildCiphertextForRecipient(secret, publicKey);
  t.is(blob.subarray(0, 2).toString('hex'), '3080', 'outer SEQUENCE has indefinite length, like KMS');
  t.deepEqual(unwrapCiphertextForRecipient(blob, privateKey), secret);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nitro-acm-cms-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'blob.der'), blob);
  fs.writeFileSync(path.join(dir, 'key.pem'), privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  const r = spawnSync('openssl', ['cms', '-decrypt', '-inform', 'DER', '-binary', '-in', path.join(dir, 'blob.der'), '-inkey', path.join(dir, 'key.pem')]);
  t.is(r.status, 0, r.stderr.toString());
  t.deepEqual(r.stdout, secret);
});
