// How the agent waits and retries: with backoff and jitter, never on an error the
// same request would get again, never on an enclave that cannot be reached (the
// health check replaces it); and a few things at a time.
import { log } from '../../shared/log.ts';
import { ProvisionError, PERMANENT_ERRORS } from '../../shared/provision-wire.ts';

/** Runs fn on every item, at most `limit` at a time. */
export async function eachLimited<T>(items: T[], limit: number, fn: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  const lane = async () => { while (next < items.length) await fn(items[next++]); };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
}

/** The enclave cannot be reached at all: waiting will not help, the health check starts another. */
export class EnclaveUnreachable extends Error {}

export async function withRetries<T>(what: string, attempts: number, fn: () => Promise<T>): Promise<T> {
  for (let i = 1; ; i++) {
    try { return await fn(); } catch (e) {
      if (i >= attempts || e instanceof EnclaveUnreachable || e instanceof ProvisionError && PERMANENT_ERRORS.has(e.code)) throw e;
      const delay = Math.min(30_000, 250 * 2 ** (i - 1)) * (0.5 + Math.random());
      log.warn(`${what}: ${(e as Error).message}; retrying in ${Math.round(delay)} ms (${i}/${attempts})`);
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}
