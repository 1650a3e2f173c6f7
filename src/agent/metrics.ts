// The agent's Prometheus metrics (prom-client's text exposition), served on
// options.metrics_address when acm.yaml sets one: what `nitro-acm status` shows,
// as numbers a scraper (Prometheus, the CloudWatch agent) can alert on. The
// enclave app counts each token's signatures and decryptions; the agent reads
// them with describe, at most once a second however often it is scraped.
import http from 'node:http';
import { Registry, Counter, Gauge, Histogram } from 'prom-client';
import { LATENCY_BUCKETS_SECONDS } from '../../shared/operation-stats.ts';
import { log } from '../../shared/log.ts';
import type { AgentStatus } from './token-status.ts';
import type { ListenAddress } from './config.ts';

/** What the agent counts itself, since it started (the enclave's counts come with its status). */
export interface AgentCounters { enclaveRestarts: number; reloads: number; reloadFailures: number }

const TOKEN_STATES = ['pending', 'serving', 'failed'] as const;
const seconds = (iso?: string) => (iso ? Date.parse(iso) / 1000 : undefined);

export class AgentMetrics {
  readonly registry = new Registry();
  /** How long each token took to go into the enclave and be checked, by operation. */
  readonly provisioning: Histogram<'operation'>;
  private snapshot?: { at: number; status: Promise<AgentStatus> };

