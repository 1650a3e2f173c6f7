// The certificate bundle, in the format ACM for Nitro Enclaves puts in S3 and
// `nitro-acm seal` writes:
//   {"certificate": PEM, "certificateChain": PEM, "encryptedPrivateKey": base64,
//    "encryptionMethod": "KMS" | "plaintext"}
// "KMS": encryptedPrivateKey is a KMS CiphertextBlob whose plaintext is the PEM
// private key; it is decrypted only inside the enclave, through KMS with an
// attestation document. "plaintext" (base64 of the PEM) exists for local mode and
// is refused by an enclave that is not in local mode.
import { parseCertificate } from './certificate-cache.ts';
import { LIST_CAPS, KEY_LABEL_MAX_BYTES } from './key-wire.ts';

export interface Bundle {
  certificate: string;
  certificateChain: string;
  encryptedPrivateKey: string;
  encryptionMethod: 'KMS' | 'plaintext';
  /** Optional KMS encryption context the key was sealed with. */
  encryptionContext?: Record<string, string>;
}

export class BundleError extends Error {}

const MAX_BUNDLE = 256 * 1024;

/** Parses and checks a bundle; every error names the field and the source. */
export function parseBundle(text: string | Buffer, source: string): Bundle {
  if (text.length > MAX_BUNDLE) throw new BundleError(`${source}: bundle of ${text.length} bytes is larger than ${MAX_BUNDLE}`);
  let b: Record<string, unknown>;
  try { b = JSON.parse(text.toString()) as Record<string, unknown>; } catch (e) { throw new BundleError(`${source}: not JSON (${(e as Error).message})`); }
  if (typeof b !== 'object' || b === null || Array.isArray(b)) throw new BundleError(`${source}: expected a JSON object`);
  for (const f of ['certificate', 'encryptedPrivateKey', 'encryptionMethod'] as const) {
    if (typeof b[f] !== 'string' || b[f] === '') throw new BundleError(`${source}: "${f}" must be a non-empty string`);
  }
  if (b.certificateChain !== undefined && typeof b.certificateChain !== 'string') throw new BundleError(`${source}: "certificateChain" must be a string`);
  const method = String(b.encryptionMethod);
  const normalized = method.toUpperCase() === 'KMS' ? 'KMS' : method.toLowerCase() === 'plaintext' ? 'plaintext' : undefined;
  if (!normalized) throw new BundleError(`${source}: "encryptionMethod" is "${method}", expected "KMS" (or "plaintext" in local mode)`);
  try { parseCertificate(String(b.certificate)); } catch (e) { throw new BundleError(`${source}: "certificate" is not a PEM certificate (${(e as Error).message})`); }
  if (!/^[A-Za-z0-9+/=\s]+$/.test(String(b.encryptedPrivateKey))) throw new BundleError(`${source}: "encryptedPrivateKey" is not base64`);
  const ctx = b.encryptionContext;
  if (ctx !== undefined && (typeof ctx !== 'object' || ctx === null || Object.values(ctx).some((v) => typeof v !== 'string'))) throw new BundleError(`${source}: "encryptionContext" must map strings to strings`);
  return { certificate: String(b.certificate), certificateChain: String(b.certificateChain ?? ''), encryptedPrivateKey: String(b.encryptedPrivateKey), encryptionMethod: normalized, encryptionContext: ctx as Record<string, string> | undefined };
}

/**
 * One key of a FileDb source, in AWS's agent's format: the file is a JSON array
 * of these, all keys of one token. encrypted_pem_b64 is a KMS CiphertextBlob
 * (base64) whose plaintext is the PEM private key; id becomes CKA_ID (one byte:
 * the URI's id=%01) and label CKA_LABEL; cert_pem, when given, is the key's
 * certificate, maybe followed by its chain.
 */
export interface FileDbKey { id: number; label: string; encrypted_pem_b64: string; cert_pem?: string }

/** Most keys in one FileDb: as many as a token holds. */
const MAX_FILEDB_KEYS = LIST_CAPS.keysPerToken;
/** Largest FileDb: a bundle's limit for each key. */
export const MAX_FILEDB = MAX_BUNDLE * MAX_FILEDB_KEYS;

/** Parses and checks a FileDb; every error names the source, the entry and the field. Unknown fields are ignored, as AWS's agent does. */
export function parseFileDb(text: string | Buffer, source: string): FileDbKey[] {
  if (text.length > MAX_FILEDB) throw new BundleError(`${source}: ${text.length} bytes is larger than ${MAX_FILEDB}`);
  let a: unknown;
  try { a = JSON.parse(text.toString()); } catch (e) { throw new BundleError(`${source}: not JSON (${(e as Error).message})`); }
  if (!Array.isArray(a)) throw new BundleError(`${source}: expected a JSON array of keys ({"id", "label", "encrypted_pem_b64", "cert_pem"})`);
  if (a.length < 1 || a.length > MAX_FILEDB_KEYS) throw new BundleError(`${source}: ${a.length} keys; a token holds 1 to ${MAX_FILEDB_KEYS}`);
  return a.map((e: unknown, i): FileDbKey => {
    const at = `${source}: key [${i}]`;
    if (typeof e !== 'object' || e === null || Array.isArray(e)) throw new BundleError(`${at}: expected a JSON object`);
    const k = e as Record<string, unknown>;
    if (!Number.isInteger(k.id) || (k.id as number) < 0 || (k.id as number) > 255) throw new BundleError(`${at}: "id" must be an integer 0..255 (it is the key's one-byte CKA_ID), got ${JSON.stringify(k.id)}`);
    if (typeof k.label !== 'string' || k.label === '' || Buffer.byteLength(k.label) > KEY_LABEL_MAX_BYTES) throw new BundleError(`${at}: "label" must be a string of 1 to ${KEY_LABEL_MAX_BYTES} bytes`);
    if (typeof k.encrypted_pem_b64 !== 'string' || !/^[A-Za-z0-9+/=\s]+$/.test(k.encrypted_pem_b64)) throw new BundleError(`${at}: "encrypted_pem_b64" must be base64 (a KMS CiphertextBlob of the PEM private key)`);
    if (k.cert_pem !== undefined && k.cert_pem !== null) {
      if (typeof k.cert_pem !== 'string') throw new BundleError(`${at}: "cert_pem" must be a PEM string or null`);
      try { parseCertificate(k.cert_pem); } catch (err) { throw new BundleError(`${at}: "cert_pem" is not a PEM certificate (${(err as Error).message})`); }
    }
    return { id: k.id as number, label: k.label, encrypted_pem_b64: k.encrypted_pem_b64, ...(typeof k.cert_pem === 'string' ? { cert_pem: k.cert_pem } : {}) };
  });
}

/** A certificate PEM split in the leaf (the first) and what follows it (its chain). */
export function splitLeaf(pem: string): { leaf: string; chain: string } {
  const certs = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  return { leaf: certs[0] ? certs[0] + '\n' : '', chain: certs.slice(1).join('\n') };
}
