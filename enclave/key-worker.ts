// A key worker thread: serves the key-channel connections the main thread hands
// it, from its copy of the key store (a full copy when it starts, then the changes).
// The connections themselves are native (shared/native/native.c, "The key
// channel's connections"): that code reads and writes them on this thread's
// event loop and makes the signatures of logged-in connections with the keys
// registered with it here; the other requests come to enclave/key-connection.ts.
// When the main thread says the enclave holds too many connections, the worker
// closes the one of its own that has been quiet longest.
import { parentPort, workerData } from 'node:worker_threads';
import { KeyView, type KeyStoreSnapshot, type KeyStoreDelta } from './keystore.ts';
import { keyConnection } from './key-connection.ts';
import { PinThrottle } from './pin-throttle.ts';
import { addOperationStats, countOperation, emptyOperationStats, LATENCY_BUCKETS_SECONDS, type TokenOperationStats } from '../shared/operation-stats.ts';
import { KeyType } from '../shared/key-wire.ts';
import { native } from '../shared/native.ts';
import { log } from '../shared/log.ts';
import { rsaKeyOf } from './rsa-ops.ts';
import { ecKeyOf } from './ec-ops.ts';
import { fullGc } from './heap-compaction.ts';

type Msg = { type: 'snapshot'; snapshot: KeyStoreSnapshot } | { type: 'delta'; delta: KeyStoreDelta } | { type: 'connection'; fd: number } | { type: 'evict' } | { type: 'stats'; id: number } | { type: 'compact' };

/** Unsent reply bytes on one connection at which it stops being read until the client reads. */
const MAX_UNSENT_PER_CONNECTION = 256 * 1024;
/** The unsent bytes all of this worker's connections may hold together; over it, the one holding the most is closed. */
const MAX_UNSENT_TOTAL = 32 * 1024 * 1024;

let view: KeyView | undefined;
const current = () => view!;
// One PIN throttle for all workers (the main thread made its memory).
const pins = new PinThrottle((workerData as { pinThrottle: SharedArrayBuffer }).pinThrottle);
/** This worker's private-key operations per token since it started; the main thread adds every worker's up (KeyServer.operationStats). */
const stats = new Map<string, TokenOperationStats>();
const statsOf = (token: string) => {
  let s = stats.get(token);
  if (!s) stats.set(token, s = emptyOperationStats());
  return s;
};
const counted = (token: string, op: 'sign' | 'decrypt', ok: boolean, seconds: number) => countOperation(statsOf(token), op, ok, seconds);

/**
 * A number for each token identity (a token re-added under a new identity gets
 * another): the native code signs for a connection only with a key whose token
 * id the connection logged in to.
 */
const tokenIds = new Map<string, number>();
let nextTokenId = 1;
const tokenIdOf = (identity: string) => {
  let id = tokenIds.get(identity);
  if (id === undefined) tokenIds.set(identity, id = nextTokenId++ >>> 0);
  return id;
};

/** The native code's signature counts, into `stats` under each key's token (as `view` names it). */
function takeNativeStats(): void {
  for (const [keyId, signs, seconds, ...buckets] of native().kcTakeStats()) {
    const label = view?.key(keyId)?.tokenLabel;
    if (label === undefined) continue;
    addOperationStats(statsOf(label), { sign: { ok: signs, failed: 0 }, decrypt: { ok: 0, failed: 0 }, latencyBuckets: buckets, latencySumSeconds: seconds });
  }
}

/** Hands a parsed key to the native code, under its token's identity now; a key whose token is gone is not. */
function registerKey(k: KeyStoreSnapshot['keys'][number]): void {
  const identity = view?.identity(k.tokenLabel);
  if (identity === undefined || view?.key(k.keyId) !== k) return;
  native().kcAddKey(k.keyId, tokenIdOf(identity), k.keyType === KeyType.EC ? ecKeyOf(k.privateKey) : rsaKeyOf(k.privateKey));
}

/**
 * Keys new to this worker, parsed into the addon and registered with the native
 * code before their first signature: a parse costs about as much as a signature,
 * and the first signature is the agent's challenge, on the path a token takes to
 * serving. A few milliseconds' worth at a time, so a connection's request waits
 * at most that long behind them. Until then JavaScript signs with the key.
 */
