// KMS CiphertextForRecipient: the real samples in ../shared/vectors decrypt to
// their recorded plaintexts; parse-only samples give their recorded fields; a
// corrupted one fails with a reason; what the local KMS builds unwraps too.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import os from 'node:os';
import { spawnSync } from 'node:child_process';
import { unwrapCiphertextForRecipient, parseEnvelopedData, buildCiphertextForRecipient, recipientKeyId, CmsError } from '../shared/cms.ts';
import { der, derOid, derInt, indefinite } from '../shared/ber.ts';
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

// What bench/libraries found (issue 13 item 8): schema parsers (pkijs,
// @peculiar/asn1-cms) refuse these one-byte changes to a real KMS reply, which
// our reader used to walk past because it looked only at the OIDs and octets.
// Offsets are those `openssl asn1parse` gives for kms_cms_eks_ethsigner.
const tightened: [string, number, number, RegExp][] = [
  ['EnvelopedData.version is not an INTEGER', 17, 0x04, /EnvelopedData\.version/],
  ['KeyTransRecipientInfo.version is not an INTEGER', 28, 0x04, /KeyTransRecipientInfo\.version/],
  ['KeyTransRecipientInfo.version is 0 (issuerAndSerialNumber) with a subjectKeyIdentifier', 30, 0x00, /KeyTransRecipientInfo\.version 0, expected 2/],
  ['the OAEP parameters are not a SEQUENCE', 78, 0x31, /RSAES-OAEP parameters/],
  ['the OAEP hash is not an AlgorithmIdentifier', 82, 0x31, /OAEP hashFunc/],
  ['the OAEP hash parameters are not NULL', 95, 0x04, /OAEP hashFunc: parameters/],
  ['the MGF is not an AlgorithmIdentifier', 99, 0x31, /OAEP maskGenFunc/],
  ['the MGF1 hash is a BIT STRING', 112, 0x23, /MGF1 hash/],
  ['the MGF1 hash parameters are not NULL', 125, 0x04, /MGF1 hash: parameters/],
];
for (const [what, offset, value, reason] of tightened) {
  test(`a KMS reply where ${what} is refused, naming the field`, (t) => {
    const blob = b64('kms_cms_eks_ethsigner.b64');
    t.notThrows(() => parseEnvelopedData(blob));
    const bad = Buffer.from(blob);
    bad[offset] = value;
    t.throws(() => parseEnvelopedData(bad), { message: reason, instanceOf: CmsError });
  });
}

test('RSAES-OAEP parameters with a pSourceFunc (a label KMS never sets) are refused', (t) => {
  const { publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const sha256 = der(0x30, derOid('2.16.840.1.101.3.4.2.1'));
  const reply = (pSource: Buffer[]) => {
    const oaep = der(0x30, derOid('1.2.840.113549.1.1.7'), der(0x30, der(0xa0, sha256), der(0xa1, der(0x30, derOid('1.2.840.113549.1.1.8'), sha256)), ...pSource));
    const ktri = der(0x30, derInt(2), der(0x80, recipientKeyId(publicKey)), oaep, der(0x04, Buffer.alloc(256, 1)));
    const eci = indefinite(0x30, derOid('1.2.840.113549.1.7.1'), der(0x30, derOid('2.16.840.1.101.3.4.1.42'), der(0x04, Buffer.alloc(16))), indefinite(0xa0, der(0x04, Buffer.alloc(32))));
    return indefinite(0x30, derOid('1.2.840.113549.1.7.3'), indefinite(0xa0, indefinite(0x30, derInt(2), der(0x31, ktri), eci)));
  };
  t.notThrows(() => parseEnvelopedData(reply([])), 'the same reply without a pSourceFunc parses');
  const pSpecified = der(0xa2, der(0x30, derOid('1.2.840.113549.1.1.9'), der(0x04, Buffer.from('label'))));
  t.throws(() => parseEnvelopedData(reply([pSpecified])), { message: /no pSourceFunc/, instanceOf: CmsError });
});
