// After a burst of key-store changes (tokens provisioned or renewed), one full
// garbage collection on every thread of the enclave app, once the store has been
// quiet for a moment. Provisioning leaves garbage on the main thread (KMS
// replies, attestation documents, CMS) and in every key worker (the store's
// changes); V8 keeps the heap it grew to until its own next major collection,
// which an idle enclave may not run for hours, while a Nitro enclave's memory is
// fixed. One collection after the burst gave back about a third of the enclave
// app's memory at 1,000 tokens (docs/BENCHMARKS.md). It pauses each thread for a
// few milliseconds, once per burst, not per change.

/** The collector, when node runs with --expose-gc (enclave/node-flags.ts); undefined otherwise. */
export const fullGc: (() => void) | undefined = (globalThis as { gc?: () => void }).gc;

export interface CompactionOptions {
  /** Changes since the last compaction that make a burst worth one. */
  minChanges?: number;
  /** How long the store must stay unchanged before compacting. */
  quietMs?: number;
  /** Changes after which to compact even while they go on, so a long burst's garbage does not pile up until its end. */
  maxChanges?: number;
}

export class CompactAfterBurst {
  private changes = 0;
  private timer?: NodeJS.Timeout;
  private readonly minChanges: number;
  private readonly quietMs: number;
  private readonly maxChanges: number;

  /** `compact` gets the number of changes it follows. */
  constructor(private readonly compact: (changes: number) => void, opts: CompactionOptions = {}) {
    this.minChanges = opts.minChanges ?? 16;
    this.quietMs = opts.quietMs ?? 2000;
    this.maxChanges = opts.maxChanges ?? 128;
  }

  /** One change to the key store. */
  changed(): void {
    this.changes++;
    if (this.changes < this.minChanges) return;
    if (this.changes >= this.maxChanges) { this.now(); return; }
    if (this.timer) { this.timer.refresh(); return; }
    this.timer = setTimeout(() => this.now(), this.quietMs);
    this.timer.unref();
  }

  private now(): void {
    this.stop();
    const n = this.changes;
    this.changes = 0;
    this.compact(n);
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}