let toPrepare: KeyStoreSnapshot['keys'] = [];
let preparing = false;
function prepareNewKeys(keys: KeyStoreSnapshot['keys']): void {
  if (!keys.length) return;
  toPrepare = toPrepare.length ? toPrepare.concat(keys) : keys.slice();
  if (!preparing) { preparing = true; setImmediate(prepareSome); }
}
function prepareSome(): void {
  const until = performance.now() + 2;
  let i = 0;
  for (; i < toPrepare.length && performance.now() < until; i++) {
    try { registerKey(toPrepare[i]); } catch { /* its first signature, in JavaScript, reports it */ }
  }
  toPrepare = toPrepare.slice(i);
  if (toPrepare.length) setImmediate(prepareSome);
  else preparing = false;
}

/** Applies a change: keys removed, and keys of tokens removed or re-added (a new identity), leave the native code first. */
function apply(next: KeyView, removeKeyIds: number[], removeTokens: string[]): void {
  // Counts are filed under the key's token as the current view names it: take them before its keys go.
  if (removeKeyIds.length || removeTokens.length) takeNativeStats();
  for (const id of removeKeyIds) native().kcRemoveKey(id);
  for (const label of removeTokens) {
    const identity = view?.identity(label);
    if (identity === undefined) continue;
    tokenIds.delete(identity);
    for (const k of view!.keysOf(label)) native().kcRemoveKey(k.keyId);
  }
  view = next;
  native().kcSetGeneration(view.generation);
  // The main thread waits for 'applied' before it answers the provisioning request
  // that made the change (enclave/key-server.ts, settled()).
  parentPort!.postMessage({ type: 'applied', generation: view.generation });
}

interface Served { frame(frame: Buffer): Promise<void> | void }
const served = new Map<number, Served>();

let droppedLogAt = 0, droppedSinceLog = 0;
native().kcInit(
  (connId, frame) => {
    const conn = served.get(connId);
    if (!conn) return false;
    const pending = conn.frame(frame);
    if (!pending) return false;
    pending.then(() => native().kcResume(connId), () => native().kcResume(connId));
    return true;
  },
  (connId, reason) => {
    served.delete(connId);
    parentPort!.postMessage({ type: 'closed' });
    if (!reason) return;
    // At most one line per 10 s: a flood of bad clients must not flood the log.
    droppedSinceLog++;
    const now = Date.now();
    if (now - droppedLogAt < 10_000) return;
    log.warn(`key channel: ${reason} (${droppedSinceLog} such since the last line)`);
    droppedLogAt = now;
    droppedSinceLog = 0;
  },
  MAX_UNSENT_PER_CONNECTION, MAX_UNSENT_TOTAL, LATENCY_BUCKETS_SECONDS,
);

function describePeer(fd: number): string | undefined {
  try {
    const p = native().peer(fd);
    return p.family === 'unix' ? `uid ${p.uid}` : `cid ${p.cid}`;
  } catch { return undefined; }
}

function serve(fd: number): void {
  const peer = describePeer(fd);
  let connId: number;
  try { connId = native().kcServe(fd); } catch (e) {
    log.warn(`key channel: cannot serve a connection: ${(e as Error).message}`);
    parentPort!.postMessage({ type: 'closed' });
    return;
  }
  served.set(connId, keyConnection({
    send: (head, body) => { native().kcSend(connId, head, body); },
    end: () => native().kcEnd(connId),
    loggedIn: (identity, on) => native().kcLogin(connId, tokenIdOf(identity), on),
  }, current, { pins, peer, counted }));
}

parentPort!.on('message', (m: Msg) => {
  if (m.type === 'snapshot') { apply(new KeyView(m.snapshot), [], []); prepareNewKeys(m.snapshot.keys); return; }
  if (m.type === 'delta') { apply(view!.apply(m.delta), m.delta.removeKeyIds, m.delta.removeTokens); prepareNewKeys(m.delta.addKeys); return; }
  if (m.type === 'evict') { native().kcCloseIdlest(); return; }
  if (m.type === 'compact') { fullGc?.(); parentPort!.postMessage({ type: 'compacted' }); return; }
  if (m.type === 'stats') {
    takeNativeStats();
    // A token gone from the store takes its counts along (labels come and go; the map must not grow without end).
    for (const label of stats.keys()) if (!view!.hasToken(label)) stats.delete(label);
    parentPort!.postMessage({ type: 'stats', id: m.id, stats: Object.fromEntries(stats) });
    return;
  }
  serve(m.fd);
});
parentPort!.postMessage({ type: 'ready' });
