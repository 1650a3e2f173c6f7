// Private-key operations a token served, as the enclave app counts them (each key
// worker thread counts its own; the main thread adds them up) and the agent reads
// them with the provisioning channel's describe (docs/protocol.md) for
// `nitro-acm status` and its Prometheus metrics.

/** Upper bounds, in seconds, of the latency histogram's buckets (then +Inf): an RSA-2048 signature is ~1 ms, an ECDSA one ~20 us. */
export const LATENCY_BUCKETS_SECONDS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1] as const;

export interface OperationCounts { ok: number; failed: number }

export interface TokenOperationStats {
  sign: OperationCounts;
  decrypt: OperationCounts;
  /** Operations (signatures and decryptions, done or failed) per latency bucket, not cumulative: one count per LATENCY_BUCKETS_SECONDS entry, then one for longer. */
  latencyBuckets: number[];
  latencySumSeconds: number;
}

export function emptyOperationStats(): TokenOperationStats {
  return { sign: { ok: 0, failed: 0 }, decrypt: { ok: 0, failed: 0 }, latencyBuckets: new Array(LATENCY_BUCKETS_SECONDS.length + 1).fill(0), latencySumSeconds: 0 };
}

/** Counts one operation into `s`. */
export function countOperation(s: TokenOperationStats, op: 'sign' | 'decrypt', ok: boolean, seconds: number): void {
  s[op][ok ? 'ok' : 'failed']++;
  let i = 0;
  while (i < LATENCY_BUCKETS_SECONDS.length && seconds > LATENCY_BUCKETS_SECONDS[i]) i++;
  s.latencyBuckets[i]++;
  s.latencySumSeconds += seconds;
}

/** Adds `b` into `a` (one worker's counts into the enclave's). */
export function addOperationStats(a: TokenOperationStats, b: TokenOperationStats): void {
  for (const op of ['sign', 'decrypt'] as const) { a[op].ok += b[op].ok; a[op].failed += b[op].failed; }
  b.latencyBuckets.forEach((n, i) => { a.latencyBuckets[i] = (a.latencyBuckets[i] ?? 0) + n; });
  a.latencySumSeconds += b.latencySumSeconds;
}

/** The operations' latency quantile q (0..1), as the upper bound of the bucket it falls in; undefined with no operation. */
export function latencyQuantile(s: TokenOperationStats, q: number): number | undefined {
  const total = s.latencyBuckets.reduce((x, y) => x + y, 0);
  if (!total) return undefined;
  let seen = 0;
  for (let i = 0; i < s.latencyBuckets.length; i++) {
    seen += s.latencyBuckets[i];
    if (seen >= q * total) return i < LATENCY_BUCKETS_SECONDS.length ? LATENCY_BUCKETS_SECONDS[i] : Infinity;
  }
  return Infinity;
}
