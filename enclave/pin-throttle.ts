// Throttling of PIN guesses, shared by every key worker thread through one
// SharedArrayBuffer, so it holds per token across all connections and threads
// (a new connection every few guesses gains nothing), and per peer where the
// peer can be told apart (a unix peer's uid; over vsock every parent process is
// the same CID, so the token is what counts).
//
// After FREE_ATTEMPTS wrong PINs in a row, attempts on that token are admitted one
// at a time, spaced 100 ms apart, doubling with each further wrong PIN up to 5 s:
// at most one guess every 5 s per token, however many connections. An attempt that
// would have to wait more than MAX_WAIT_MS for its turn is refused at once without
// its PIN being checked (CKR_PIN_LOCKED). The cost: while someone guesses at a
// token, new logins to it wait or fail too (a guess and a login cannot be told
// apart before the PIN is checked); connections already logged in keep signing,
// and the counter forgets after QUIET_RESET_MS without a wrong PIN, or at once on
// a right one. A long PIN is the real defence (`agent --check` warns under 16).
//
// Slots are chosen by hashing the token label or peer: two sharing a slot only
// throttle each other sooner, never later.

const SLOTS = 4096;
export const FREE_ATTEMPTS = 3;
export const MAX_SPACING_MS = 5000;
export const MAX_WAIT_MS = 5000;
export const QUIET_RESET_MS = 60_000;

/** The gap between checked attempts after f wrong PINs in a row: 100 ms, doubling, at most 5 s. */
const spacing = (f: number) => Math.min(MAX_SPACING_MS, 100 * 2 ** (f - FREE_ATTEMPTS));

/** What an attempt may do: check its PIN after `waitMs`, or not at all. */
export type Admission = { waitMs: number } | 'locked';

export class PinThrottle {
  private readonly failures: Int32Array;
  /** When the next throttled attempt may be checked; also the last activity, for QUIET_RESET_MS. */
  private readonly nextAt: Float64Array;
  /** Guards a slot's read-modify-write (Float64Array has no atomic compare-exchange). */
  private readonly locks: Int32Array;

  constructor(readonly shared: SharedArrayBuffer = new SharedArrayBuffer(SLOTS * 16)) {
    this.nextAt = new Float64Array(shared, 0, SLOTS);
    this.failures = new Int32Array(shared, SLOTS * 8, SLOTS);
    this.locks = new Int32Array(shared, SLOTS * 12, SLOTS);
  }

  private slot(key: string): number {
    let h = 0x811c9dc5;
    for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
    return (h >>> 0) % SLOTS;
  }

  private locked<T>(i: number, fn: () => T): T {
    while (Atomics.compareExchange(this.locks, i, 0, 1) !== 0) { /* held for a few instructions by another thread */ }
    try { return fn(); } finally { Atomics.store(this.locks, i, 0); }
  }

  /** Reserves a turn for one attempt on every key (token, peer); the longest wait wins. */
  admit(keys: string[], now = Date.now()): Admission {
    let waitMs = 0;
    for (const key of keys) {
      const i = this.slot(key);
      const r = this.locked(i, (): Admission => {
        if (this.failures[i] > 0 && now - this.nextAt[i] > QUIET_RESET_MS) this.failures[i] = 0;
        const f = this.failures[i];
        if (f < FREE_ATTEMPTS) return { waitMs: 0 };
        const start = Math.max(now, this.nextAt[i]);
        if (start - now > MAX_WAIT_MS) return 'locked';
        this.nextAt[i] = start + spacing(f);
        return { waitMs: start - now };
      });
      if (r === 'locked') return r;
      waitMs = Math.max(waitMs, r.waitMs);
    }
    return { waitMs };
  }

  /** Records a checked attempt; returns the wrong PINs in a row now counted for the first key. */
  checked(keys: string[], ok: boolean, now = Date.now()): number {
    let first = 0;
    keys.forEach((key, n) => {
      const i = this.slot(key);
      const f = this.locked(i, () => {
        if (ok) this.failures[i] = 0;
        else {
          this.failures[i]++;
          // The next attempt waits its spacing from this wrong one at least.
          this.nextAt[i] = Math.max(this.nextAt[i], this.failures[i] >= FREE_ATTEMPTS ? now + spacing(this.failures[i]) : now);
        }
        return this.failures[i];
      });
      if (n === 0) first = f;
    });
    return first;
  }
}
