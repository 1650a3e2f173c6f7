// RSA private-key operations for the key server. Padding (PKCS#1 v1.5 type 1,
// EMSA-PSS, PKCS#1 v1.5 type 2 removal) is done here in plain code; the modular
// exponentiation itself is always node:crypto (OpenSSL, with blinding). These
// functions are synchronous: a key worker thread (enclave/key-worker.ts) calls
// them for the connections it serves, never the main thread's event loop.
import crypto, { type KeyObject } from 'node:crypto';
import { CKR, P11Error } from '../shared/pkcs11-rv.ts';
import { SignScheme, DecryptScheme, HASH_NAMES, HASH_LEN } from '../shared/key-wire.ts';

export interface SignJob { key: KeyObject; modulusBits: number; scheme: number; hash: number; mgfHash: number; saltLength: number; data: Uint8Array }
export interface DecryptJob { key: KeyObject; modulusBits: number; scheme: number; hash: number; mgfHash: number; oaepLabel: Uint8Array; data: Uint8Array }

function hashName(id: number, what: string): string {
  const n = HASH_NAMES[id];
  if (!n) throw new P11Error(CKR.MECHANISM_PARAM_INVALID, `unknown ${what} ${id}`);
  return n;
}

function mgf1(seed: Buffer, length: number, hash: string): Buffer {
  const out = Buffer.allocUnsafe(length);
  const block = Buffer.allocUnsafe(seed.length + 4);
  seed.copy(block, 0);
  let off = 0;
  for (let i = 0; off < length; i++) {
    block.writeUInt32BE(i, seed.length);
    // crypto.hash: one-shot, no Hash object per block (this runs on every PSS signature).
    off += crypto.hash(hash, block, 'buffer').copy(out, off);
  }
  return out;
}

function rawPrivate(key: KeyObject, em: Buffer): Buffer {
  try {
    return crypto.privateEncrypt({ key, padding: crypto.constants.RSA_NO_PADDING }, em);
  } catch (e) {
    // The only input-dependent failure is an integer not below the modulus.
    throw new P11Error(CKR.DATA_INVALID, `RSA operation refused the input: ${(e as Error).message}`);
  }
}

/** EMSA-PSS-ENCODE (RFC 8017 9.1.1) of an already computed digest, emBits = modBits - 1. */
function pssEncode(mHash: Buffer, modulusBits: number, hash: string, mgfHash: string, saltLength: number): Buffer {
  const hLen = mHash.length;
  const emBits = modulusBits - 1;
  const emLen = Math.ceil(emBits / 8);
  if (emLen < hLen + saltLength + 2) throw new P11Error(CKR.MECHANISM_PARAM_INVALID, `salt of ${saltLength} bytes does not fit a ${modulusBits}-bit key`);
  const salt = crypto.randomBytes(saltLength);
  const mPrime = Buffer.alloc(8 + hLen + saltLength); // 8 zero bytes || mHash || salt
  mHash.copy(mPrime, 8);
  salt.copy(mPrime, 8 + hLen);
  const h = crypto.hash(hash, mPrime, 'buffer');
  const db = Buffer.alloc(emLen - hLen - 1);
  db[db.length - saltLength - 1] = 0x01;
  salt.copy(db, db.length - saltLength);
  const mask = mgf1(h, db.length, mgfHash);
  for (let i = 0; i < db.length; i++) db[i] ^= mask[i];
  db[0] &= 0xff >> (8 * emLen - emBits);
  return Buffer.concat([db, h, Buffer.from([0xbc])]);
}

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
  switch (job.scheme) {
    case SignScheme.PKCS1: {
      if (data.length > k - 11) throw new P11Error(CKR.DATA_LEN_RANGE, `PKCS#1 v1.5 input of ${data.length} bytes exceeds ${k - 11} for this key`);
      const em = Buffer.alloc(k, 0xff);
      em[0] = 0; em[1] = 1; em[k - data.length - 1] = 0;
      data.copy(em, k - data.length);
      return rawPrivate(job.key, em);
    }
    case SignScheme.PSS: {
      const hash = hashName(job.hash, 'PSS hash');
      if (data.length !== HASH_LEN[job.hash]) throw new P11Error(CKR.DATA_LEN_RANGE, `PSS input of ${data.length} bytes is not a ${hash} digest`);
      return rawPrivate(job.key, toModulusLength(pssEncode(data, job.modulusBits, hash, hashName(job.mgfHash, 'MGF1 hash'), job.saltLength), k));
    }
    case SignScheme.RAW:
      if (data.length > k) throw new P11Error(CKR.DATA_LEN_RANGE, `raw RSA input of ${data.length} bytes exceeds the modulus (${k})`);
      return rawPrivate(job.key, toModulusLength(data, k));
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
