// Worker threads for private-key operations, sized to the enclave's CPUs, so the
// event loop that serves both channels never waits on an RSA exponentiation.
import { Worker } from 'node:worker_threads';
import os from 'node:os';
import { P11Error, CKR } from '../src/shared/pkcs11-rv.ts';
import type { SignJob, DecryptJob } from './rsa-ops.ts';

interface Pending { resolve(b: Buffer): void; reject(e: Error): void }
interface Slot { worker: Worker; inFlight: number }

export class CryptoPool {
  private slots: Slot[] = [];
  private pending = new Map<number, Pending>();
  private seq = 0;
  private closing = false;

  constructor(size = os.availableParallelism()) {
    const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
    for (let i = 0; i < Math.max(1, size); i++) this.slots.push(this.spawn(new URL(`./crypto-worker${ext}`, import.meta.url)));
  }

  get size(): number { return this.slots.length; }

  private spawn(url: URL): Slot {
    // Running from TypeScript sources (development, tests), a worker does not get the
    // parent's tsx loader, so it registers tsx itself before loading the worker module.
    const boot = url.pathname.endsWith('.ts')
      ? `import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(url.href)}); });`
      : `import(${JSON.stringify(url.href)});`;
    const slot: Slot = { worker: new Worker(boot, { eval: true }), inFlight: 0 };
    slot.worker.unref();
    slot.worker.on('message', (m: { seq: number; ok?: Uint8Array; rv?: number; message?: string }) => {
      slot.inFlight--;
      const p = this.pending.get(m.seq);
      if (!p) return;
      this.pending.delete(m.seq);
      if (m.ok) p.resolve(Buffer.from(m.ok.buffer, m.ok.byteOffset, m.ok.byteLength));
      else p.reject(new P11Error(m.rv ?? CKR.GENERAL_ERROR, m.message ?? 'crypto worker failed'));
    });
    slot.worker.on('error', (e) => {
      // A worker that dies takes its jobs with it; fail them rather than hang the callers.
      if (this.closing) return;
      for (const [seq, p] of this.pending) { p.reject(new P11Error(CKR.DEVICE_ERROR, `crypto worker failed: ${e.message}`)); this.pending.delete(seq); }
      const i = this.slots.indexOf(slot);
      if (i >= 0) this.slots[i] = this.spawn(url);
    });
    return slot;
  }

  private run(kind: 'sign' | 'decrypt', job: SignJob | DecryptJob): Promise<Buffer> {
    let best = this.slots[0];
    for (const s of this.slots) if (s.inFlight < best.inFlight) best = s;
    const seq = ++this.seq;
    best.inFlight++;
    return new Promise((resolve, reject) => {
      this.pending.set(seq, { resolve, reject });
      best.worker.postMessage({ seq, kind, job });
    });
  }

  sign(job: SignJob): Promise<Buffer> { return this.run('sign', job); }
  decrypt(job: DecryptJob): Promise<Buffer> { return this.run('decrypt', job); }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}
