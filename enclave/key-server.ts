// The key channel's listener on the enclave app's main thread. It accepts
// connections and hands each to the key worker thread serving the fewest, where
// all of that connection's requests run (enclave/key-connection.ts). Workers get
// the key store's changes as they happen, and say when they have applied one:
// the provisioning channel answers only once every worker serves the change
// (settled()), so a web server reloaded right after a renewal finds the new key
// on whichever worker its connection is on.
//
// Connections are bounded by the open-file limit: at the limit, each new
// connection makes the worker with the most close the one that has been idle
// longest. A flood of idle connections therefore cannot lock out the web
// servers' modules, and an evicted module just reconnects on its next request.
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { listen, detachSocket } from '../shared/transport.ts';
import type { Address } from '../shared/address.ts';
import { log } from '../shared/log.ts';
import type { KeyStore, SentToWorkers } from './keystore.ts';
import { PinThrottle } from './pin-throttle.ts';
import { addOperationStats, emptyOperationStats, type TokenOperationStats } from '../shared/operation-stats.ts';
import { CompactAfterBurst, fullGc, type CompactionOptions } from './heap-compaction.ts';
import { KEY_WORKER_YOUNG_GENERATION_MIB } from './node-flags.ts';
import { native } from '../shared/native.ts';

export interface KeyServerOptions {
  /** Key worker threads; default: the CPUs the enclave has. */
  threads?: number;
  /** Connections held at once; default: what the open-file limit leaves room for, at most 4096. */
  maxConnections?: number;
  /**
   * Heap compaction after a burst of key-store changes (enclave/heap-compaction.ts);
   * `gc` is the main thread's collector (default: node's, when exposed; without one
   * there is no compaction). Workers use node's own, when exposed.
   */
  compaction?: CompactionOptions & { gc?: () => void };
  /**
   * Key workers failed to start this many times in a row (none became ready in
   * between): what to do then. Default: log it and stop the enclave app, which
   * the agent then restarts, rather than start workers that fail for ever.
   */
  onWorkersCannotStart?: (e: Error) => void;
}

/** Start failures in a row after which the key workers are given up. */
const WORKER_START_ATTEMPTS = 3;

/** File descriptors kept free for everything else (the provisioning channel, KMS, files, threads). */
const FD_RESERVE = 128;
/** Connections accepted beyond the limit while evictions are on their way; past this, new ones are closed at once. */
const EVICTION_SLACK = 32;

/** The soft RLIMIT_NOFILE (Node raises it to the hard limit at start). */
export function openFileLimit(): number {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
    if (m) return m[1] === 'unlimited' ? Infinity : Number(m[1]);
  } catch { /* not Linux */ }
  return 1024;
}

function defaultMaxConnections(): number {
  return Math.max(16, Math.min(4096, openFileLimit() - FD_RESERVE - EVICTION_SLACK));
}

interface Slot { worker: Worker; connections: number; ready: Promise<void>; /** The store generation this worker serves; undefined until its first snapshot. */ generation?: number }

/** a is b or later, for generations that count up modulo 2^32. */
const atOrAfter = (a: number, b: number) => ((a - b) >>> 0) < 0x80000000;

/** How long a provisioning reply waits for a busy worker before it goes anyway. */
const SETTLE_TIMEOUT_MS = 5000;

export class KeyServer {
  readonly server: net.Server;
  private slots: Slot[] = [];
  private closing = false;
  readonly maxConnections: number;
  private evicted = 0;
  private refused = 0;
  private lastLimitLog = 0;
  /** Shared by every worker, so PIN guesses are counted per token whichever worker takes them. */
  private readonly pinThrottle = new PinThrottle();
  private readonly compaction?: CompactAfterBurst;
  private startFailures = 0;
  private readonly onWorkersCannotStart?: (e: Error) => void;
  /** Compactions every worker has finished; and the workers yet to finish the latest one. */
  compactions = 0;
  private compactingWorkers = 0;

  constructor(private readonly store: KeyStore, opts: KeyServerOptions = {}) {
    const n = Math.max(1, opts.threads ?? os.availableParallelism());
    // Every change is broadcast in the turn it happens in, so between changes the
    // workers hold exactly what the store holds, which each worker's first snapshot has.
    this.sent = store.sentNow();
    for (let i = 0; i < n; i++) this.slots.push(this.spawn());
    this.onWorkersCannotStart = opts.onWorkersCannotStart;
    const gc = opts.compaction?.gc ?? fullGc;
    if (gc) this.compaction = new CompactAfterBurst((n) => this.compactHeaps(gc, n), opts.compaction);
    store.onChange(() => { this.broadcastSoon(); this.compaction?.changed(); });
    this.server = net.createServer({ pauseOnConnect: true }, (s) => this.dispatch(s));
    this.maxConnections = opts.maxConnections ?? defaultMaxConnections();
  }

