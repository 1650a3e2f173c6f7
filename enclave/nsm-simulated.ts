// SimulatedNsm (local mode only): its own P-384 PKI shaped like the Nitro one
// (root -> intermediate -> short-lived signing certificate), PCR0/1/2 measured
// over this enclave app's own files so changed code gets different PCRs, PCR3 and
// PCR4 from the configured role ARN and instance id. In debug mode every PCR is
// zero, as on real Nitro. The production image is built without it.
import crypto, { X509Certificate, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { signAttestation } from '../shared/attestation.ts';
import { createCertificate } from '../shared/x509.ts';
import { pcrOf, PCR_LENGTH } from '../shared/pcr.ts';
import { NsmError, type Nsm, type AttestationRequest } from './nsm.ts';

const ENCLAVE_DIR = path.dirname(fileURLToPath(import.meta.url));

function filesUnder(dir: string, skip: (p: string) => boolean): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile())
    .map((e) => path.join(e.parentPath ?? e.path, e.name))
    .filter((p) => !skip(p))
    .sort();
}

/** SHA-384 over the paths (relative to `root`) and contents of the files, in a fixed order. */
function measure(files: string[], root: string): Buffer {
  const h = crypto.createHash('sha384');
  for (const f of files) {
    const content = fs.readFileSync(f);
    h.update(path.relative(root, f)).update('\0').update(String(content.length)).update('\0').update(content);
  }
  return h.digest();
}

/**
 * What the simulated NSM measures. PCR0 stands for the whole image (the enclave
 * app, the shared code it runs, its dependency lock), PCR1 for kernel and boot
 * (the Node runtime), PCR2 for the application alone.
 */
export function measureEnclaveApp(enclaveDir = ENCLAVE_DIR): { pcr0: Buffer; pcr1: Buffer; pcr2: Buffer } {
  // enclaveDir: where this code runs from (the sources, or a bundle of them such
  // as the benchmark's); the project is its parent.
  const projectDir = path.resolve(enclaveDir, '..');
  const built = (p: string) => p.includes(`${path.sep}build${path.sep}`) || p.includes(`${path.sep}node_modules${path.sep}`);
  const app = filesUnder(enclaveDir, built);
  const image = [...app, ...filesUnder(path.join(projectDir, 'shared'), built), ...['package-lock.json'].map((f) => path.join(projectDir, f)).filter((f) => fs.existsSync(f))];
  return {
    pcr0: pcrOf(measure(image, projectDir)),
    pcr1: pcrOf(`nitro-acm simulated kernel; node ${process.version} ${process.platform}-${process.arch}`),
    pcr2: pcrOf(measure(app, projectDir)),
  };
}

export interface SimulatedPki { rootCert: X509Certificate; rootKey: KeyObject }

/** The simulated NSM's root of trust, kept in `dir` (made on first use). Local mode only. */
export function simulatedNsmRoot(dir: string): SimulatedPki {
  const certFile = path.join(dir, 'nsm-root.pem');
  const keyFile = path.join(dir, 'nsm-root.key');
  if (!fs.existsSync(certFile) || !fs.existsSync(keyFile)) {
    fs.mkdirSync(dir, { recursive: true });
    const k = crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' });
    const cert = createCertificate({
      subject: { CN: `nitro-acm simulated NSM root ${crypto.randomBytes(4).toString('hex')}`, O: 'nitro-acm local', OU: 'local mode' },
      publicKey: k.publicKey, signingKey: k.privateKey, notBefore: new Date(Date.now() - 3600_000), notAfter: new Date(Date.now() + 10 * 365 * 86400_000), ca: true,
    });
    fs.writeFileSync(keyFile, k.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    fs.writeFileSync(certFile, cert.toString(), { mode: 0o644 });
  }
  return { rootCert: new X509Certificate(fs.readFileSync(certFile)), rootKey: crypto.createPrivateKey(fs.readFileSync(keyFile)) };
}

export interface SimulatedNsmOptions {
  pki: SimulatedPki;
  roleArn?: string;
  instanceId?: string;
  debug?: boolean;
  /** PCR8: SHA-384 over the signing certificate of a signed image, when there is one. */
  signingCertificate?: Buffer;
}

const LEAF_LIFETIME_MS = 3 * 3600_000; // like the real NSM's signing certificates

export class SimulatedNsm implements Nsm {
  readonly kind = 'simulated' as const;
  readonly pcrs: Map<number, Buffer>;
  readonly moduleId: string;
  private intermediate: { cert: X509Certificate; key: KeyObject };
  private leaf!: { cert: X509Certificate; key: KeyObject };

  constructor(private readonly o: SimulatedNsmOptions) {
    const instance = o.instanceId ?? 'i-0000000000000000';
    this.moduleId = `${instance}-enc${crypto.randomBytes(8).toString('hex')}`;
    this.pcrs = new Map();
    for (let i = 0; i < 16; i++) this.pcrs.set(i, Buffer.alloc(PCR_LENGTH));
    if (!o.debug) {
      const m = measureEnclaveApp();
      this.pcrs.set(0, m.pcr0).set(1, m.pcr1).set(2, m.pcr2);
      if (o.roleArn) this.pcrs.set(3, pcrOf(o.roleArn));
      if (o.instanceId) this.pcrs.set(4, pcrOf(o.instanceId));
      if (o.signingCertificate) this.pcrs.set(8, pcrOf(o.signingCertificate));
    }
    const ik = crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' });
    this.intermediate = {
      key: ik.privateKey,
      cert: createCertificate({ subject: { CN: `${this.moduleId}.simulated-zonal`, O: 'nitro-acm local' }, issuer: o.pki.rootCert, publicKey: ik.publicKey, signingKey: o.pki.rootKey, notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 30 * 86400_000), ca: true }),
    };
    this.renewLeaf();
  }

  private renewLeaf(): void {
    const k = crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' });
    this.leaf = {
      key: k.privateKey,
      cert: createCertificate({ subject: { CN: this.moduleId, O: 'nitro-acm local' }, issuer: this.intermediate.cert, publicKey: k.publicKey, signingKey: this.intermediate.key, notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + LEAF_LIFETIME_MS) }),
    };
  }

  attestation(req: AttestationRequest): Buffer {
    for (const [name, v] of Object.entries(req)) if (v && v.length > 1024) throw new NsmError(`${name} of ${v.length} bytes: the NSM takes at most 1024`);
    if (new Date(this.leaf.cert.validTo).getTime() - Date.now() < 30 * 60_000) this.renewLeaf();
    return signAttestation({
      moduleId: this.moduleId,
      digest: 'SHA384',
      timestamp: Date.now(),
      pcrs: this.pcrs,
      certificate: this.leaf.cert.raw,
      cabundle: [this.o.pki.rootCert.raw, this.intermediate.cert.raw],
      publicKey: req.publicKey ?? null,
      userData: req.userData ?? null,
      nonce: req.nonce ?? null,
    }, this.leaf.key);
  }

  describePcr(index: number): { locked: boolean; data: Buffer } {
    const data = this.pcrs.get(index);
    if (!data) throw new NsmError(`PCR${index} does not exist (0..15)`);
    return { locked: index < 16, data };
  }

  getRandom(): Buffer { return crypto.randomBytes(256); }

  describe(): { moduleId: string; digest: string; maxPcrs: number; lockedPcrs: number[] } {
    return { moduleId: this.moduleId, digest: 'SHA384', maxPcrs: 32, lockedPcrs: [...this.pcrs.keys()] };
  }
}
