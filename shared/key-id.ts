// CKA_ID of a key as nitro-acm's tokens show it: SHA-1 of the RSA modulus, or of
// an EC key's uncompressed public point (the convention of OpenSC and p11tool). The enclave sets it; the agent writes it into
// key URIs, so after a renewal the OpenSSL engine picks the new key even though it
// still remembers the old one under the same label.
import crypto, { type KeyObject } from 'node:crypto';

export function ckaIdOf(publicKey: KeyObject | string): Buffer {
  const jwk = (typeof publicKey === 'string' ? crypto.createPublicKey(publicKey) : publicKey).export({ format: 'jwk' });
  if (jwk.n) return crypto.createHash('sha1').update(Buffer.from(jwk.n, 'base64url')).digest();
  if (jwk.x && jwk.y) return crypto.createHash('sha1').update(Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x, 'base64url'), Buffer.from(jwk.y, 'base64url')])).digest();
  throw new Error(`a ${jwk.kty} key has no CKA_ID here (RSA and EC only)`);
}

/** The id= attribute of a PKCS#11 URI (RFC 7512): every byte percent-encoded. */
export function uriId(id: Buffer): string {
  return [...id].map((b) => `%${b.toString(16).padStart(2, '0')}`).join('');
}
