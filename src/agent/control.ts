// The running agent's control socket: a unix socket, root only (0600), speaking
// framed JSON (shared/json-frames.ts; docs/protocol.md) with its own
// operations, version and errors, defined once here (ControlOps) for the agent
// that serves them and the commands that ask. `nitro-acm status` and `doctor`
// read the agent's view of every token through it, and local mode's
// `nitro-acm local renew` asks for a renewal. Nothing secret ever crosses it.
import net from 'node:net';
import fs from 'node:fs';
import path from 'node:path';
import { listen, connect } from '../../shared/transport.ts';
import { FrameError, JsonFrameClient, serveJsonFrames, type JsonChannel } from '../../shared/json-frames.ts';
import { log } from '../../shared/log.ts';
import type { AgentStatus } from './token-status.ts';
import type { WebServerState } from './web-server.ts';
import type { Assessment } from './assess.ts';

/** The agent's control socket; NITRO_ACM_CONTROL_SOCKET moves it (tests, a second agent). */
export const DEFAULT_CONTROL_SOCKET = process.env.NITRO_ACM_CONTROL_SOCKET || '/run/nitro-acm/agent.sock';
/** Where `nitro-acm local` (run as root) puts its control socket. */
export const LOCAL_CONTROL_SOCKET = '/run/nitro-acm/local/agent.sock';

// Frames up to 16 MiB: the status of 1,024 tokens (their certificates' facts, URIs,
// operation counts) is about 1.1 MiB, an assessment of them more. Only root can
// connect (the socket is 0600), and only the agent's answers are that large.
export const CONTROL: JsonChannel = { name: 'control', server: 'agent', version: 1, maxFrame: 16 * 1024 * 1024 };

/** What `status` answers: every token as the agent sees it, its acm.yaml, the web server's state. */
export interface AgentStatusReport extends AgentStatus { configFile: string; webServer?: WebServerState }

/** What local mode's `renew` answers: the certificate before and after, and how long the web server took to serve the new one. */
export interface RenewReport { label: string; previous: string; fingerprint: string; notAfter: string; seconds: number }

/** Every operation of the control socket, once: its arguments and its result. */
export interface ControlOps {
  status: { args: Record<string, never>; result: AgentStatusReport };
  /** Fetch every token's source now and renew what changed. */
  sync: { args: Record<string, never>; result: { renewed: string[] } };
  /** The security assessment from live probes (src/agent/assess.ts). */
  assess: { args: Record<string, never>; result: Assessment };
  /** Local mode only: issue a new certificate into the local S3 and wait until the web server serves it. */
  renew: { args: { label: string }; result: RenewReport };
}
export type ControlOp = keyof ControlOps;

export type ControlErrorCode = 'BadRequest' | 'UnsupportedVersion' | 'NoSuchToken' | 'Internal';
export class ControlError extends FrameError<ControlErrorCode> {}

/** The operations an agent serves (local mode adds renew). */
export type ControlHandlers = { [K in ControlOp]?: (args: ControlOps[K]['args']) => Promise<ControlOps[K]['result']> };

export interface ControlServer { path: string; close(): Promise<void> }

async function connectControl(socketPath: string, timeoutMs: number): Promise<JsonFrameClient> {
  return new JsonFrameClient(await connect({ kind: 'unix', path: socketPath }, timeoutMs), CONTROL, (code, message) => new ControlError(code as ControlErrorCode, message));
}

export async function startControlServer(socketPath: string, handlers: ControlHandlers): Promise<ControlServer> {
  fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o755 });
  // A live agent already owns it: refuse rather than steal its socket.
  if (fs.existsSync(socketPath)) {
    const alive = await connectControl(socketPath, 500).then((c) => { c.close(); return true; }, () => false);
    if (alive) throw new Error(`another nitro-acm agent is running (it answers on ${socketPath})`);
  }
  const served = Object.keys(handlers) as ControlOp[];
  const server = net.createServer((sock) => serveJsonFrames(sock, CONTROL, {
    handle: async (m) => {
      const op = m.op as ControlOp;
      if (typeof m.op !== 'string' || !served.includes(op)) throw new ControlError('BadRequest', `unknown operation "${String(m.op)}" (expected ${served.join(', ')})`);
      const { v: _v, id: _id, op: _op, ...args } = m;
      const handler = handlers[op] as (a: unknown) => Promise<object>;
      return { ...(await handler(args)) };
    },
    onInternal: (op, message) => log.error(`control ${op}: ${message}`),
    onDrop: (why) => log.warn(`control socket: dropping a client: ${why}`),
  }));
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
export async function controlCall<K extends ControlOp>(socketPath: string, op: K, args: ControlOps[K]['args'] = {} as ControlOps[K]['args'], timeoutMs = 30_000): Promise<ControlOps[K]['result']> {
  let c: JsonFrameClient;
  try { c = await connectControl(socketPath, 2000); } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' || code === 'ECONNREFUSED' ? 'no agent is running there (systemctl status nitro-enclaves-acm; or nitro-acm local)' : code === 'EACCES' ? 'permission denied (run as root)' : (e as Error).message;
    throw new Error(`${socketPath}: ${why}`);
  }
  try {
    // `ok` is the frame's, not the answer's.
    const { ok: _ok, ...answer } = await c.call<ControlOps[K]['result'] & { ok?: boolean }>(op, args, timeoutMs);
    return answer as ControlOps[K]['result'];
  } finally { c.close(); }
}
