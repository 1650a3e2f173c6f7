// nitro-acm status: the running agent's view of every token, from its control socket.
import fs from 'node:fs';
import { controlCall, DEFAULT_CONTROL_SOCKET, LOCAL_CONTROL_SOCKET } from '../agent/control.ts';
import type { AgentStatusReport } from '../agent/control.ts';
import { latencyQuantile, type TokenOperationStats } from '../../shared/operation-stats.ts';

export type StatusReport = AgentStatusReport & { socket: string };

/** The production agent's socket, else a local-mode agent's, else the production path (for its error). */
export function findControlSocket(): string {
  if (process.env.NITRO_ACM_CONTROL_SOCKET) return DEFAULT_CONTROL_SOCKET;
  for (const p of [DEFAULT_CONTROL_SOCKET, LOCAL_CONTROL_SOCKET]) if (fs.existsSync(p)) return p;
  return DEFAULT_CONTROL_SOCKET;
}

export async function readStatus(socket: string): Promise<StatusReport> {
  return { ...(await controlCall(socket, 'status')), socket };
}

function ago(iso: string | undefined, now: number): string {
  if (!iso) return 'never';
  const s = Math.round((now - Date.parse(iso)) / 1000);
  return s < 120 ? `${s} s ago` : s < 7200 ? `${Math.round(s / 60)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
}

function daysLeft(iso: string, now: number): string {
  const d = (Date.parse(iso) - now) / 86400_000;
  return d < 0 ? 'EXPIRED' : `${Math.floor(d)} days left`;
}

function attestationLines(a: StatusReport['enclave']['attestation'], now: number): string[] {
  const last = a?.last;
  if (!last) return ['attestation: not checked yet'];
  const counts = `${a!.passed} passed, ${a!.failed} failed since the agent started`;
  if (last.ok) return [`attestation: verified ${ago(last.checkedAt, now)} (fresh nonce, chain, PCR${Object.keys(last.pcrs ?? {}).join('/')} as the image; ${counts})`];
  return [`attestation: FAILED ${ago(last.checkedAt, now)} (${counts}); no key goes into this enclave:`, ...last.failures.map((f) => `  ${f}`)];
}

/** Seconds as a short duration: 250 us, 2.5 ms. */
function short(seconds: number): string {
  return seconds === Infinity ? 'more than 100 ms' : seconds < 0.001 ? `${Math.round(seconds * 1e6)} us` : `${+(seconds * 1000).toFixed(1)} ms`;
}

function operationsLine(o: TokenOperationStats): string {
  const p50 = latencyQuantile(o, 0.5), p99 = latencyQuantile(o, 0.99);
  return `  operations   ${o.sign.ok} signatures${o.sign.failed ? ` (${o.sign.failed} failed)` : ''}, ${o.decrypt.ok} decryptions${o.decrypt.failed ? ` (${o.decrypt.failed} failed)` : ''}${p50 === undefined ? '' : `; p50 <= ${short(p50)}, p99 <= ${short(p99!)}`} (since the enclave started)`;
}

export function formatStatus(r: StatusReport, now = Date.now()): string {
  const e = r.enclave;
  const lines = [`agent: ${r.configFile} (${r.socket})`,
    ...(r.webServer?.reloadPending ? [`web server: LAST RELOAD FAILED (${r.webServer.error}); retrying`] : []),
    e.reachable ? `enclave: healthy, ${e.health!.tokens} token(s), NSM ${e.health!.nsm}${e.health!.localMode ? ', LOCAL MODE' : ''}${e.health!.memory ? `, ${e.health!.memory.rssMiB} MiB resident` : ''} (${e.provisionAddress})` : `enclave: NOT REACHABLE: ${e.error}`,
    ...attestationLines(e.attestation, now),
    ...(r.counters ? [`since the agent started: ${r.counters.enclaveRestarts} enclave restart(s), ${r.counters.reloads} web-server reload(s)${r.counters.reloadFailures ? `, ${r.counters.reloadFailures} FAILED` : ''}`] : [])];
  for (const t of r.tokens) {
    lines.push('', `${t.label}: ${t.state.toUpperCase()}${t.inEnclave ? '' : ' (not in the enclave)'}`);
    if (t.subject) {
      lines.push(`  certificate  ${t.subject}`, `  names        ${t.sans!.join(', ') || '(none)'}`, `  not after    ${t.notAfter} (${daysLeft(t.notAfter!, now)})`, `  key          ${t.keyType}`);
    }
    lines.push(`  source       ${t.source}`, `  target       ${t.target}`, ...(t.uris ?? []).map((u, i) => `  ${i ? '            ' : 'uri         '} ${u}`), `  last sync    ${ago(t.lastSync, now)}`, `  last refresh ${ago(t.lastRefresh, now)}${t.enclaveRefreshedAt ? ` (enclave: ${ago(t.enclaveRefreshedAt, now)})` : ''}`);
    if (t.operations) lines.push(operationsLine(t.operations));
    if (t.retiredKeys) lines.push(`  old keys     ${t.retiredKeys} in their grace period`);
    if (t.error) lines.push(`  last error   ${t.error}`);
  }
  return lines.join('\n') + '\n';
}

/** Exit status for scripts: 0 all serving, the enclave healthy and attested, and the last reload good; 1 otherwise. */
export function statusExitCode(r: StatusReport): number {
  return r.enclave.reachable && r.enclave.attestation?.last?.ok === true && !r.webServer?.reloadPending && r.tokens.every((t) => t.state === 'serving' && t.inEnclave) ? 0 : 1;
}
