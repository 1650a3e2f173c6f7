// ECDSA for the key server: the input is a digest the client computed (PKCS#11
// CKM_ECDSA; the module hashes for CKM_ECDSA_SHA*), the signature r||s. The
// signing is OpenSSL's, through the native addon (node:crypto's sign always
// hashes its input); each key is parsed into the addon once per worker thread
// (parsing costs ten times a signature).
import type { KeyObject } from 'node:crypto';
import { native, nativeKeyOf, type EcdsaKey } from '../shared/native.ts';
import { CKR, P11Error } from '../shared/pkcs11-rv.ts';
import { SignScheme } from '../shared/key-wire.ts';

const parsed = new WeakMap<KeyObject, EcdsaKey>();
/** The key parsed into the addon (once per worker): called ahead of the first signature by the key worker, else by ecdsaSign. */
export const ecKeyOf = (key: KeyObject) => nativeKeyOf(parsed, key, (der) => native().ecdsaKey(der));

export function ecdsaSign(key: KeyObject, scheme: number, data: Uint8Array): Buffer {
  if (scheme !== SignScheme.ECDSA) throw new P11Error(CKR.KEY_TYPE_INCONSISTENT, `sign scheme ${scheme} is not for an EC key`);
  if (data.length < 1 || data.length > 64) throw new P11Error(CKR.DATA_LEN_RANGE, `ECDSA input of ${data.length} bytes is not a digest (1..64 bytes)`);
  return native().ecdsaSignDigest(ecKeyOf(key), Buffer.from(data.buffer, data.byteOffset, data.byteLength));
}
