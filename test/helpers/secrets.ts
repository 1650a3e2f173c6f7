// What a private key looks like in bytes, for scans that prove it is not somewhere.
import crypto from 'node:crypto';

export function keyNeedles(keyPem: string): { name: string; bytes: Buffer }[] {
  const key = crypto.createPrivateKey(keyPem);
  const jwk = key.export({ format: 'jwk' });
  const b64 = keyPem.replace(/-----[^-]+-----|\s/g, '');
  const needles = [
    { name: 'PEM body (first 64 chars)', bytes: Buffer.from(b64.slice(0, 64)) },
    { name: 'PKCS#8 DER', bytes: key.export({ type: 'pkcs8', format: 'der' }) },
    { name: 'PKCS#1 DER', bytes: key.export({ type: 'pkcs1', format: 'der' }) },
  ];
  for (const f of ['d', 'p', 'q', 'dp', 'dq', 'qi'] as const) {
    // Any 32-byte window of the component is enough to give it away; the middle one is checked.
    const v = Buffer.from(jwk[f]!, 'base64url');
    const mid = Math.floor(v.length / 2);
    needles.push({ name: `${f} (raw bytes)`, bytes: v.subarray(mid - 16, mid + 16) });
    needles.push({ name: `${f} (base64url)`, bytes: Buffer.from(jwk[f]!.slice(8, 48)) });
  }
  return needles;
}

/** Names of the needles found in the haystack. */
export function findSecrets(haystack: Buffer, needles: { name: string; bytes: Buffer }[]): string[] {
  return needles.filter((n) => haystack.includes(n.bytes)).map((n) => n.name);
}
