// A small certificate authority for local mode and the tests (RSA keys from
// node:crypto, certificates from shared/x509.ts). Never used for anything that
// reaches production.
import crypto, { X509Certificate } from 'node:crypto';
import { createCertificate } from '../../shared/x509.ts';

export interface Issued { keyPem: string; certPem: string }
export interface CertAuthority extends Issued { name: string }

function rsaKey(bits: number) {
  return crypto.generateKeyPairSync('rsa', { modulusLength: bits });
}

export function createCA(name: string, bits = 2048): CertAuthority {
  const k = rsaKey(bits);
  const cert = createCertificate({
    subject: { CN: name, O: 'nitro-acm local' }, publicKey: k.publicKey, signingKey: k.privateKey,
    notBefore: new Date(Date.now() - 3600_000), notAfter: new Date(Date.now() + 10 * 365 * 86400_000), ca: true,
  });
  return { name, keyPem: k.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), certPem: cert.toString() };
}

/** The key types ACM issues (and local mode makes): RSA (bits from `bits`), EC P-256 and P-384. */
export type LeafKeyType = 'rsa' | 'ec-p256' | 'ec-p384';
export interface LeafOptions { bits?: number; days?: number; commonName?: string; keyType?: LeafKeyType }

function leafKey(o: LeafOptions) {
  if (o.keyType === 'ec-p256' || o.keyType === 'ec-p384') return crypto.generateKeyPairSync('ec', { namedCurve: o.keyType === 'ec-p256' ? 'P-256' : 'P-384' });
  return rsaKey(o.bits ?? 2048);
}

/** A TLS server certificate for the given DNS names and IPv4 addresses (the first is the CN), signed by `ca`. */
export function issueServerCert(ca: CertAuthority, names: string[], opts: LeafOptions = {}): Issued {
  const k = leafKey(opts);
  const isIp = (n: string) => /^\d+\.\d+\.\d+\.\d+$/.test(n);
  const cert = createCertificate({
    subject: { CN: opts.commonName ?? names[0] },
    issuer: new X509Certificate(ca.certPem),
    publicKey: k.publicKey,
    signingKey: crypto.createPrivateKey(ca.keyPem),
    notBefore: new Date(Date.now() - 3600_000),
    notAfter: new Date(Date.now() + (opts.days ?? 90) * 86400_000),
    dnsNames: names.filter((n) => !isIp(n)),
    ipAddresses: names.filter(isIp),
    serverAuth: true,
  });
  return { keyPem: k.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(), certPem: cert.toString() };
}
