// How much memory the enclave needs (acm.yaml enclave.memory_mib). Two limits:
// nitro-cli refuses to start an enclave with less than 4 times its image file
// (aws-nitro-enclaves-cli PR #198: the kernel needs room to unpack the initramfs;
// error E26 "Insufficient memory requested"), and once running the enclave holds
// its root filesystem (about the image's size) plus the app. The app's figures are
// measured by bench/agent.ts (docs/BENCHMARKS.md).
import fs from 'node:fs';

/** nitro-cli's floor: enclave memory >= this many times the EIF's size. */
export const EIF_MEMORY_RATIO = 4;
/** The enclave app's resident memory with no token (2 key worker threads), MiB. */
const APP_EMPTY_MIB = 85;
/**
 * ... and per token at the peak of provisioning (RSA-2048 with a one-CA chain),
 * KiB: 71-92 measured at 1,000 tokens with the heaps compacted every 128 changes
 * (up to 147 when it was every 256). Once provisioning is over the app settles at
 * about 50 (enclave/heap-compaction.ts), but memory_mib must cover the peak.
 */
const APP_PER_TOKEN_KIB = 124;
/** The enclave's kernel, page tables and a margin for bursts: a quarter on top. */
const HEADROOM = 1.25;

export interface MemoryNeed {
  eifMib: number;
  /** nitro-cli's minimum for this image. */
  floorMib: number;
  /** The root filesystem plus the app with this many tokens, with headroom. */
  runningMib: number;
  /** What to configure: the larger, rounded up to 64 MiB. */
  neededMib: number;
}

export function memoryNeed(eifBytes: number, tokens: number): MemoryNeed {
  const eifMib = eifBytes / 1048576;
  const floorMib = Math.ceil(eifMib * EIF_MEMORY_RATIO);
  const runningMib = Math.ceil((eifMib + APP_EMPTY_MIB + (tokens * APP_PER_TOKEN_KIB) / 1024) * HEADROOM);
  return { eifMib, floorMib, runningMib, neededMib: Math.ceil(Math.max(floorMib, runningMib) / 64) * 64 };
}

/** The EIF's size, or undefined when it is not there (then nothing can be said). */
export function eifSize(imagePath: string): number | undefined {
  try { return fs.statSync(imagePath).size; } catch { return undefined; }
}

/** A warning when memory_mib is below what the image and these tokens need; undefined when it is enough or the image is missing. */
export function memoryWarning(o: { memoryMib: number; imagePath: string; tokens: number }): string | undefined {
  const size = eifSize(o.imagePath);
  if (size === undefined) return undefined;
  const n = memoryNeed(size, o.tokens);
  if (o.memoryMib >= n.neededMib) return undefined;
  const why = o.memoryMib < n.floorMib
    ? `nitro-cli refuses less than ${EIF_MEMORY_RATIO} times the image (${n.eifMib.toFixed(0)} MiB: at least ${n.floorMib} MiB, error E26); the agent starts the enclave with ${n.neededMib} MiB instead`
    : `${o.tokens} token${o.tokens === 1 ? '' : 's'} need about ${n.runningMib} MiB with the image's ${n.eifMib.toFixed(0)} MiB in memory`;
  return `enclave.memory_mib is ${o.memoryMib}: ${why}. Set memory_mib: ${n.neededMib}, and at least as much in /etc/nitro_enclaves/allocator.yaml (then restart nitro-enclaves-allocator)`;
}

/** The memory to start the enclave with: memory_mib, raised to nitro-cli's floor for this image (AWS's example acm.yaml has 256). */
export function memoryToStart(memoryMib: number, imagePath: string): number {
  const size = eifSize(imagePath);
  if (size === undefined) return memoryMib;
  const n = memoryNeed(size, 0);
  return memoryMib < n.floorMib ? n.neededMib : memoryMib;
}
