// Attestation documents: the real AWS-signed documents from ../shared/vectors
// verify at their own time against the shipped (pinned) AWS root, and fail when
// anything is off, each failure saying why.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { verifyAttestation, parseAttestation, awsNitroRoot, AWS_NITRO_ROOT_G1_SHA256 } from '../shared/attestation.ts';
import { encodeCbor, decodeCbor, Tagged } from '../shared/cbor.ts';
import { ROOT } from './helpers/enclave.ts';

const VECTORS = process.env.NITRO_ACM_VECTORS ?? path.join(ROOT, 'test/vectors');
const hex = (name: string) => Buffer.from(fs.readFileSync(path.join(VECTORS, name), 'utf8').trim(), 'hex');

const DOCS = [
  { file: 'att_evervault_beta_2022-10-13.hex', timestamp: 1665651482136, moduleId: 'i-020b6af9246d90e92-enc0183d09086c24190', pcr0: 'f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b' },
  { file: 'att_evervault_beta_debug_2022-10-12.hex', timestamp: 1665582606081, moduleId: 'i-03ad7cdb817437eeb-enc0183cc7569b3f6e1', pcr0: '00'.repeat(48) },
  { file: 'att_evervault_ga_2023-09-18.hex', timestamp: 1695049410860, moduleId: 'i-0918f6c55e3b61d89-enc018aa8b8e2285d13', pcr0: '00'.repeat(48) },
  { file: 'att_blocky_2024-09-07.hex', timestamp: 1725719859545, moduleId: 'i-0a22e5c5f24d22174-enc0191cceb4289903f', pcr0: 'e72a46ca80a260fb044a125442f0c7e331813bcbaf9724d9f3857758992766f2d65710a27aa94ae3949dd54e7c9fe86a' },
  { file: 'att_blocky_debug_2024-09-07.hex', timestamp: 1725719886508, moduleId: 'i-0a22e5c5f24d22174-enc0191ccebaf8feaba', pcr0: '00'.repeat(48) },
];

test('the shipped AWS root has the pinned fingerprint', (t) => {
  t.is(awsNitroRoot().fingerprint256, AWS_NITRO_ROOT_G1_SHA256);
  t.is(awsNitroRoot().fingerprint256, new crypto.X509Certificate(fs.readFileSync(path.join(VECTORS, 'aws_nitro_enclaves_root_g1.pem'))).fingerprint256);
});

for (const d of DOCS) {
  test(`${d.file}: verifies at its own time; module id, timestamp and PCR0 as recorded`, (t) => {
    const doc = verifyAttestation(hex(d.file));
    t.is(doc.moduleId, d.moduleId);
    t.is(doc.timestamp, d.timestamp);
    t.is(doc.pcrs.get(0)!.toString('hex'), d.pcr0);
    t.is(doc.pcrs.size, 16);
    t.is(doc.cabundle.length, 4);
  });

  test(`${d.file}: refused at a time outside its certificate's validity`, (t) => {
    const e = t.throws(() => verifyAttestation(hex(d.file), { at: new Date(d.timestamp + 4 * 3600_000) }));
    t.regex(e!.message, /^certificate .* is valid .* not at /);
    t.throws(() => verifyAttestation(hex(d.file), { at: new Date() }), { message: /not at/ });
  });
}

test('the document with one flipped signature byte fails on the COSE signature', (t) => {
  t.throws(() => verifyAttestation(hex('att_evervault_beta_2022-10-13_NEG_bad_signature.hex')), { message: /COSE signature does not verify/ });
});

test('a document is refused when its root is not trusted', (t) => {
  const other = new crypto.X509Certificate(fs.readFileSync(path.join(ROOT, 'test/fixtures/other-root.pem')));
  t.throws(() => verifyAttestation(hex(DOCS[0].file), { roots: [other] }), { message: /is not a trusted root/ });
});

test('optional fields: null and absent mean the same; the 1024-byte fields of real documents are accepted', (t) => {
  const beta = parseAttestation(hex(DOCS[0].file)).doc;
  t.is(beta.publicKey, null);
  t.is(beta.userData, null);
  t.is(beta.nonce!.length, 256);
  const blocky = parseAttestation(hex(DOCS[3].file)).doc;
  t.is(blocky.userData!.length, 1024);
  t.true(blocky.nonce!.equals(Buffer.alloc(1024, 1)));
});

test('tag 18 (COSE_Sign1) around the same document verifies too; other tags are refused', (t) => {
  const untagged = decodeCbor(hex(DOCS[0].file));
  t.is(verifyAttestation(encodeCbor(new Tagged(18, untagged))).timestamp, DOCS[0].timestamp);
  t.throws(() => verifyAttestation(encodeCbor(new Tagged(98, untagged))), { message: /tag 98/ });
});

test('malformed input fails with an error that says what is wrong, never a crash', (t) => {
  const good = hex(DOCS[0].file);
  t.throws(() => verifyAttestation(good.subarray(0, 1000)), { message: /not CBOR: truncated/ });
  t.throws(() => verifyAttestation(Buffer.from([0x83, 1, 2, 3])), { message: /4-element array/ });
  t.throws(() => verifyAttestation(Buffer.alloc(0)), { message: /not CBOR/ });
  for (let i = 0; i < 300; i++) {
    const mangled = Buffer.from(good);
    for (let j = 0; j < 3; j++) mangled[crypto.randomInt(mangled.length)] ^= 1 << crypto.randomInt(8);
    // Every failure is an AttestationError (or CBOR/ASN.1 parse error turned into one), never a TypeError.
    try { verifyAttestation(mangled); } catch (e) { t.is((e as Error).constructor.name, 'AttestationError', (e as Error).stack); }
  }
  t.pass();
});
