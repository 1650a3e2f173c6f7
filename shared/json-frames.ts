// Framed JSON: the message layer under two channels, each with its own
// operations, version and errors: the provisioning channel (agent <-> enclave
// app, provision-wire.ts) and the agent's control socket (src/agent/control.ts).
// A frame is a 4-byte big-endian length and that many bytes of one JSON object
// (docs/protocol.md). A request is {v, id, op, ...args}; its reply
// {v, id, ok: true, ...result} or {v, id, ok: false, error: {code, message}}.
import type net from 'node:net';
import { FrameSplitter } from './framing.ts';

/** What a channel is: the name its errors use, who serves it, its version, its largest frame. */
export interface JsonChannel { name: string; server: string; version: number; maxFrame: number }

/** An error with a code the other side can act on; `code` is the channel's own. */
export class FrameError<Code extends string = string> extends Error {
  constructor(readonly code: Code, message: string) { super(message); }
}

export function jsonFrame(obj: unknown, maxFrame: number): Buffer {
  const body = Buffer.from(JSON.stringify(obj));
  if (body.length > maxFrame) throw new RangeError(`message of ${body.length} bytes exceeds ${maxFrame}`);
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  return Buffer.concat([head, body]);
}

export interface JsonServerHooks {
  /** Answers one request (its version already checked); a FrameError becomes that error, anything else an Internal one. */
  handle(m: Record<string, unknown>): Promise<Record<string, unknown>>;
  /** An Internal error: worth a log line on the server. */
  onInternal(op: string, message: string): void;
  /** A client dropped for an oversized frame. */
  onDrop(why: string): void;
}

/**
 * The server side: each request frame gets one reply frame with its id. A
 * frame that is not JSON gets a BadRequest, one of another version an
 * UnsupportedVersion; an oversized frame drops the client.
 */
export function serveJsonFrames(sock: net.Socket, channel: JsonChannel, hooks: JsonServerHooks): void {
  const send = (body: Record<string, unknown>) => { if (!sock.destroyed) sock.write(jsonFrame({ v: channel.version, ...body }, channel.maxFrame)); };
  const split = new FrameSplitter(channel.maxFrame, (frame) => {
    let msg: Record<string, unknown>;
    try { msg = JSON.parse(frame.toString()) as Record<string, unknown>; } catch {
      send({ id: null, ok: false, error: { code: 'BadRequest', message: 'frame is not JSON' } });
      return;
    }
    const id = msg.id;
    const answer = msg.v === channel.version ? hooks.handle(msg)
      : Promise.reject(new FrameError('UnsupportedVersion', `${channel.name} version ${String(msg.v)}; this ${channel.server} speaks ${channel.version}`));
    answer.then(
      (result) => {
        // An answer over the channel's frame size is an error reply, not an exception that would end the process.
        try { send({ id, ok: true, ...result }); } catch (e) {
          hooks.onInternal(String(msg.op), (e as Error).message);
          send({ id, ok: false, error: { code: 'Internal', message: `the answer to ${String(msg.op)} is too large to send: ${(e as Error).message}` } });
        }
      },
      (e) => {
        const err = e instanceof FrameError ? e : new FrameError('Internal', (e as Error).message);
        if (err.code === 'Internal') hooks.onInternal(String(msg.op), err.message);
        send({ id, ok: false, error: { code: err.code, message: err.message } });
      },
    );
  });
  sock.on('data', (d) => {
    try { split.push(d); } catch (e) { hooks.onDrop((e as Error).message); sock.destroy(); }
  });
  sock.on('error', () => {});
}

/** The client side; several requests may be in flight. `toError` turns an error reply into the channel's own error class. */
export class JsonFrameClient {
  private waiting = new Map<number, { resolve(v: Record<string, unknown>): void; reject(e: Error): void }>();
  private nextId = 1;
  /** True once the connection has ended (the peer went away or closed it). */
  closed = false;
  /** Called once when the connection ends by itself (not by close()). */
  onLost?: () => void;
  constructor(private readonly sock: net.Socket, private readonly channel: JsonChannel, toError: (code: string, message: string) => Error) {
    const split = new FrameSplitter(channel.maxFrame, (f) => {
      const m = JSON.parse(f.toString()) as { id: number; ok: boolean; error?: { code: string; message: string } } & Record<string, unknown>;
      const w = this.waiting.get(m.id);
      if (!w) return;
      this.waiting.delete(m.id);
      if (m.ok) {
        // The frame's version and id are the channel's business, not the answer's.
        const { v: _v, id: _id, ...result } = m;
        w.resolve(result);
      } else w.reject(toError(m.error?.code ?? 'Internal', m.error?.message ?? 'unknown error'));
    });
    sock.on('data', (d) => { try { split.push(d); } catch (e) { sock.destroy(e as Error); } });
    const fail = (e?: Error) => {
      if (!this.closed) { this.closed = true; this.onLost?.(); }
      for (const w of this.waiting.values()) w.reject(e ?? new Error(`${channel.name} channel closed`));
      this.waiting.clear();
    };
    sock.on('error', fail);
    sock.on('close', () => fail());
  }

  /** One request; the result without the frame's version and id. */
  call<T = Record<string, unknown>>(op: string, args: object = {}, timeoutMs = 60_000): Promise<T> {
    const id = this.nextId++;
    if (this.closed) return Promise.reject(new Error(`${this.channel.name} channel closed`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.waiting.delete(id); reject(new Error(`${this.channel.name} ${op} timed out after ${timeoutMs} ms`)); }, timeoutMs);
      this.waiting.set(id, { resolve: (v) => { clearTimeout(timer); resolve(v as T); }, reject: (e) => { clearTimeout(timer); reject(e); } });
      this.sock.write(jsonFrame({ v: this.channel.version, id, op, ...args }, this.channel.maxFrame));
    });
  }

  close(): void { this.closed = true; this.sock.destroy(); }
}
