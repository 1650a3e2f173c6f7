// RSA private-key operations for the key server. Signatures go to OpenSSL in one
// call through the native addon (the padding too: PKCS#1 v1.5 type 1 over the
// DigestInfo given, EMSA-PSS over the digest given, or none), with each key
// parsed once per worker thread; decryption is node:crypto's raw private
// operation (OpenSSL, with blinding) and the type 2 padding is removed here.
// These functions are synchronous: a key worker thread (enclave/key-worker.ts)
// calls them for the connections it serves, never the main thread's event loop.
import crypto, { type KeyObject } from 'node:crypto';
import { CKR, P11Error } from '../shared/pkcs11-rv.ts';
import { SignScheme, DecryptScheme, HASH_NAMES, HASH_LEN } from '../shared/key-wire.ts';
import { native, nativeKeyOf, type RsaKey } from '../shared/native.ts';

export interface SignJob { key: KeyObject; modulusBits: number; scheme: number; hash: number; mgfHash: number; saltLength: number; data: Uint8Array }
export interface DecryptJob { key: KeyObject; modulusBits: number; scheme: number; hash: number; mgfHash: number; oaepLabel: Uint8Array; data: Uint8Array }

function hashName(id: number, what: string): string {
  const n = HASH_NAMES[id];
  if (!n) throw new P11Error(CKR.MECHANISM_PARAM_INVALID, `unknown ${what} ${id}`);
  return n;
}

const parsed = new WeakMap<KeyObject, RsaKey>();
/** The key parsed into the addon (once per worker): called ahead of the first signature by the key worker, else by sign. */
export const rsaKeyOf = (key: KeyObject) => nativeKeyOf(parsed, key, (der) => native().rsaKey(der));

/** Left-pads to the modulus length: the raw operation takes exactly k bytes. */
function toModulusLength(em: Buffer, k: number): Buffer {
  if (em.length === k) return em;
  const out = Buffer.alloc(k);
  em.copy(out, k - em.length);
  return out;
}

export function sign(job: SignJob): Buffer {
  const k = Math.ceil(job.modulusBits / 8);
  const data = Buffer.from(job.data.buffer, job.data.byteOffset, job.data.byteLength);
  const refused = (e: unknown) => new P11Error(CKR.DATA_INVALID, `RSA operation refused the input: ${(e as Error).message}`);
  switch (job.scheme) {
    case SignScheme.PKCS1:
      if (data.length > k - 11) throw new P11Error(CKR.DATA_LEN_RANGE, `PKCS#1 v1.5 input of ${data.length} bytes exceeds ${k - 11} for this key`);
      return native().rsaSignDigest(rsaKeyOf(job.key), 'pkcs1', data);
    case SignScheme.PSS: {
      const hash = hashName(job.hash, 'PSS hash');
      const hLen = HASH_LEN[job.hash];
      if (data.length !== hLen) throw new P11Error(CKR.DATA_LEN_RANGE, `PSS input of ${data.length} bytes is not a ${hash} digest`);
      // EMSA-PSS (RFC 8017 9.1.1): emLen = ceil((modBits - 1) / 8) must hold the digest, the salt and two bytes.
      if (Math.ceil((job.modulusBits - 1) / 8) < hLen + job.saltLength + 2) throw new P11Error(CKR.MECHANISM_PARAM_INVALID, `salt of ${job.saltLength} bytes does not fit a ${job.modulusBits}-bit key`);
      try { return native().rsaSignDigest(rsaKeyOf(job.key), 'pss', data, hash, hashName(job.mgfHash, 'MGF1 hash'), job.saltLength); } catch (e) { throw refused(e); }
    }
    case SignScheme.RAW:
      if (data.length > k) throw new P11Error(CKR.DATA_LEN_RANGE, `raw RSA input of ${data.length} bytes exceeds the modulus (${k})`);
      try { return native().rsaSignDigest(rsaKeyOf(job.key), 'raw', toModulusLength(data, k)); } catch (e) { throw refused(e); }
    case SignScheme.ECDSA:
      throw new P11Error(CKR.KEY_TYPE_INCONSISTENT, 'ECDSA with an RSA key');
    default:
      throw new P11Error(CKR.MECHANISM_INVALID, `unknown sign scheme ${job.scheme}`);
  }
}

export function decrypt(job: DecryptJob): Buffer {
  const k = Math.ceil(job.modulusBits / 8);
  const data = Buffer.from(job.data.buffer, job.data.byteOffset, job.data.byteLength);
  if (data.length !== k) throw new P11Error(CKR.ENCRYPTED_DATA_LEN_RANGE, `ciphertext of ${data.length} bytes, expected ${k}`);
  switch (job.scheme) {
    case DecryptScheme.RAW:
      return rawDecrypt(job.key, data);
    case DecryptScheme.PKCS1: {
      // Node 20 refuses RSA_PKCS1_PADDING decryption (Marvin); decode type 2 here and
      // answer every malformed block with the same error, scanning the whole block.
      const em = rawDecrypt(job.key, data);
      let sep = 0, bad = em[0] | (em[1] ^ 2);
      for (let i = 2; i < em.length; i++) {
        const isZero = em[i] === 0 ? 1 : 0;
        if (sep === 0 && isZero) sep = i;
      }
      bad |= sep === 0 || sep < 10 ? 1 : 0;
      if (bad) throw new P11Error(CKR.ENCRYPTED_DATA_INVALID, 'PKCS#1 v1.5 padding check failed');
      return em.subarray(sep + 1);
    }
    case DecryptScheme.OAEP: {
      const hash = hashName(job.hash, 'OAEP hash');
      if (job.mgfHash !== job.hash) throw new P11Error(CKR.MECHANISM_PARAM_INVALID, 'OAEP with an MGF1 hash different from the label hash is not supported');
      try {
        return crypto.privateDecrypt({ key: job.key, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: hash, oaepLabel: job.oaepLabel.length ? Buffer.from(job.oaepLabel) : undefined }, data);
      } catch {
        throw new P11Error(CKR.ENCRYPTED_DATA_INVALID, 'OAEP decoding failed');
      }
    }
    default:
      throw new P11Error(CKR.MECHANISM_INVALID, `unknown decrypt scheme ${job.scheme}`);
  }
}

function rawDecrypt(key: KeyObject, data: Buffer): Buffer {
  try {
    return crypto.privateDecrypt({ key, padding: crypto.constants.RSA_NO_PADDING }, data);
  } catch {
    throw new P11Error(CKR.ENCRYPTED_DATA_INVALID, 'ciphertext is not below the modulus');
  }
}
