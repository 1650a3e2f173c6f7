// The running agent's control socket: a unix socket, root only (0600), speaking
// the provisioning channel's framed JSON (docs/protocol.md). `nitro-acm status`
// reads the agent's view of every token through it, and local mode's
// `nitro-acm local renew` asks for a renewal. Nothing secret ever crosses it.
import net from 'node:net';
import fs from 'node:fs';
import path from 'node:path';
import { listen } from '../shared/transport.ts';
import { ProvisionClient, ProvisionError, serveJsonFrames, PROVISION_VERSION } from '../shared/provision-wire.ts';
import { log } from '../shared/log.ts';

/** The agent's control socket; NITRO_ACM_CONTROL_SOCKET moves it (tests, a second agent). */
export const DEFAULT_CONTROL_SOCKET = process.env.NITRO_ACM_CONTROL_SOCKET || '/run/nitro-acm/agent.sock';
/** Where `nitro-acm local` (run as root) puts its control socket. */
export const LOCAL_CONTROL_SOCKET = '/run/nitro-acm/local/agent.sock';

export type ControlHandler = (args: Record<string, unknown>) => Promise<Record<string, unknown>>;

export interface ControlServer { path: string; close(): Promise<void> }

export async function startControlServer(socketPath: string, handlers: Record<string, ControlHandler>): Promise<ControlServer> {
  fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o755 });
  // A live agent already owns it: refuse rather than steal its socket.
  if (fs.existsSync(socketPath)) {
    const alive = await ProvisionClient.connect({ kind: 'unix', path: socketPath }, 500).then((c) => { c.close(); return true; }, () => false);
    if (alive) throw new Error(`another nitro-acm agent is running (it answers on ${socketPath})`);
  }
  const server = net.createServer((sock) => serveJsonFrames(sock, async (m) => {
    if (m.v !== PROVISION_VERSION) throw new ProvisionError('UnsupportedVersion', `control version ${String(m.v)}; this agent speaks ${PROVISION_VERSION}`);
    const h = typeof m.op === 'string' && Object.hasOwn(handlers, m.op) ? handlers[m.op] : undefined;
    if (!h) throw new ProvisionError('BadRequest', `unknown operation "${String(m.op)}" (expected ${Object.keys(handlers).join(', ')})`);
    return h(m);
  }, (op, message) => log.error(`control ${op}: ${message}`), (why) => log.warn(`control socket: dropping a client: ${why}`)));
  server.maxConnections = 16;
  const old = process.umask(0o177);
  try { await listen(server, { kind: 'unix', path: socketPath }); } finally { process.umask(old); }
  fs.chmodSync(socketPath, 0o600);
  return {
    path: socketPath,
    close: () => new Promise((r) => server.close(() => { fs.rmSync(socketPath, { force: true }); r(); })),
  };
}

/** One request to a running agent; a missing socket says how to start one. */
export async function controlCall<T = Record<string, unknown>>(socketPath: string, op: string, args: Record<string, unknown> = {}, timeoutMs = 30_000): Promise<T> {
  let c: ProvisionClient;
  try { c = await ProvisionClient.connect({ kind: 'unix', path: socketPath }, 2000); } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' || code === 'ECONNREFUSED' ? 'no agent is running there (systemctl status nitro-enclaves-acm; or nitro-acm local)' : code === 'EACCES' ? 'permission denied (run as root)' : (e as Error).message;
    throw new Error(`${socketPath}: ${why}`);
  }
  try {
    // The frame's own fields (version, request id, ok) are the channel's business, not the answer's.
    const { v: _v, id: _id, ok: _ok, ...answer } = await c.call<Record<string, unknown>>(op, args, timeoutMs);
    return answer as T;
  } finally { c.close(); }
}
