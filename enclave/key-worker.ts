// A key worker thread: serves the key-channel connections the main thread hands
// it, from its copy of the key store (a full copy when it starts, then the changes).
import { parentPort } from 'node:worker_threads';
import { socketFromFd } from '../src/shared/transport.ts';
import { KeyView, type KeyStoreSnapshot, type KeyStoreDelta } from './keystore.ts';
import { serveKeyConnection } from './key-connection.ts';

type Msg = { type: 'snapshot'; snapshot: KeyStoreSnapshot } | { type: 'delta'; delta: KeyStoreDelta } | { type: 'connection'; fd: number };

let view: KeyView | undefined;
const current = () => view!;

parentPort!.on('message', (m: Msg) => {
  if (m.type === 'snapshot') { view = new KeyView(m.snapshot); return; }
  if (m.type === 'delta') { view = view!.apply(m.delta); return; }
  const sock = socketFromFd(m.fd);
  sock.on('close', () => parentPort!.postMessage({ type: 'closed' }));
  serveKeyConnection(sock, current);
});
parentPort!.postMessage({ type: 'ready' });
