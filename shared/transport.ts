// Stream transports for both channels: AF_UNIX through Node's net module, AF_VSOCK
// through the tiny native addon (shared/native/native.c) whose file descriptors
// are wrapped in Node's own stream handles, so everything above the socket is the
// same code on both. libuv cannot guess the type of a vsock descriptor, hence the
// explicit wrap classes below.
import net from 'node:net';
import fs from 'node:fs';
import { native, type PeerIdentity } from './native.ts';
import type { Address } from './address.ts';

interface StreamHandleClass { new (type: number): { open(fd: number): number } }
// process.binding is deprecated for general use but these two wraps are on Node's
// allow-list; they are the only way to give libuv a descriptor of a family it does not know.
const binding = (process as unknown as { binding(name: string): Record<string, unknown> }).binding;

export interface ConnectOptions {
  /**
   * vsock: connect from a source port below 1024, which only root can bind on the
   * parent; the provisioning channel accepts nothing else (docs/protocol.md, "Trust model").
   */
  privilegedSource?: boolean;
}

export async function connect(address: Address, timeoutMs = 5000, opts: ConnectOptions = {}): Promise<net.Socket> {
  if (address.kind === 'unix') {
    return new Promise((resolve, reject) => {
      const s = net.connect({ path: address.path });
      const timer = setTimeout(() => { s.destroy(); reject(new Error(`connect to unix:path=${address.path} timed out after ${timeoutMs} ms`)); }, timeoutMs);
      s.once('connect', () => { clearTimeout(timer); s.removeAllListeners('error'); resolve(s); });
      s.once('error', (e) => { clearTimeout(timer); reject(e); });
    });
  }
  return socketFromFd(native().connect(address.cid, address.port, timeoutMs, opts.privilegedSource ?? false));
}

/** Who is on the other end of an accepted or connected socket (unix: its uid; vsock: its CID and source port). */
export function peerOf(sock: net.Socket): PeerIdentity {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (fd === undefined || fd < 0) throw new Error('socket has no descriptor');
  return native().peer(fd);
}

/**
 * A socket to the address, returned at once (still connecting for unix; vsock
 * connects synchronously, bounded by timeoutMs): for APIs that want a socket now,
 * such as an https.Agent's createConnection.
 */
export function dialSync(address: Address, timeoutMs = 5000): net.Socket {
  if (address.kind === 'unix') return net.connect({ path: address.path });
  return socketFromFd(native().connect(address.cid, address.port, timeoutMs));
}

/** A connected stream socket of any family, as a net.Socket that owns the descriptor. */
export function socketFromFd(fd: number): net.Socket {
  const { Pipe, constants } = binding('pipe_wrap') as { Pipe: StreamHandleClass; constants: { SOCKET: number } };
  const handle = new Pipe(constants.SOCKET);
  const err = handle.open(fd);
  if (err) { fs.closeSync(fd); throw new Error(`cannot wrap socket descriptor ${fd} (uv error ${err})`); }
  return new net.Socket({ handle, readable: true, writable: true } as unknown as net.SocketConstructorOpts);
}

/**
 * Takes a connection away from this thread: returns a duplicate of its descriptor
 * (for another thread to wrap with socketFromFd) and closes this thread's handle.
 */
export function detachSocket(sock: net.Socket): number {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (fd === undefined || fd < 0) throw new Error('socket has no descriptor');
  const copy = native().dup(fd);
  sock.destroy();
  return copy;
}

/** Listens on the address; for unix, a stale socket file from an earlier run is replaced. */
export function listen(server: net.Server, address: Address, backlog = 511): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    const done = () => { server.removeListener('error', reject); resolve(); };
    if (address.kind === 'unix') {
      try { if (fs.statSync(address.path).isSocket()) fs.unlinkSync(address.path); } catch { /* absent */ }
      server.listen({ path: address.path, backlog }, done);
      return;
    }
    const fd = native().listen(address.cid, address.port, backlog);
    const { TCP, constants } = binding('tcp_wrap') as { TCP: StreamHandleClass; constants: { SERVER: number } };
    const handle = new TCP(constants.SERVER);
    const err = handle.open(fd);
    if (err) { fs.closeSync(fd); reject(new Error(`cannot wrap vsock descriptor (uv error ${err})`)); return; }
    server.listen(handle as unknown as net.ListenOptions, backlog, done);
  });
}
