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

type Msg = { type: 'snapshot'; snapshot: KeyStoreSnapshot } | { type: 'delta'; delta: KeyStoreDelta } | { type: 'connection'; fd: number } | { type: 'evict' };

let view: KeyView | undefined;
const current = () => view!;
const connections = new ConnectionsByActivity();
// One PIN throttle for all workers (the main thread made its memory), one reply budget for this worker.
const pins = new PinThrottle((workerData as { pinThrottle: SharedArrayBuffer }).pinThrottle);
const replies = new ReplyBudget();

function describePeer(sock: ReturnType<typeof socketFromFd>): string | undefined {
  try {
    const p = peerOf(sock);
    return p.family === 'unix' ? `uid ${p.uid}` : `cid ${p.cid}`;
  } catch { return undefined; }
}

// The main thread waits for 'applied' before it answers the provisioning request
// that made the change (enclave/key-server.ts, settled()).
const applied = () => parentPort!.postMessage({ type: 'applied', generation: view!.generation });

parentPort!.on('message', (m: Msg) => {
  if (m.type === 'snapshot') { view = new KeyView(m.snapshot); applied(); return; }
  if (m.type === 'delta') { view = view!.apply(m.delta); applied(); return; }
  if (m.type === 'evict') { connections.closeIdlest(); return; }
  const sock = socketFromFd(m.fd);
  connections.track(sock);
  sock.on('close', () => parentPort!.postMessage({ type: 'closed' }));
  serveKeyConnection(sock, current, { pins, replies, peer: describePeer(sock) });
});
parentPort!.postMessage({ type: 'ready' });
