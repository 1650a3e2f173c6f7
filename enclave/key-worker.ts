// A key worker thread: serves the key-channel connections the main thread hands
// it, from its copy of the key store (a full copy when it starts, then the changes).
// When the main thread says the enclave holds too many connections, it closes the
// one of its own that has been quiet longest.
import { parentPort, workerData } from 'node:worker_threads';
import { socketFromFd, peerOf } from '../shared/transport.ts';
import { KeyView, type KeyStoreSnapshot, type KeyStoreDelta } from './keystore.ts';
import { serveKeyConnection, ReplyBudget } from './key-connection.ts';
import { PinThrottle } from './pin-throttle.ts';
import { ConnectionsByActivity } from './connections-by-activity.ts';
import { countOperation, emptyOperationStats, type TokenOperationStats } from '../shared/operation-stats.ts';
import { KeyType } from '../shared/key-wire.ts';
import { rsaKeyOf } from './rsa-ops.ts';
import { ecKeyOf } from './ec-ops.ts';
import { fullGc } from './heap-compaction.ts';

type Msg = { type: 'snapshot'; snapshot: KeyStoreSnapshot } | { type: 'delta'; delta: KeyStoreDelta } | { type: 'connection'; fd: number } | { type: 'evict' } | { type: 'stats'; id: number } | { type: 'compact' };

let view: KeyView | undefined;
const current = () => view!;
const connections = new ConnectionsByActivity();
// One PIN throttle for all workers (the main thread made its memory), one reply budget for this worker.
const pins = new PinThrottle((workerData as { pinThrottle: SharedArrayBuffer }).pinThrottle);
const replies = new ReplyBudget();
/** This worker's private-key operations per token since it started; the main thread adds every worker's up (KeyServer.operationStats). */
const stats = new Map<string, TokenOperationStats>();
const counted = (token: string, op: 'sign' | 'decrypt', ok: boolean, seconds: number) => {
  let s = stats.get(token);
  if (!s) stats.set(token, s = emptyOperationStats());
  countOperation(s, op, ok, seconds);
};

function describePeer(sock: ReturnType<typeof socketFromFd>): string | undefined {
  try {
    const p = peerOf(sock);
    return p.family === 'unix' ? `uid ${p.uid}` : `cid ${p.cid}`;
  } catch { return undefined; }
}

/**
 * Keys new to this worker, parsed into the addon before their first signature:
 * a parse costs about as much as a signature, and the first signature is the agent's
 * challenge, on the path a token takes to serving. A few milliseconds' worth at a
 * time, so a connection's request waits at most that long behind them.
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
    const k = toPrepare[i];
    try { if (k.keyType === KeyType.EC) ecKeyOf(k.privateKey); else rsaKeyOf(k.privateKey); } catch { /* its first signature reports it */ }
  }
  toPrepare = toPrepare.slice(i);
  if (toPrepare.length) setImmediate(prepareSome);
  else preparing = false;
}

// The main thread waits for 'applied' before it answers the provisioning request
// that made the change (enclave/key-server.ts, settled()).
const applied = () => parentPort!.postMessage({ type: 'applied', generation: view!.generation });

parentPort!.on('message', (m: Msg) => {
  if (m.type === 'snapshot') { view = new KeyView(m.snapshot); applied(); prepareNewKeys(m.snapshot.keys); return; }
  if (m.type === 'delta') { view = view!.apply(m.delta); applied(); prepareNewKeys(m.delta.addKeys); return; }
  if (m.type === 'evict') { connections.closeIdlest(); return; }
  if (m.type === 'compact') { fullGc?.(); parentPort!.postMessage({ type: 'compacted' }); return; }
  if (m.type === 'stats') {
    // A token gone from the store takes its counts along (labels come and go; the map must not grow without end).
    for (const label of stats.keys()) if (!view!.hasToken(label)) stats.delete(label);
    parentPort!.postMessage({ type: 'stats', id: m.id, stats: Object.fromEntries(stats) });
    return;
  }
  const sock = socketFromFd(m.fd);
  connections.track(sock);
  sock.on('close', () => parentPort!.postMessage({ type: 'closed' }));
  serveKeyConnection(sock, current, { pins, replies, peer: describePeer(sock), counted });
});
parentPort!.postMessage({ type: 'ready' });