  get threads(): number { return this.slots.length; }

  /** Connections the workers hold now. */
  get connections(): number { return this.slots.reduce((n, s) => n + s.connections, 0); }

  private spawn(): Slot {
    const url = new URL(`./key-worker${import.meta.url.endsWith('.ts') ? '.ts' : '.js'}`, import.meta.url);
    // From TypeScript sources (development, tests) a worker does not inherit the
    // parent's tsx loader, so it registers tsx itself before loading its module.
    const boot = url.pathname.endsWith('.ts')
      ? `import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(url.href)}); });`
      : `import(${JSON.stringify(url.href)});`;
    const worker = new Worker(boot, { eval: true, workerData: { pinThrottle: this.pinThrottle.shared }, resourceLimits: { maxYoungGenerationSizeMb: KEY_WORKER_YOUNG_GENERATION_MIB } });
    let ready!: () => void;
    let started = false;
    const slot: Slot = { worker, connections: 0, ready: new Promise((r) => { ready = () => { started = true; this.startFailures = 0; r(); }; }) };
    // Posted now, so it comes before any connection handed to this worker (messages
    // wait in the port until the worker listens).
    worker.postMessage({ type: 'snapshot', snapshot: this.store.snapshot() });
    worker.on('message', (m: { type: string; generation?: number; id?: number; stats?: Record<string, TokenOperationStats> }) => {
      if (m.type === 'ready') ready();
      else if (m.type === 'closed') slot.connections--;
      else if (m.type === 'applied') { slot.generation = m.generation; this.wakeSettled(); }
      else if (m.type === 'stats') this.statsReplies.get(m.id!)?.(m.stats ?? {});
      else if (m.type === 'compacted') this.workerCompacted();
    });
    worker.on('error', (e) => {
      if (this.closing) return;
      if (!started && ++this.startFailures >= WORKER_START_ATTEMPTS) {
        this.closing = true;
        (this.onWorkersCannotStart ?? ((err: Error) => { log.error(`${err.message}; stopping the enclave app`); process.exit(1); }))(
          new Error(`key worker threads cannot start (${this.startFailures} attempts in a row): ${e.message}`));
        return;
      }
      // Its connections die with it; their modules reconnect to another worker.
      log.error(`key worker failed: ${e.message}; starting another`);
      const i = this.slots.indexOf(slot);
      if (i >= 0) this.slots[i] = this.spawn();
    });
    return slot;
  }

  /** What every worker holds (a worker started later gets a full snapshot first; re-adding is harmless). */
  private sent: SentToWorkers;

  private settleWaiters: { generation: number; done: (settled: boolean) => void }[] = [];

  /**
   * Resolves once every worker serves the key store as it is now (true), or after
   * `timeoutMs` if one has not caught up (false, logged): a worker busy with a
   * burst of signatures takes the change after it.
   */
  settled(timeoutMs = SETTLE_TIMEOUT_MS): Promise<boolean> {
    const generation = this.store.generation;
    if (this.allAt(generation)) return Promise.resolve(true);
    return new Promise((resolve) => {
      const waiter = { generation, done: (ok: boolean) => { clearTimeout(timer); resolve(ok); } };
      const timer = setTimeout(() => {
        this.settleWaiters = this.settleWaiters.filter((w) => w !== waiter);
        log.warn(`key channel: a key worker has not taken the latest change after ${timeoutMs} ms; answering anyway (the module finds the change on its next request)`);
        waiter.done(false);
      }, timeoutMs);
      this.settleWaiters.push(waiter);
    });
  }

  private allAt(generation: number): boolean {
    return this.slots.every((s) => s.generation !== undefined && atOrAfter(s.generation, generation));
  }

  private wakeSettled(): void {
    const waiting = this.settleWaiters;
    this.settleWaiters = waiting.filter((w) => !this.allAt(w.generation));
    for (const w of waiting) if (!this.settleWaiters.includes(w)) w.done(true);
  }

  private statsReplies = new Map<number, (stats: Record<string, TokenOperationStats>) => void>();
  private nextStatsId = 1;

