// Builds X.509 v3 certificates (DER) for RSA and EC keys with node:crypto doing
// the signing: local mode's demo CA and server certificates, the simulated NSM's
// P-384 PKI, and the tests. Only what those need: names of CN/O/OU/C, the usual
// extensions, SHA-256 (RSA) or SHA-384 (EC) signatures.
import crypto, { type KeyObject, X509Certificate } from 'node:crypto';
import { der, derOid } from './ber.ts';

export interface Name { CN: string; O?: string; OU?: string; C?: string }

export interface CertificateSpec {
  subject: Name;
  /** Issuer certificate; absent for a self-signed one. */
  issuer?: X509Certificate;
  /** The subject's public key. */
  publicKey: KeyObject;
  /** The issuer's private key (the subject's own for self-signed). */
  signingKey: KeyObject;
  notBefore: Date;
  notAfter: Date;
  ca?: boolean;
  /** CA path length constraint. */
  pathLength?: number;
  dnsNames?: string[];
  ipAddresses?: string[];
  serverAuth?: boolean;
}

const OIDS = { CN: '2.5.4.3', O: '2.5.4.10', OU: '2.5.4.11', C: '2.5.4.6' } as const;

function name(n: Name): Buffer {
  const rdns = (['C', 'O', 'OU', 'CN'] as const).filter((k) => n[k] !== undefined).map((k) =>
    der(0x31, der(0x30, derOid(OIDS[k]), k === 'C' ? der(0x13, Buffer.from(n[k]!)) : der(0x0c, Buffer.from(n[k]!, 'utf8')))));
  return der(0x30, ...rdns);
}

function time(d: Date): Buffer {
  const iso = d.toISOString().replace(/[-:T]/g, '').slice(0, 14) + 'Z'; // YYYYMMDDHHMMSSZ
  return d.getUTCFullYear() < 2050 ? der(0x17, Buffer.from(iso.slice(2))) : der(0x18, Buffer.from(iso));
}

function positiveInteger(b: Buffer): Buffer {
  let i = 0;
  while (i < b.length - 1 && b[i] === 0) i++;
  const v = b.subarray(i);
  return der(0x02, v[0] & 0x80 ? Buffer.concat([Buffer.from([0]), v]) : v);
}

function signatureAlgorithm(key: KeyObject): { alg: Buffer; hash: string } {
  if (key.asymmetricKeyType === 'rsa') return { alg: der(0x30, derOid('1.2.840.113549.1.1.11'), der(0x05)), hash: 'sha256' };
  if (key.asymmetricKeyType === 'ec') return { alg: der(0x30, derOid('1.2.840.10045.4.3.3')), hash: 'sha384' };
  throw new Error(`cannot sign certificates with a ${key.asymmetricKeyType} key`);
}

function keyId(publicKey: KeyObject): Buffer {
  // RFC 5280 4.2.1.2 method 1 would hash the BIT STRING only; any stable unique value is allowed.
  return crypto.createHash('sha1').update(publicKey.export({ type: 'spki', format: 'der' })).digest();
}

function extension(oid: string, critical: boolean, value: Buffer): Buffer {
  return der(0x30, derOid(oid), ...(critical ? [der(0x01, Buffer.from([0xff]))] : []), der(0x04, value));
}

function ipBytes(ip: string): Buffer {
  if (/^\d+\.\d+\.\d+\.\d+$/.test(ip)) return Buffer.from(ip.split('.').map(Number));
  throw new Error(`only IPv4 addresses are supported in certificates here, got ${ip}`);
}

export function createCertificate(s: CertificateSpec): X509Certificate {
  const { alg, hash } = signatureAlgorithm(s.signingKey);
  const serial = crypto.randomBytes(16);
  serial[0] &= 0x7f;
  const issuerKey = s.issuer ? s.issuer.publicKey : s.publicKey;
  const exts: Buffer[] = [];
  exts.push(extension('2.5.29.19', true, der(0x30, ...(s.ca ? [der(0x01, Buffer.from([0xff]))] : []), ...(s.ca && s.pathLength !== undefined ? [der(0x02, Buffer.from([s.pathLength]))] : []))));
  // keyUsage: CA -> keyCertSign|cRLSign; RSA leaf -> digitalSignature|keyEncipherment; EC leaf -> digitalSignature
  const leafUsage = s.publicKey.asymmetricKeyType === 'ec' ? der(0x03, Buffer.from([0x07, 0x80])) : der(0x03, Buffer.from([0x05, 0xa0]));
  exts.push(extension('2.5.29.15', true, s.ca ? der(0x03, Buffer.from([0x01, 0x06])) : leafUsage));
  if (s.serverAuth) exts.push(extension('2.5.29.37', false, der(0x30, derOid('1.3.6.1.5.5.7.3.1'))));
  const alt = [...(s.dnsNames ?? []).map((d) => der(0x82, Buffer.from(d))), ...(s.ipAddresses ?? []).map((ip) => der(0x87, ipBytes(ip)))];
  if (alt.length) exts.push(extension('2.5.29.17', false, der(0x30, ...alt)));
  exts.push(extension('2.5.29.14', false, der(0x04, keyId(s.publicKey))));
  exts.push(extension('2.5.29.35', false, der(0x30, der(0x80, keyId(issuerKey)))));
  const tbs = der(0x30,
    der(0xa0, der(0x02, Buffer.from([2]))),
    positiveInteger(serial),
    alg,
    s.issuer ? Buffer.from(issuerNameDer(s.issuer)) : name(s.subject),
    der(0x30, time(s.notBefore), time(s.notAfter)),
    name(s.subject),
    s.publicKey.export({ type: 'spki', format: 'der' }),
    der(0xa3, der(0x30, ...exts)),
  );
  const signature = crypto.sign(hash, tbs, s.signingKey);
  return new X509Certificate(der(0x30, tbs, alg, der(0x03, Buffer.concat([Buffer.from([0]), signature]))));
}

/** The issuer's subject Name exactly as encoded in its certificate (so chains match byte for byte). */
function issuerNameDer(issuer: X509Certificate): Buffer {
  // Certificate -> tbsCertificate -> [version, serial, sigAlg, issuer, validity, subject, ...]
  const raw = issuer.raw;
  const tlv = (b: Buffer, off: number) => {
    let len = b[off + 1], hdr = 2;
    if (len & 0x80) { const n = len & 0x7f; len = 0; for (let i = 0; i < n; i++) len = len * 256 + b[off + 2 + i]; hdr = 2 + n; }
    return { start: off, content: off + hdr, end: off + hdr + len };
  };
  const cert = tlv(raw, 0);
  const tbs = tlv(raw, cert.content);
  let off = tbs.content;
  for (let i = 0; i < 5; i++) off = tlv(raw, off).end; // version, serial, sigAlg, issuer, validity
  const subject = tlv(raw, off);
  return raw.subarray(subject.start, subject.end);
}
