// The key channel's listener on the enclave app's main thread. It accepts
// connections and hands each to the key worker thread serving the fewest, where
// all of that connection's requests run (enclave/key-connection.ts). Workers get
// a new snapshot of the key store whenever it changes.
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { listen, detachSocket } from '../src/shared/transport.ts';
import type { Address } from '../src/shared/address.ts';
import { log } from '../src/shared/log.ts';
import type { KeyStore } from './keystore.ts';

export interface KeyServerOptions {
  /** Key worker threads; default: the CPUs the enclave has. */
  threads?: number;
  maxConnections?: number;
}

interface Slot { worker: Worker; connections: number; ready: Promise<void> }

export class KeyServer {
  readonly server: net.Server;
  private slots: Slot[] = [];
  private closing = false;

  constructor(private readonly store: KeyStore, opts: KeyServerOptions = {}) {
    const n = Math.max(1, opts.threads ?? os.availableParallelism());
    // Every change is broadcast as it happens, so between changes the workers hold
    // exactly the store's keys: the keys there now, which each worker's first snapshot has.
    this.sent = new Set(store.snapshot().keys.map((k) => k.keyId));
    for (let i = 0; i < n; i++) this.slots.push(this.spawn());
    store.onChange(() => this.broadcast());
    this.server = net.createServer({ pauseOnConnect: true }, (s) => this.dispatch(s));
    this.server.maxConnections = opts.maxConnections ?? 4096;
  }

  get threads(): number { return this.slots.length; }

  private spawn(): Slot {
    const url = new URL(`./key-worker${import.meta.url.endsWith('.ts') ? '.ts' : '.js'}`, import.meta.url);
    // From TypeScript sources (development, tests) a worker does not inherit the
    // parent's tsx loader, so it registers tsx itself before loading its module.
    const boot = url.pathname.endsWith('.ts')
      ? `import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(url.href)}); });`
      : `import(${JSON.stringify(url.href)});`;
    const worker = new Worker(boot, { eval: true });
    let ready!: () => void;
    const slot: Slot = { worker, connections: 0, ready: new Promise((r) => { ready = r; }) };
    worker.on('message', (m: { type: string }) => {
      if (m.type === 'ready') { worker.postMessage({ type: 'snapshot', snapshot: this.store.snapshot() }); ready(); }
      else if (m.type === 'closed') slot.connections--;
    });
    worker.on('error', (e) => {
      if (this.closing) return;
      // Its connections die with it; their modules reconnect to another worker.
      log.error(`key worker failed: ${e.message}; starting another`);
      const i = this.slots.indexOf(slot);
      if (i >= 0) this.slots[i] = this.spawn();
    });
    return slot;
  }

  /** Key ids every worker holds (a worker started later gets a full snapshot first; re-adding is harmless). */
  private sent: Set<number>;

  private broadcast(): void {
    const delta = this.store.delta(this.sent);
    for (const s of this.slots) s.worker.postMessage({ type: 'delta', delta });
  }

  private dispatch(sock: net.Socket): void {
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

  async listen(address: Address): Promise<void> {
    await Promise.all(this.slots.map((s) => s.ready));
    await listen(this.server, address);
    // Local mode: the web server's workers (another user) connect too; the PIN guards the keys.
    if (address.kind === 'unix') fs.chmodSync(address.path, 0o666);
  }

  async close(): Promise<void> {
    this.closing = true;
    await new Promise<void>((r) => this.server.close(() => r()));
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}
