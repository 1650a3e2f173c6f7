// nitro-acm verify-attestation and nitro-acm pcrs: operator tools for attestation.
import fs from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { verifyAttestation, parseAttestation, awsNitroRoot, AttestationError } from '../../shared/attestation.ts';
import { pcrOf, pcrConditionKey } from '../../shared/pcr.ts';

/** Reads a document given as raw CBOR, hex or base64 text. */
export function readDocument(file: string): Buffer {
  const raw = fs.readFileSync(file);
  const text = raw.toString('latin1').trim();
  if (/^[0-9a-fA-F]+$/.test(text) && text.length % 2 === 0) return Buffer.from(text, 'hex');
  if (/^[A-Za-z0-9+/=\r\n]+$/.test(text)) return Buffer.from(text, 'base64');
  return raw;
}

export interface VerifyReport {
  file: string;
  verified: boolean;
  trustedBy: string;
  error?: string;
  moduleId?: string;
  timestamp?: string;
  checkedAt?: string;
  pcrs?: Record<string, string>;
  publicKey?: string | null;
  userData?: string | null;
  nonce?: string | null;
}

export function verifyAttestationFile(file: string, opts: { root?: string; at?: string }): VerifyReport {
  const roots = opts.root ? [new X509Certificate(fs.readFileSync(opts.root))] : [awsNitroRoot()];
  const trustedBy = opts.root ? `${opts.root} (${roots[0].fingerprint256})` : `AWS Nitro Enclaves root G1 (${roots[0].fingerprint256})`;
  const bytes = readDocument(file);
  let parsed;
  try { parsed = parseAttestation(bytes).doc; } catch (e) { return { file, verified: false, trustedBy, error: (e as Error).message }; }
  const at = opts.at === undefined ? new Date(parsed.timestamp) : opts.at === 'now' ? new Date() : new Date(opts.at);
  if (Number.isNaN(at.getTime())) throw new Error(`--at: "${opts.at}" is not a date (ISO 8601, or "now")`);
  const report: VerifyReport = {
    file, verified: false, trustedBy, moduleId: parsed.moduleId, timestamp: new Date(parsed.timestamp).toISOString(), checkedAt: at.toISOString(),
    pcrs: Object.fromEntries([...parsed.pcrs].map(([i, v]) => [`PCR${i}`, v.toString('hex')])),
    publicKey: parsed.publicKey?.toString('base64') ?? null, userData: parsed.userData?.toString('base64') ?? null, nonce: parsed.nonce?.toString('base64') ?? null,
  };
  try { verifyAttestation(bytes, { roots, at }); report.verified = true; } catch (e) {
    if (!(e instanceof AttestationError)) throw e;
    report.error = e.message;
  }
  return report;
}

export function formatVerifyReport(r: VerifyReport): string {
  const lines = [`${r.file}: ${r.verified ? 'VERIFIED' : 'NOT VERIFIED'} against ${r.trustedBy}${r.checkedAt ? ` at ${r.checkedAt}` : ''}`];
  if (r.error) lines.push(`  reason: ${r.error}`);
  if (r.moduleId) {
    lines.push(`  module id: ${r.moduleId}`, `  timestamp: ${r.timestamp}`);
    for (const [k, v] of Object.entries(r.pcrs ?? {})) if (!/^0+$/.test(v) || ['PCR0', 'PCR1', 'PCR2'].includes(k)) lines.push(`  ${k.padEnd(5)} ${v}`);
    const zero = Object.entries(r.pcrs ?? {}).filter(([k, v]) => /^0+$/.test(v) && !['PCR0', 'PCR1', 'PCR2'].includes(k)).map(([k]) => k);
    if (zero.length) lines.push(`  zero: ${zero.join(' ')}`);
    if (['PCR0', 'PCR1', 'PCR2'].every((k) => /^0+$/.test(r.pcrs?.[k] ?? '1'))) lines.push('  debug mode: PCR0-2 are all zero (an enclave started with --debug-mode)');
  }
  return lines.join('\n') + '\n';
}

export function pcrReport(roleArn?: string, instanceId?: string): { pcrs: Record<string, string>; condition: Record<string, Record<string, string>> } {
  const pcrs: Record<string, string> = {};
  if (roleArn) pcrs.PCR3 = pcrOf(roleArn).toString('hex');
  if (instanceId) pcrs.PCR4 = pcrOf(instanceId).toString('hex');
  const condition = { StringEqualsIgnoreCase: Object.fromEntries(Object.entries(pcrs).map(([k, v]) => [pcrConditionKey(Number(k.slice(3))), v])) };
  return { pcrs, condition };
}
