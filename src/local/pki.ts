// A small certificate authority for local mode and the tests: RSA keys from
// node:crypto (fast, native), certificates assembled with node-forge (which
// node:crypto cannot do). Never used for anything that reaches production.
import crypto from 'node:crypto';
import forge from 'node-forge';

export interface Issued { keyPem: string; certPem: string }
export interface CertAuthority extends Issued { name: string }

function rsaKey(bits: number): { keyPem: string; forgeKey: forge.pki.rsa.PrivateKey; forgePub: forge.pki.rsa.PublicKey } {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: bits });
  const keyPem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const forgeKey = forge.pki.privateKeyFromPem(keyPem) as forge.pki.rsa.PrivateKey;
  return { keyPem, forgeKey, forgePub: forge.pki.setRsaPublicKey(forgeKey.n, forgeKey.e) };
}

function serial(): string {
  // Positive, 16 bytes.
  const b = crypto.randomBytes(16);
  b[0] &= 0x7f;
  return b.toString('hex');
}

function sign(cert: forge.pki.Certificate, key: forge.pki.PrivateKey): string {
  cert.sign(key as forge.pki.rsa.PrivateKey, forge.md.sha256.create());
  return forge.pki.certificateToPem(cert);
}

export function createCA(name: string, bits = 2048): CertAuthority {
  const k = rsaKey(bits);
  const cert = forge.pki.createCertificate();
  cert.publicKey = k.forgePub;
  cert.serialNumber = serial();
  cert.validity.notBefore = new Date(Date.now() - 3600_000);
  cert.validity.notAfter = new Date(Date.now() + 10 * 365 * 86400_000);
  const attrs = [{ name: 'commonName', value: name }, { name: 'organizationName', value: 'nitro-acm local' }];
  cert.setSubject(attrs);
  cert.setIssuer(attrs);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  return { name, keyPem: k.keyPem, certPem: sign(cert, k.forgeKey) };
}

export interface LeafOptions { bits?: number; days?: number; commonName?: string }

/** A TLS server certificate for the given DNS names (first one is the CN), signed by `ca`. */
export function issueServerCert(ca: CertAuthority, dnsNames: string[], opts: LeafOptions = {}): Issued {
  const k = rsaKey(opts.bits ?? 2048);
  const caCert = forge.pki.certificateFromPem(ca.certPem);
  const cert = forge.pki.createCertificate();
  cert.publicKey = k.forgePub;
  cert.serialNumber = serial();
  cert.validity.notBefore = new Date(Date.now() - 3600_000);
  cert.validity.notAfter = new Date(Date.now() + (opts.days ?? 90) * 86400_000);
  cert.setSubject([{ name: 'commonName', value: opts.commonName ?? dnsNames[0] }]);
  cert.setIssuer(caCert.subject.attributes);
  cert.setExtensions([
    { name: 'basicConstraints', cA: false },
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
    { name: 'extKeyUsage', serverAuth: true },
    { name: 'subjectAltName', altNames: dnsNames.map((d) => (/^[0-9.]+$/.test(d) ? { type: 7, ip: d } : { type: 2, value: d })) },
  ]);
  return { keyPem: k.keyPem, certPem: sign(cert, forge.pki.privateKeyFromPem(ca.keyPem)) };
}
