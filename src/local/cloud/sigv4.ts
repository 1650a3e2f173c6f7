// Signature Version 4 verification for the local cloud: a request real AWS would
// refuse (no signature, a wrong one, a stale date, a body that is not the one
// signed, a session token that is not the key's) is refused here too, which also
// catches client bugs before they meet AWS. Follows AWS's documented algorithm:
// canonical request, string to sign, and the HMAC chain of date, region, service.
import crypto from 'node:crypto';
import type http from 'node:http';

export interface SigningKey { secretAccessKey: string; sessionToken?: string }

export class SignatureError extends Error {
  constructor(readonly code: 'MissingAuthenticationToken' | 'IncompleteSignature' | 'InvalidAccessKeyId' | 'SignatureDoesNotMatch' | 'RequestTimeTooSkewed' | 'InvalidToken' | 'XAmzContentSHA256Mismatch', message: string) { super(message); }
}

const MAX_SKEW_MS = 15 * 60 * 1000;

/** RFC 3986 encoding, as SigV4 wants it (encodeURIComponent leaves !'()* alone). */
const rfc3986 = (s: string) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
const hmac = (key: crypto.BinaryLike, data: string) => crypto.createHmac('sha256', key).update(data).digest();
const sha256hex = (data: crypto.BinaryLike) => crypto.createHash('sha256').update(data).digest('hex');

function canonicalQuery(raw: string): string {
  if (!raw) return '';
  const pairs = raw.split('&').filter(Boolean).map((p) => {
    const eq = p.indexOf('=');
    const k = decodeURIComponent((eq < 0 ? p : p.slice(0, eq)).replace(/\+/g, '%20'));
    const v = eq < 0 ? '' : decodeURIComponent(p.slice(eq + 1).replace(/\+/g, '%20'));
    return [rfc3986(k), rfc3986(v)] as const;
  });
  pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  return pairs.map(([k, v]) => `${k}=${v}`).join('&');
}

/**
 * The path as SigV4 canonicalises it: S3 signs the path as sent; every other
 * service encodes each (already encoded) segment once more.
 */
function canonicalPath(rawPath: string, service: string): string {
  if (service === 's3') return rawPath || '/';
  return rawPath.split('/').map((seg) => rfc3986(seg)).join('/') || '/';
}

/**
 * Checks a request's SigV4 Authorization header against the secret of the key
 * it names; returns that access key id. `body` is the whole request body (for
 * services that sign its hash and for S3's x-amz-content-sha256).
 */
export function verifySigV4(req: http.IncomingMessage, body: Buffer, keyFor: (accessKeyId: string) => SigningKey | undefined, now = Date.now()): string {
  const auth = String(req.headers.authorization ?? '');
  if (!auth) throw new SignatureError('MissingAuthenticationToken', 'Request is missing Authentication Token');
  const m = /^AWS4-HMAC-SHA256 Credential=([^/,\s]+)\/(\d{8})\/([^/,\s]+)\/([^/,\s]+)\/aws4_request,\s*SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})$/.exec(auth);
  if (!m) throw new SignatureError('IncompleteSignature', 'Authorization header is not a complete AWS4-HMAC-SHA256 signature');
  const [, accessKeyId, day, region, service, signedHeaders, signature] = m;
  const key = keyFor(accessKeyId);
  if (!key) throw new SignatureError('InvalidAccessKeyId', 'The AWS Access Key Id you provided does not exist in our records.');
  const amzDate = String(req.headers['x-amz-date'] ?? '');
  const dm = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(amzDate);
  if (!dm || amzDate.slice(0, 8) !== day) throw new SignatureError('IncompleteSignature', 'X-Amz-Date is missing or does not match the credential scope');
  const at = Date.UTC(+dm[1], +dm[2] - 1, +dm[3], +dm[4], +dm[5], +dm[6]);
  if (Math.abs(now - at) > MAX_SKEW_MS) throw new SignatureError('RequestTimeTooSkewed', `The difference between the request time (${amzDate}) and the server's time is too large.`);
  const names = signedHeaders.split(';');
  if (!names.includes('host')) throw new SignatureError('IncompleteSignature', 'SignedHeaders must include host');
  if (key.sessionToken !== undefined && (req.headers['x-amz-security-token'] !== key.sessionToken || !names.includes('x-amz-security-token'))) {
    throw new SignatureError('InvalidToken', 'The security token included in the request is invalid.');
  }
  let payloadHash = sha256hex(body);
  if (service === 's3') {
    const declared = String(req.headers['x-amz-content-sha256'] ?? '');
    if (!declared) throw new SignatureError('IncompleteSignature', 'x-amz-content-sha256 is required for S3');
    if (declared !== 'UNSIGNED-PAYLOAD' && !declared.startsWith('STREAMING-') && declared !== payloadHash) {
      throw new SignatureError('XAmzContentSHA256Mismatch', 'The provided x-amz-content-sha256 header does not match what was computed.');
    }
    payloadHash = declared;
  }
  const url = req.url ?? '/';
  const q = url.indexOf('?');
  const headerLines = names.map((n) => {
    const v = req.headers[n];
    if (v === undefined) throw new SignatureError('IncompleteSignature', `signed header "${n}" is not in the request`);
    return `${n}:${(Array.isArray(v) ? v.join(',') : v).trim().replace(/\s+/g, ' ')}\n`;
  }).join('');
  const canonical = [req.method ?? 'GET', canonicalPath(q < 0 ? url : url.slice(0, q), service), canonicalQuery(q < 0 ? '' : url.slice(q + 1)), headerLines, signedHeaders, payloadHash].join('\n');
  const scope = `${day}/${region}/${service}/aws4_request`;
  const toSign = ['AWS4-HMAC-SHA256', amzDate, scope, sha256hex(canonical)].join('\n');
  const signingKey = hmac(hmac(hmac(hmac(`AWS4${key.secretAccessKey}`, day), region), service), 'aws4_request');
  const want = hmac(signingKey, toSign);
  if (!crypto.timingSafeEqual(want, Buffer.from(signature, 'hex'))) {
    throw new SignatureError('SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided.');
  }
  return accessKeyId;
}