  /**
   * `status` is the agent's view (Agent.status plus its counters); a scrape
   * within a second of the last one reuses it, so scraping cannot load the enclave.
   */
  constructor(private readonly status: () => Promise<AgentStatus>) {
    const r = this.registry;
    const current = () => {
      const now = Date.now();
      if (!this.snapshot || now - this.snapshot.at > 1000) this.snapshot = { at: now, status: this.status() };
      return this.snapshot.status as Promise<AgentStatus>;
    };
    const gauge = <L extends string>(name: string, help: string, labelNames: L[], fill: (g: Gauge<L>, s: AgentStatus) => void) =>
      new Gauge<L>({ name, help, labelNames, registers: [r], async collect() { this.reset(); fill(this, await current()); } });
    const counter = <L extends string>(name: string, help: string, labelNames: L[], fill: (c: Counter<L>, s: AgentStatus) => void) =>
      new Counter<L>({ name, help, labelNames, registers: [r], async collect() { this.reset(); fill(this, await current()); } });

    gauge('nitro_acm_enclave_up', '1 when the enclave app answers its health request, else 0.', [], (g, s) => g.set(s.enclave.reachable ? 1 : 0));
    counter('nitro_acm_enclave_restarts_total', 'Enclaves started again by the agent after the running one stopped answering.', [], (c, s) => c.inc(s.counters?.enclaveRestarts ?? 0));
    gauge('nitro_acm_attestation_check_ok', '1 when the last check of the enclave\'s fresh attestation passed, 0 when it failed (absent before the first).', [], (g, s) => { const l = s.enclave.attestation?.last; if (l) g.set(l.ok ? 1 : 0); });
    gauge('nitro_acm_attestation_check_timestamp_seconds', 'When the enclave\'s attestation was last checked (Unix time); its age is time() minus this.', [], (g, s) => { const t = seconds(s.enclave.attestation?.last?.checkedAt); if (t) g.set(t); });
    counter('nitro_acm_attestation_checks_total', 'Attestation checks of the enclave since the agent started, by result.', ['result'], (c, s) => {
      c.inc({ result: 'passed' }, s.enclave.attestation?.passed ?? 0);
      c.inc({ result: 'failed' }, s.enclave.attestation?.failed ?? 0);
    });
    counter('nitro_acm_web_server_reloads_total', 'Web-server reloads the agent made, by result.', ['result'], (c, s) => {
      c.inc({ result: 'ok' }, (s.counters?.reloads ?? 0) - (s.counters?.reloadFailures ?? 0));
      c.inc({ result: 'failed' }, s.counters?.reloadFailures ?? 0);
    });
    gauge('nitro_acm_token_state', '1 for the state each token is in (pending, serving, failed).', ['token', 'state'], (g, s) => {
      for (const t of s.tokens) for (const st of TOKEN_STATES) g.set({ token: t.label, state: st }, t.state === st ? 1 : 0);
    });
    gauge('nitro_acm_token_in_enclave', '1 when the enclave holds the token now.', ['token'], (g, s) => { for (const t of s.tokens) g.set({ token: t.label }, t.inEnclave ? 1 : 0); });
    gauge('nitro_acm_certificate_not_after_seconds', 'When the token\'s certificate expires (Unix time).', ['token'], (g, s) => { for (const t of s.tokens) { const v = seconds(t.notAfter); if (v) g.set({ token: t.label }, v); } });
    gauge('nitro_acm_token_last_sync_timestamp_seconds', 'When the token\'s source was last fetched successfully (Unix time).', ['token'], (g, s) => { for (const t of s.tokens) { const v = seconds(t.lastSync); if (v) g.set({ token: t.label }, v); } });
    gauge('nitro_acm_token_last_refresh_timestamp_seconds', 'When the token was last decrypted again in the enclave with a fresh attestation (Unix time).', ['token'], (g, s) => { for (const t of s.tokens) { const v = seconds(t.lastRefresh); if (v) g.set({ token: t.label }, v); } });
    counter('nitro_acm_operations_total', 'Private-key operations the enclave served for each token since it started, by operation (sign, decrypt) and result (ok, failed).', ['token', 'operation', 'result'], (c, s) => {
      for (const t of s.tokens) {
        const o = t.operations;
        if (!o) continue;
        for (const op of ['sign', 'decrypt'] as const) for (const result of ['ok', 'failed'] as const) c.inc({ token: t.label, operation: op, result }, o[op][result]);
      }
    });
    // The enclave sends its histogram's bucket counts; prom-client formats them.
    const durationName = 'nitro_acm_operation_duration_seconds';
    // prom-client formats each value under its own metricName (_bucket, _sum, _count), as its Histogram does.
    type Value = { metricName: string; labels: Record<string, string | number>; value: number };
    const duration = {
      name: durationName,
      help: 'How long the enclave took for each private-key operation of the token (signature or decryption), in seconds.',
      type: 'histogram',
      aggregator: 'sum',
      async get() {
        const s = await current();
        const values: Value[] = [];
        for (const t of s.tokens) {
          const o = t.operations;
          if (!o) continue;
          let cumulative = 0;
          LATENCY_BUCKETS_SECONDS.forEach((le, i) => { cumulative += o.latencyBuckets[i] ?? 0; values.push({ metricName: `${durationName}_bucket`, labels: { token: t.label, le }, value: cumulative }); });
          cumulative += o.latencyBuckets[LATENCY_BUCKETS_SECONDS.length] ?? 0;
          values.push({ metricName: `${durationName}_bucket`, labels: { token: t.label, le: '+Inf' }, value: cumulative });
          values.push({ metricName: `${durationName}_sum`, labels: { token: t.label }, value: o.latencySumSeconds });
          values.push({ metricName: `${durationName}_count`, labels: { token: t.label }, value: cumulative });
        }
        return { name: durationName, help: duration.help, type: 'histogram', values, aggregator: 'sum' };
      },
    };
    r.registerMetric(duration as unknown as Parameters<Registry['registerMetric']>[0]);
    this.provisioning = new Histogram({
      name: 'nitro_acm_provisioning_duration_seconds',
      help: 'How long one token took to go into the enclave (source fetched, key decrypted through KMS with attestation) and be checked through PKCS#11, by operation (add, update, refresh).',
      labelNames: ['operation'], buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers: [r],
    });
  }

  text(): Promise<string> { return this.registry.metrics(); }

  /** Serves GET /metrics on `address`; resolves with the URL once listening. */
  async serve(address: ListenAddress): Promise<{ url: string; close(): Promise<void> }> {
    const server = http.createServer((req, res) => {
      if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('nitro-acm serves GET /metrics only\n');
        return;
      }
      this.text().then((body) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(body), (e: Error) => {
        log.warn(`metrics: ${e.message}`);
        res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics unavailable\n');
      });
    });
    // A scraper needs one connection; these keep a flood from holding the agent's descriptors.
    server.maxConnections = 32;
    server.requestTimeout = 10_000;
    server.headersTimeout = 5_000;
    await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(address.port, address.host, () => { server.off('error', reject); resolve(); }); });
    const a = server.address() as { address: string; port: number };
    const url = `http://${a.address.includes(':') ? `[${a.address}]` : a.address}:${a.port}/metrics`;
    return { url, close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }) };
  }
}
