// The agent's check that the enclave it talks to is the image it means to run,
// now: the enclave app answers a health request carrying a fresh random nonce
// with an NSM attestation document over it, and the agent verifies the COSE
// signature and the chain to the trusted root (the AWS Nitro root G1; in local
// mode only, the simulated NSM's root), the document's time, the nonce, that
// debug mode is off (its PCRs would be zero), and PCR0/1/2 (PCR8 for a signed
// image) against the image's measurements. A plain ping proves only that
// something answers on the port; this proves what answers.
import fs from 'node:fs';
import path from 'node:path';
import type { X509Certificate } from 'node:crypto';
import { verifyAttestation, AttestationError, type AttestationDocument } from '../../shared/attestation.ts';

/** What the enclave must prove it is. */
export interface ExpectedEnclave {
  /** PCR index -> the value the image measures to. */
  pcrs: Map<number, Buffer>;
  /** Where those values come from (a file, nitro-cli describe-eif, local mode's measurement), for messages. */
  source: string;
  roots: X509Certificate[];
  /** The root in words: "the AWS Nitro root G1", "local mode's simulated NSM root". */
  rootName: string;
}

/** One check's outcome; `failures` says each thing that did not hold, in words an operator can act on. */
export interface AttestationCheck {
  ok: boolean;
  /** When the agent checked (ISO 8601). */
  checkedAt: string;
  failures: string[];
  moduleId?: string;
  /** The document's own time (ISO 8601). */
  documentTime?: string;
  /** PCR index -> hex, the document's values for the PCRs checked. */
  pcrs?: Record<string, string>;
}

/** How far a document's time may be from the agent's clock (KMS accepts documents up to 5 minutes old). */
export const MAX_CLOCK_DIFFERENCE_MS = 5 * 60_000;

/** The PCRs a debug-mode enclave reports as zero (user guide: "attestation documents for enclaves in debug mode have PCRs of zeros"). */
const IMAGE_PCRS = [0, 1, 2];

/** Checks an attestation document (base64, as health returns it) against the nonce sent and what the image should measure. */
export function checkAttestation(documentBase64: string | undefined, nonce: Buffer, expected: ExpectedEnclave, now = Date.now()): AttestationCheck {
  const checkedAt = new Date(now).toISOString();
  if (!documentBase64) return { ok: false, checkedAt, failures: ['the enclave answered the health request without an attestation document (an enclave app older than this agent?)'] };
  let doc: AttestationDocument;
  try {
    doc = verifyAttestation(Buffer.from(documentBase64, 'base64'), { roots: expected.roots, at: new Date(now) });
  } catch (e) {
    const why = e instanceof AttestationError ? e.message : `unreadable: ${(e as Error).message}`;
    return { ok: false, checkedAt, failures: [`the attestation document does not verify against ${expected.rootName}: ${why}`] };
  }
  const failures: string[] = [];
  if (!doc.nonce || !doc.nonce.equals(nonce)) failures.push(`the document's nonce is ${doc.nonce ? doc.nonce.toString('hex').slice(0, 16) + '...' : 'absent'}, not the ${nonce.toString('hex').slice(0, 16)}... the agent sent (a replayed document)`);
  const skew = now - doc.timestamp;
  if (Math.abs(skew) > MAX_CLOCK_DIFFERENCE_MS) failures.push(`the document is dated ${new Date(doc.timestamp).toISOString()}, ${Math.round(Math.abs(skew) / 1000)} s ${skew > 0 ? 'before' : 'after'} the agent's clock (at most ${MAX_CLOCK_DIFFERENCE_MS / 1000} s)`);
  const zero = (b: Buffer | undefined) => b !== undefined && b.every((x) => x === 0);
  if (IMAGE_PCRS.every((i) => zero(doc.pcrs.get(i)))) failures.push('the enclave runs in debug mode (PCR0, PCR1 and PCR2 are zero): its console is readable from the parent; run it without --debug-mode');
  else {
    for (const [i, want] of [...expected.pcrs].sort((a, b) => a[0] - b[0])) {
      const got = doc.pcrs.get(i);
      if (!got) failures.push(`PCR${i} is absent from the document, expected ${want.toString('hex')} (${expected.source})`);
      else if (!got.equals(want)) failures.push(`PCR${i} is ${got.toString('hex')}, expected ${want.toString('hex')} (${expected.source})`);
    }
  }
  const pcrs = Object.fromEntries([...expected.pcrs.keys(), ...IMAGE_PCRS].filter((i, n, all) => all.indexOf(i) === n).sort((a, b) => a - b).flatMap((i) => (doc.pcrs.has(i) ? [[String(i), doc.pcrs.get(i)!.toString('hex')]] : [])));
  return { ok: failures.length === 0, checkedAt, failures, moduleId: doc.moduleId, documentTime: new Date(doc.timestamp).toISOString(), pcrs };
}

/** image-measurements.json (npm run build:eif): { Measurements: { PCR0, PCR1, PCR2, PCR8? } }. */
export const MEASUREMENTS_FILE = 'image-measurements.json';

/** PCRs from nitro-cli's Measurements object (build-enclave, describe-eif, image-measurements.json), checked; `what` names where it came from. */
export function pcrsFromMeasurements(m: unknown, what: string): Map<number, Buffer> {
  const o = (m ?? {}) as Record<string, unknown>;
  const pcrs = new Map<number, Buffer>();
  for (const k of ['PCR0', 'PCR1', 'PCR2', 'PCR8']) {
    const v = o[k];
    if (v === undefined && k === 'PCR8') continue; // only a signed image has one
    if (typeof v !== 'string' || !/^[0-9a-fA-F]{96}$/.test(v)) throw new Error(`${what}: Measurements.${k} is ${v === undefined ? 'missing' : JSON.stringify(v)}, expected 96 hex digits`);
    pcrs.set(Number(k.slice(3)), Buffer.from(v, 'hex'));
  }
  return pcrs;
}

/** The measurements file beside an enclave image, if there is one: its PCRs and its path. */
export function measurementsBeside(imagePath: string): { pcrs: Map<number, Buffer>; file: string } | undefined {
  const file = path.join(path.dirname(imagePath), MEASUREMENTS_FILE);
  let text: string;
  try { text = fs.readFileSync(file, 'utf8'); } catch { return undefined; }
  let json: { Measurements?: unknown };
  try { json = JSON.parse(text) as { Measurements?: unknown }; } catch (e) { throw new Error(`${file}: not JSON (${(e as Error).message})`); }
  return { pcrs: pcrsFromMeasurements(json.Measurements, file), file };
}
