// The node flags the enclave app runs with, in the image (enclave/Dockerfile's
// CMD, which test/enclave-memory.test.ts holds to this list) and in local mode
// (src/local/enclave-process.ts).
//
// A Nitro enclave's memory is fixed at launch (memory_mib) and holds the root
// filesystem too, so resident memory is what counts here, not speed of
// allocation. Node's default young generation (16 MiB semi-spaces, grown under
// the allocation of a provisioning burst) and the old space grown for that
// burst's garbage stay resident afterwards: at 1,000 tokens they were half of
// the enclave app's memory (docs/BENCHMARKS.md, 2026-12-07 "memory").
// `--expose-gc` lets enclave/heap-compaction.ts give the burst's heap back once
// it is over.
export const ENCLAVE_NODE_FLAGS = ['--max-semi-space-size=1', '--expose-gc'] as const;

/** Each key worker's young generation, in MiB (V8 takes about three semi-spaces: 1 MiB each, as the main thread's). */
export const KEY_WORKER_YOUNG_GENERATION_MIB = 3;
