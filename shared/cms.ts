// KMS CiphertextForRecipient: CMS EnvelopedData (RFC 5652), BER with indefinite
// lengths, one KeyTransRecipientInfo (RSAES-OAEP with SHA-256 and MGF1-SHA-256)
// whose subjectKeyIdentifier is SHA-256 of the recipient's SubjectPublicKeyInfo,
// content AES-256-CBC with the IV in the algorithm parameters. The enclave app
// unwraps it; the local cloud's KMS builds it the same way real KMS does.
import crypto, { type KeyObject } from 'node:crypto';
import { parseBer, octets, oid, expect, der, indefinite, derOid, derInt, BerError, type BerNode } from './ber.ts';

export class CmsError extends Error {}

const OID = {
  envelopedData: '1.2.840.113549.1.7.3',
  data: '1.2.840.113549.1.7.1',
  rsaesOaep: '1.2.840.113549.1.1.7',
  sha256: '2.16.840.1.101.3.4.2.1',
  mgf1: '1.2.840.113549.1.1.8',
  aes256cbc: '2.16.840.1.101.3.4.1.42',
};

export interface EnvelopedParts { subjectKeyIdentifier: Buffer; encryptedKey: Buffer; iv: Buffer; encryptedContent: Buffer }

/** Takes the EnvelopedData apart and checks every algorithm; decrypts nothing. */
export function parseEnvelopedData(ber: Buffer): EnvelopedParts {
  try {
    const ci = expect(parseBer(ber), 0x30, 'ContentInfo');
    if (ci.children.length !== 2) throw new CmsError(`ContentInfo has ${ci.children.length} fields, expected 2`);
    if (oid(ci.children[0], 'ContentInfo.contentType') !== OID.envelopedData) throw new CmsError('ContentInfo is not envelopedData');
    const ed = expect(explicit(ci.children[1], 0xa0, 'ContentInfo.content'), 0x30, 'EnvelopedData');
    // 2: a KeyTransRecipientInfo of version 2 is in it; 4: originatorInfo holds other certificate formats (RFC 5652 6.1).
    version(ed.children[0], [2, 4], 'EnvelopedData.version');
    let i = 1;
    if (ed.children[i] && (ed.children[i].tag & 0xdf) === 0x80) i++; // originatorInfo [0], unused by KMS
    const ris = expect(ed.children[i], 0x31, 'EnvelopedData.recipientInfos');
    const eci = expect(ed.children[i + 1], 0x30, 'EnvelopedData.encryptedContentInfo');
    if (ris.children.length !== 1) throw new CmsError(`${ris.children.length} recipients, expected 1`);
    const ktri = expect(ris.children[0], 0x30, 'KeyTransRecipientInfo');
    if (ktri.children.length !== 4) throw new CmsError(`KeyTransRecipientInfo has ${ktri.children.length} fields, expected 4`);
    const [ver, rid, kea, ek] = ktri.children;
    version(ver, [2], 'KeyTransRecipientInfo.version'); // 2 names the recipient by subjectKeyIdentifier
    const ski = octets(expect(rid, 0x80, 'KeyTransRecipientInfo.rid (subjectKeyIdentifier [0])'), 'rid');
    checkOaep(algorithm(kea, 'keyEncryptionAlgorithm'));
    const encryptedKey = octets(expect(ek, 0x04, 'encryptedKey'), 'encryptedKey');
    if (eci.children.length !== 3) throw new CmsError(`EncryptedContentInfo has ${eci.children.length} fields, expected 3 (with the encrypted content)`);
    if (oid(eci.children[0], 'EncryptedContentInfo.contentType') !== OID.data) throw new CmsError('encrypted content type is not id-data');
    const cea = algorithm(eci.children[1], 'contentEncryptionAlgorithm');
    if (cea.id !== OID.aes256cbc) throw new CmsError(`content encryption ${cea.id}, expected AES-256-CBC`);
    const iv = octets(expect(cea.params, 0x04, 'AES-CBC IV'), 'IV');
    if (iv.length !== 16) throw new CmsError(`IV of ${iv.length} bytes, expected 16`);
    const encryptedContent = octets(expect(eci.children[2], 0x80, 'encryptedContent [0]'), 'encryptedContent');
    if (encryptedContent.length === 0 || encryptedContent.length % 16) throw new CmsError(`encrypted content of ${encryptedContent.length} bytes is not whole AES blocks`);
    return { subjectKeyIdentifier: ski, encryptedKey, iv, encryptedContent };
  } catch (e) {
    if (e instanceof CmsError) throw e;
    if (e instanceof BerError) throw new CmsError(`malformed CiphertextForRecipient: ${e.message}`);
    throw new CmsError(`malformed CiphertextForRecipient: ${(e as Error).message}`);
  }
}

/** A version INTEGER of one of the allowed values. */
function version(n: BerNode | undefined, allowed: number[], what: string): void {
  const v = expect(n, 0x02, what);
  if (v.constructed || v.value.length !== 1 || !allowed.includes(v.value[0])) throw new CmsError(`${what} ${v.value.length === 1 ? v.value[0] : `of ${v.value.length} bytes`}, expected ${allowed.join(' or ')}`);
}

/** The one value inside an EXPLICIT [n] tag. */
function explicit(n: BerNode | undefined, tag: number, what: string): BerNode {
  const t = expect(n, tag, what);
  if (!t.constructed || t.children.length !== 1) throw new CmsError(`${what}: expected one value inside the explicit tag`);
  return t.children[0];
}

/** AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY OPTIONAL } */
function algorithm(n: BerNode | undefined, what: string): { id: string; params?: BerNode } {
  const a = expect(n, 0x30, what);
  if (!a.constructed || a.children.length < 1 || a.children.length > 2) throw new CmsError(`${what}: expected an AlgorithmIdentifier (an OID and at most one parameter)`);
  return { id: oid(a.children[0], what), params: a.children[1] };
}

/** A hash's AlgorithmIdentifier: its parameters are absent or NULL (RFC 5754; KMS sends NULL). */
function hashAlgorithm(n: BerNode | undefined, what: string): string {
  const a = algorithm(n, what);
  if (a.params && (a.params.tag !== 0x05 || a.params.value.length !== 0)) throw new CmsError(`${what}: parameters are not NULL`);
  return a.id;
}

function checkOaep(alg: { id: string; params?: BerNode }): void {
  if (alg.id !== OID.rsaesOaep) throw new CmsError(`key encryption ${alg.id}, expected RSAES-OAEP`);
  // RSAES-OAEP-params: [0] hash (default SHA-1!), [1] MGF (default MGF1-SHA-1), [2] label source
  // (default empty). KMS names SHA-256 for both and no label: anything else is refused.
  const params = expect(alg.params, 0x30, 'RSAES-OAEP parameters');
  if (!params.constructed || params.children.length !== 2) throw new CmsError(`RSAES-OAEP parameters have ${params.children?.length ?? 0} fields, expected hashFunc and maskGenFunc (SHA-256, MGF1-SHA-256) and no pSourceFunc`);
  const hash = hashAlgorithm(explicit(params.children[0], 0xa0, 'OAEP hashFunc'), 'OAEP hashFunc');
  const mgf = algorithm(explicit(params.children[1], 0xa1, 'OAEP maskGenFunc'), 'OAEP maskGenFunc');
  if (mgf.id !== OID.mgf1) throw new CmsError(`OAEP maskGenFunc ${mgf.id}, expected MGF1`);
  const mgfHash = hashAlgorithm(mgf.params, 'MGF1 hash');
  if (hash !== OID.sha256 || mgfHash !== OID.sha256) throw new CmsError('RSAES-OAEP must use SHA-256 and MGF1-SHA-256');
}

/** Per key: one recipient key pair serves many Decrypts, and exporting its SubjectPublicKeyInfo costs ~200 us each time. */
const recipientKeyIds = new WeakMap<KeyObject, Buffer>();

/** SHA-256 of the SubjectPublicKeyInfo DER: how KMS names the recipient. */
export function recipientKeyId(key: KeyObject): Buffer {
  let id = recipientKeyIds.get(key);
  if (!id) recipientKeyIds.set(key, (id = crypto.createHash('sha256').update((key.type === 'private' ? crypto.createPublicKey(key) : key).export({ type: 'spki', format: 'der' })).digest()));
  return id;
}

/** Decrypts CiphertextForRecipient with the ephemeral private key the attestation document carried. */
export function unwrapCiphertextForRecipient(ber: Buffer, privateKey: KeyObject): Buffer {
  const p = parseEnvelopedData(ber);
  const mine = recipientKeyId(privateKey);
  if (!p.subjectKeyIdentifier.equals(mine)) throw new CmsError('CiphertextForRecipient is for another key (subjectKeyIdentifier does not match)');
  let cek: Buffer;
  try {
    cek = crypto.privateDecrypt({ key: privateKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, p.encryptedKey);
  } catch { throw new CmsError('the content-encryption key does not decrypt (RSA-OAEP decoding error)'); }
  try {
    if (cek.length !== 32) throw new CmsError(`content-encryption key of ${cek.length} bytes, expected 32`);
    const d = crypto.createDecipheriv('aes-256-cbc', cek, p.iv);
    try { return Buffer.concat([d.update(p.encryptedContent), d.final()]); } catch { throw new CmsError('the content does not decrypt (bad padding)'); }
  } finally {
    cek.fill(0);
  }
}

/** Builds CiphertextForRecipient exactly as KMS lays it out (local cloud). */
export function buildCiphertextForRecipient(plaintext: Buffer, recipient: KeyObject): Buffer {
  const cek = crypto.randomBytes(32);
  const iv = crypto.randomBytes(16);
  try {
    const encryptedKey = crypto.publicEncrypt({ key: recipient, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, cek);
    const c = crypto.createCipheriv('aes-256-cbc', cek, iv);
    const encryptedContent = Buffer.concat([c.update(plaintext), c.final()]);
    const sha256 = der(0x30, derOid(OID.sha256));
    const oaep = der(0x30, derOid(OID.rsaesOaep), der(0x30, der(0xa0, sha256), der(0xa1, der(0x30, derOid(OID.mgf1), sha256))));
    const ktri = der(0x30, derInt(2), der(0x80, recipientKeyId(recipient)), oaep, der(0x04, encryptedKey));
    const eci = indefinite(0x30, derOid(OID.data), der(0x30, derOid(OID.aes256cbc), der(0x04, iv)), indefinite(0xa0, der(0x04, encryptedContent)));
    return indefinite(0x30, derOid(OID.envelopedData), indefinite(0xa0, indefinite(0x30, derInt(2), der(0x31, ktri), eci)));
  } finally {
    cek.fill(0);
  }
}
