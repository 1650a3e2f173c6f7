// Nitro attestation documents: COSE_Sign1 (RFC 9052) over a CBOR payload, signed
// ES384 by a short-lived certificate that chains to the AWS Nitro root (or, in
// local mode only, to the simulated NSM's own root). Parsing is strict and every
// failure says why; see test/vectors for real documents.
import crypto, { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import { decodeCbor, encodeCbor, Tagged, CborError, type CborValue } from './cbor.ts';

export class AttestationError extends Error {}

export interface AttestationDocument {
  moduleId: string;
  digest: string;
  /** Milliseconds since the epoch (UTC). */
  timestamp: number;
  pcrs: Map<number, Buffer>;
  certificate: Buffer;
  cabundle: Buffer[];
  publicKey: Buffer | null;
  userData: Buffer | null;
  nonce: Buffer | null;
}

/** SHA-256 fingerprint of the AWS Nitro Enclaves root G1, pinned (DESIGN.md). */
export const AWS_NITRO_ROOT_G1_SHA256 = '64:1A:03:21:A3:E2:44:EF:E4:56:46:31:95:D6:06:31:7E:D7:CD:CC:3C:17:56:E0:98:93:F3:C6:8F:79:BB:5B';

let awsRoot: X509Certificate | undefined;
/** The AWS root shipped with nitro-acm, refused if its fingerprint is not the pinned one. */
export function awsNitroRoot(): X509Certificate {
  if (!awsRoot) {
    const cert = new X509Certificate(fs.readFileSync(new URL('./trust/aws_nitro_enclaves_root_g1.pem', import.meta.url)));
    if (cert.fingerprint256 !== AWS_NITRO_ROOT_G1_SHA256) throw new AttestationError(`shipped AWS Nitro root has fingerprint ${cert.fingerprint256}, expected ${AWS_NITRO_ROOT_G1_SHA256}`);
    awsRoot = cert;
  }
  return awsRoot;
}

const MAX_OPTIONAL_FIELD = 1024; // real AWS documents carry 1024-byte user_data and nonce
const ES384 = -35;

function bstr(v: CborValue, what: string): Buffer {
  if (!(v instanceof Uint8Array)) throw new AttestationError(`${what}: expected a byte string`);
  return Buffer.from(v);
}

function optional(payload: Map<CborValue, CborValue>, key: string): Buffer | null {
  const v = payload.get(key);
  if (v === undefined || v === null) return null; // absent and null mean the same (real documents use null)
  const b = bstr(v, key);
  if (b.length > MAX_OPTIONAL_FIELD) throw new AttestationError(`${key}: ${b.length} bytes, at most ${MAX_OPTIONAL_FIELD}`);
  return b;
}

export interface ParsedSign1 { protectedHeader: Buffer; payload: Buffer; signature: Buffer; doc: AttestationDocument }

/** Parses without verifying anything cryptographic. */
export function parseAttestation(bytes: Uint8Array): ParsedSign1 {
  let top: CborValue;
  try { top = decodeCbor(bytes); } catch (e) { throw new AttestationError(`not CBOR: ${(e as CborError).message}`); }
  if (top instanceof Tagged) {
    if (top.tag !== 18) throw new AttestationError(`CBOR tag ${top.tag}, expected none or 18 (COSE_Sign1)`);
    top = top.value;
  }
  if (!Array.isArray(top) || top.length !== 4) throw new AttestationError('not a COSE_Sign1 structure (a 4-element array)');
  const protectedHeader = bstr(top[0], 'protected header');
  let prot: CborValue;
  try { prot = decodeCbor(protectedHeader); } catch (e) { throw new AttestationError(`protected header: ${(e as Error).message}`); }
  if (!(prot instanceof Map) || prot.get(1) !== ES384) throw new AttestationError(`protected header: algorithm ${prot instanceof Map ? String(prot.get(1)) : '?'}, expected ES384 (-35)`);
  if (!(top[1] instanceof Map)) throw new AttestationError('unprotected header: expected a map');
  const payload = bstr(top[2], 'payload');
  const signature = bstr(top[3], 'signature');
  if (signature.length !== 96) throw new AttestationError(`signature: ${signature.length} bytes, expected 96 (ES384 r||s)`);
  let p: CborValue;
  try { p = decodeCbor(payload); } catch (e) { throw new AttestationError(`payload: ${(e as Error).message}`); }
  if (!(p instanceof Map)) throw new AttestationError('payload: expected a map');
  const moduleId = p.get('module_id');
  if (typeof moduleId !== 'string' || moduleId === '') throw new AttestationError('module_id: expected a non-empty text string');
  const digest = p.get('digest');
  if (digest !== 'SHA384') throw new AttestationError(`digest: "${String(digest)}", expected "SHA384"`);
  const timestamp = p.get('timestamp');
  if (typeof timestamp !== 'number' || !Number.isInteger(timestamp) || timestamp <= 0) throw new AttestationError('timestamp: expected a positive integer (ms)');
  const pcrsRaw = p.get('pcrs');
  if (!(pcrsRaw instanceof Map) || pcrsRaw.size < 1 || pcrsRaw.size > 32) throw new AttestationError('pcrs: expected a map of 1..32 entries');
  const pcrs = new Map<number, Buffer>();
  for (const [k, v] of pcrsRaw) {
    if (typeof k !== 'number' || !Number.isInteger(k) || k < 0 || k > 31) throw new AttestationError(`pcrs: index ${String(k)} is not 0..31`);
    const b = bstr(v, `PCR${k}`);
    if (![32, 48, 64].includes(b.length)) throw new AttestationError(`PCR${k}: ${b.length} bytes, expected 32, 48 or 64`);
    pcrs.set(k, b);
  }
  const certificate = bstr(p.get('certificate'), 'certificate');
  const cab = p.get('cabundle');
  if (!Array.isArray(cab) || cab.length < 1) throw new AttestationError('cabundle: expected a non-empty array');
  const cabundle = cab.map((c, i) => bstr(c, `cabundle[${i}]`));
  return {
    protectedHeader, payload, signature,
    doc: { moduleId, digest, timestamp, pcrs, certificate, cabundle, publicKey: optional(p, 'public_key'), userData: optional(p, 'user_data'), nonce: optional(p, 'nonce') },
  };
}

function sigStructure(protectedHeader: Buffer, payload: Buffer): Buffer {
  return encodeCbor(['Signature1', protectedHeader, Buffer.alloc(0), payload]);
}

export interface VerifyOptions {
  /** Trusted roots; cabundle[0] must be one of them, byte for byte. Default: the AWS root. */
  roots?: X509Certificate[];
  /** The time certificates must be valid at; default: the document's own timestamp. */
  at?: Date;
}

function validAt(cert: X509Certificate, at: Date, what: string): void {
  if (at < new Date(cert.validFrom) || at > new Date(cert.validTo)) {
    throw new AttestationError(`${what} (${cert.subject.replace(/\n/g, ', ')}) is valid ${new Date(cert.validFrom).toISOString()} .. ${new Date(cert.validTo).toISOString()}, not at ${at.toISOString()}`);
  }
}

/** Verifies signature and chain; returns the document or throws AttestationError saying why. */
export function verifyAttestation(bytes: Uint8Array, opts: VerifyOptions = {}): AttestationDocument {
  const { protectedHeader, payload, signature, doc } = parseAttestation(bytes);
  const roots = opts.roots ?? [awsNitroRoot()];
  const at = opts.at ?? new Date(doc.timestamp);
  let chain: X509Certificate[];
  let leaf: X509Certificate;
  try {
    chain = doc.cabundle.map((d) => new X509Certificate(d));
    leaf = new X509Certificate(doc.certificate);
  } catch (e) { throw new AttestationError(`certificate does not parse: ${(e as Error).message}`); }
  if (!roots.some((r) => r.raw.equals(chain[0].raw))) throw new AttestationError(`cabundle[0] (${chain[0].subject.replace(/\n/g, ', ')}, SHA-256 ${chain[0].fingerprint256}) is not a trusted root`);
  chain.forEach((c, i) => {
    validAt(c, at, `cabundle[${i}]`);
    if (!c.ca) throw new AttestationError(`cabundle[${i}] is not a CA certificate`);
    const issuer = i === 0 ? c : chain[i - 1];
    if (!c.checkIssued(issuer) || !c.verify(issuer.publicKey)) throw new AttestationError(`cabundle[${i}] is not signed by ${i === 0 ? 'itself' : `cabundle[${i - 1}]`}`);
  });
  const last = chain[chain.length - 1];
  validAt(leaf, at, 'certificate');
  if (!leaf.checkIssued(last) || !leaf.verify(last.publicKey)) throw new AttestationError('certificate is not signed by the last cabundle entry');
  const ok = crypto.verify('sha384', sigStructure(protectedHeader, payload), { key: leaf.publicKey, dsaEncoding: 'ieee-p1363' }, signature);
  if (!ok) throw new AttestationError('COSE signature does not verify with the certificate\'s key');
  return doc;
}

/** Builds and signs a document (the simulated NSM's job); `key` is the signing certificate's P-384 key. */
export function signAttestation(doc: AttestationDocument, key: crypto.KeyObject): Buffer {
  const payload = encodeCbor(new Map<CborValue, CborValue>([
    ['module_id', doc.moduleId],
    ['digest', doc.digest],
    ['timestamp', doc.timestamp],
    ['pcrs', new Map<CborValue, CborValue>([...doc.pcrs].map(([k, v]) => [k, v]))],
    ['certificate', doc.certificate],
    ['cabundle', doc.cabundle],
    ['public_key', doc.publicKey],
    ['user_data', doc.userData],
    ['nonce', doc.nonce],
  ]));
  const protectedHeader = encodeCbor(new Map<CborValue, CborValue>([[1, ES384]]));
  const signature = crypto.sign('sha384', sigStructure(protectedHeader, payload), { key, dsaEncoding: 'ieee-p1363' });
  return encodeCbor([protectedHeader, new Map(), payload, signature]);
}
