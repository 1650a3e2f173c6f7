// The certificate bundle, in the format ACM for Nitro Enclaves puts in S3 and
// `nitro-acm seal` writes:
//   {"certificate": PEM, "certificateChain": PEM, "encryptedPrivateKey": base64,
//    "encryptionMethod": "KMS" | "plaintext"}
// "KMS": encryptedPrivateKey is a KMS CiphertextBlob whose plaintext is the PEM
// private key; it is decrypted only inside the enclave, through KMS with an
// attestation document. "plaintext" (base64 of the PEM) exists for local mode and
// is refused by an enclave that is not in local mode.
import { X509Certificate } from 'node:crypto';

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
  try { new X509Certificate(String(b.certificate)); } catch (e) { throw new BundleError(`${source}: "certificate" is not a PEM certificate (${(e as Error).message})`); }
  if (!/^[A-Za-z0-9+/=\s]+$/.test(String(b.encryptedPrivateKey))) throw new BundleError(`${source}: "encryptedPrivateKey" is not base64`);
  const ctx = b.encryptionContext;
  if (ctx !== undefined && (typeof ctx !== 'object' || ctx === null || Object.values(ctx).some((v) => typeof v !== 'string'))) throw new BundleError(`${source}: "encryptionContext" must map strings to strings`);
  return { certificate: String(b.certificate), certificateChain: String(b.certificateChain ?? ''), encryptedPrivateKey: String(b.encryptedPrivateKey), encryptionMethod: normalized, encryptionContext: ctx as Record<string, string> | undefined };
}
