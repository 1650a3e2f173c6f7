// What only local mode (development, tests) runs in the enclave app: the
// simulated NSM, tokens loaded from plaintext files, an extra CA for the local
// cloud's KMS. enclave/main.ts loads this file only outside the production image,
// which is built without it (scripts/build-eif.ts): no simulated NSM and no
// plaintext-key loader exist in a real enclave to be switched on.
import fs from 'node:fs';
import { X509Certificate } from 'node:crypto';
import path from 'node:path';
import { log } from '../shared/log.ts';
import { KeyMaterialError, type KeyStore } from './keystore.ts';
import { SimulatedNsm, simulatedNsmRoot } from './nsm-simulated.ts';
import type { Nsm } from './nsm.ts';

interface PlaintextTokenFile { tokens: { label: string; pin: string; key: string; certificate: string; chain?: string }[] }

export function loadPlaintextTokens(store: KeyStore, file: string): void {
  let parsed: PlaintextTokenFile;
  try { parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as PlaintextTokenFile; } catch (e) { throw new Error(`${file}: ${(e as Error).message}`); }
  if (!Array.isArray(parsed?.tokens)) throw new Error(`${file}: expected {"tokens": [...]}`);
  const dir = path.dirname(file);
  const read = (p: string) => fs.readFileSync(path.resolve(dir, p), 'utf8');
  parsed.tokens.forEach((t, i) => {
    const where = `${file}: tokens[${i}]`;
    for (const f of ['label', 'pin', 'key', 'certificate'] as const) {
      if (typeof t[f] !== 'string' || t[f] === '') throw new Error(`${where}.${f}: expected a non-empty string`);
    }
    try {
      store.put(t.label, Buffer.from(t.pin), { privateKeyPem: read(t.key), certificatePem: read(t.certificate), chainPem: t.chain ? read(t.chain) : '' });
    } catch (e) {
      throw new Error(`${where} (${t.label}): ${e instanceof KeyMaterialError ? e.message : (e as Error).message}`);
    }
    log.token(t.label).info('token loaded from plaintext files (local mode)');
  });
}

/** The simulated NSM of --nsm-sim-dir and its other --nsm-sim-* options. */
export function simulatedNsm(o: { dir: string; roleArn?: string; instanceId?: string; debug: boolean; signingCertFile?: string }): Nsm {
  return new SimulatedNsm({
    pki: simulatedNsmRoot(o.dir), roleArn: o.roleArn, instanceId: o.instanceId, debug: o.debug,
    // PCR8 measures the DER of the image's signing certificate.
    signingCertificate: o.signingCertFile ? new X509Certificate(fs.readFileSync(o.signingCertFile)).raw : undefined,
  });
}