  /**
   * Each token's private-key operations since the enclave app started, every
   * worker's added up. A worker busy for longer than `timeoutMs` (a burst of
   * signatures) is left out of this answer rather than waited for.
   */
  async operationStats(timeoutMs = 1000): Promise<Map<string, TokenOperationStats>> {
    const answers = await Promise.all(this.slots.map((s) => new Promise<Record<string, TokenOperationStats>>((resolve) => {
      const id = this.nextStatsId++;
      const timer = setTimeout(() => { this.statsReplies.delete(id); resolve({}); }, timeoutMs);
      this.statsReplies.set(id, (stats) => { clearTimeout(timer); this.statsReplies.delete(id); resolve(stats); });
      s.worker.postMessage({ type: 'stats', id });
    })));
    const total = new Map<string, TokenOperationStats>();
    for (const a of answers) {
      for (const [label, st] of Object.entries(a)) {
        let t = total.get(label);
        if (!t) total.set(label, t = emptyOperationStats());
        addOperationStats(t, st);
      }
    }
    return total;
  }

  private compactStartRss = 0;
  private compactChanges = 0;
  private compactStart = 0;
  private compactMainMs = 0;
  /** One full collection here, then in every worker (each between its requests). */
  private compactHeaps(gc: () => void, changes: number): void {
    this.compactStartRss = process.memoryUsage.rss();
    this.compactChanges = changes;
    this.compactStart = performance.now();
    gc();
    this.compactMainMs = performance.now() - this.compactStart;
    this.compactingWorkers = this.slots.length;
    for (const s of this.slots) s.worker.postMessage({ type: 'compact' });
  }

  private workerCompacted(): void {
    if (this.compactingWorkers === 0 || --this.compactingWorkers > 0) return;
    this.compactions++;
    // The collections freed the burst's buffers; their pages go back only when asked.
    try { native().mallocTrim(); } catch { /* no addon (some tests): the V8 heaps are compacted all the same */ }
    const mib = (b: number) => Math.round(b / 1048576);
    log.info(`memory: compacted every thread's heap after ${this.compactChanges} key-store changes: resident ${mib(this.compactStartRss)} -> ${mib(process.memoryUsage.rss())} MiB in ${Math.round(performance.now() - this.compactStart)} ms (main thread paused ${Math.round(this.compactMainMs)} ms)`);
  }

  private broadcastPending = false;
  /**
   * Changes made in one turn of the event loop (provisioning requests finishing
   * together) go to the workers as one delta.
   */
  private broadcastSoon(): void {
    if (this.broadcastPending) return;
    this.broadcastPending = true;
    setImmediate(() => {
      this.broadcastPending = false;
      const delta = this.store.delta(this.sent);
      for (const s of this.slots) s.worker.postMessage({ type: 'delta', delta });
    });
  }

  private dispatch(sock: net.Socket): void {
    const held = this.connections;
    if (held >= this.maxConnections + EVICTION_SLACK) {
      // Evictions asked for have not happened yet: refuse rather than run out of descriptors.
      this.refused++;
      sock.destroy();
      this.logLimit(held);
      return;
    }
    if (held >= this.maxConnections) {
      let busiest = this.slots[0];
      for (const s of this.slots) if (s.connections > busiest.connections) busiest = s;
      busiest.worker.postMessage({ type: 'evict' });
      this.evicted++;
      this.logLimit(held);
    }
    let best = this.slots[0];
    for (const s of this.slots) if (s.connections < best.connections) best = s;
    let fd: number;
    try { fd = detachSocket(sock); } catch (e) {
      log.warn(`key channel: cannot hand over a connection: ${(e as Error).message}`);
      sock.destroy();
      return;
    }
    best.connections++;
    best.worker.postMessage({ type: 'connection', fd });
  }

  /** At most one line per 10 s while the limit is reached, with the counts since the start. */
  private logLimit(held: number): void {
    const now = Date.now();
    if (now - this.lastLimitLog < 10_000) return;
    this.lastLimitLog = now;
    log.warn(`key channel: ${held} connections, at its limit of ${this.maxConnections}: closing those idle longest (${this.evicted} closed, ${this.refused} refused so far)`);
  }

  async listen(address: Address): Promise<void> {
    await Promise.all(this.slots.map((s) => s.ready));
    // A deep backlog: a burst of connections (every web server worker reconnecting
    // at once, or a flood) waits in the kernel, not in a refused connect (EAGAIN).
    await listen(this.server, address, 4096);
    // Local mode: the web server's workers (another user) connect too; the PIN guards the keys.
    if (address.kind === 'unix') fs.chmodSync(address.path, 0o666);
  }

  async close(): Promise<void> {
    this.closing = true;
    this.compaction?.stop();
    for (const w of this.settleWaiters) w.done(false);
    this.settleWaiters = [];
    await new Promise<void>((r) => this.server.close(() => r()));
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}
