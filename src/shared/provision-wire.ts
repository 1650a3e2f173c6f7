// The provisioning channel (agent <-> enclave app), version 1: length-prefixed
// JSON frames (docs/protocol.md). The types, limits and the client live here; the
// server is enclave/provision-server.ts.
import type net from 'node:net';
import { FrameSplitter } from './framing.ts';
import { connect } from './transport.ts';
import type { Address } from './address.ts';
import type { Bundle, FileDbKey } from './bundle.ts';

export const PROVISION_VERSION = 1;
export const MAX_PROVISION_FRAME = 1024 * 1024;

export interface AwsCredentialsWire { accessKeyId: string; secretAccessKey: string; sessionToken?: string }

/** add, update, refresh: `bundle` (Acm, S3 sources) or `keys` (a FileDb source's entries, as in its file). */
export interface TokenRequest { label: string; pin: string; bundle?: Bundle; keys?: FileDbKey[]; credentials?: AwsCredentialsWire; region?: string }

export interface TokenDescription {
  label: string;
  keyType: string;
  subject: string;
  notAfter: string;
  serial: string;
  fingerprint256: string;
  refreshedAt: string;
  retiredKeys: number;
  /** Keys served now (more than one only for a FileDb source). subject, notAfter, serial and fingerprint256 are the first key's certificate's, or empty when it has none. */
  keys: number;
}

export interface Health { ok: true; version: number; nsm: 'device' | 'simulated'; localMode: boolean; tokens: number; generation: number; memory?: { rssMiB: number; heapUsedMiB: number; externalMiB: number } }

export type ErrorCode = 'BadRequest' | 'TokenExists' | 'NoSuchToken' | 'PlaintextRefused' | 'KmsDenied' | 'KmsError' | 'KeyMismatch' | 'KeyInvalid' | 'Internal' | 'UnsupportedVersion' | 'PinChange';

/** Errors that the same request would get again: the agent does not retry them. */
export const PERMANENT_ERRORS: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['KeyMismatch', 'KeyInvalid', 'BadRequest', 'PlaintextRefused', 'KmsDenied']);

/**
 * Every operation of the provisioning channel, once: its arguments and its
 * result. The client (ProvisionClient.call) and the server
 * (enclave/provision-server.ts, whose switch must cover every one) both use it.
 */
export interface ProvisionOps {
  health: { args: Record<string, never>; result: Health };
  describe: { args: Record<string, never>; result: { tokens: TokenDescription[] } };
  add: { args: TokenRequest; result: { token: TokenDescription } };
  update: { args: TokenRequest; result: { token: TokenDescription } };
  refresh: { args: TokenRequest; result: { token: TokenDescription } };
  remove: { args: { label: string }; result: Record<string, never> };
}
export type ProvisionOp = keyof ProvisionOps;
export const PROVISION_OPS: readonly ProvisionOp[] = ['health', 'describe', 'add', 'update', 'refresh', 'remove'];

export class ProvisionError extends Error {
  constructor(readonly code: ErrorCode, message: string) { super(message); }
}

export function jsonFrame(obj: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(obj));
  if (body.length > MAX_PROVISION_FRAME) throw new RangeError(`message of ${body.length} bytes exceeds ${MAX_PROVISION_FRAME}`);
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  return Buffer.concat([head, body]);
}

/**
 * The server side of a framed-JSON channel (the provisioning channel, and the
 * agent's control socket, which speaks the same frames): each request frame gets
 * one reply frame with its id; a handler's ProvisionError becomes a typed error,
 * anything else an Internal one. A frame that is not JSON gets a BadRequest; an
 * oversized frame drops the client.
 */
export function serveJsonFrames(sock: net.Socket, handle: (m: Record<string, unknown>) => Promise<Record<string, unknown>>, onInternal: (op: string, message: string) => void, onDrop: (why: string) => void): void {
  const split = new FrameSplitter(MAX_PROVISION_FRAME, (frame) => {
    let msg: Record<string, unknown>;
    try { msg = JSON.parse(frame.toString()) as Record<string, unknown>; } catch {
      sock.write(jsonFrame({ v: PROVISION_VERSION, id: null, ok: false, error: { code: 'BadRequest', message: 'frame is not JSON' } }));
      return;
    }
    const id = msg.id;
    const reply = (body: Record<string, unknown>) => { if (!sock.destroyed) sock.write(jsonFrame({ v: PROVISION_VERSION, id, ...body })); };
    handle(msg).then(
      (result) => reply({ ok: true, ...result }),
      (e) => {
        const err = e instanceof ProvisionError ? e : new ProvisionError('Internal', (e as Error).message);
        if (err.code === 'Internal') onInternal(String(msg.op), err.message);
        reply({ ok: false, error: { code: err.code, message: err.message } });
      },
    );
  });
  sock.on('data', (d) => {
    try { split.push(d); } catch (e) { onDrop((e as Error).message); sock.destroy(); }
  });
  sock.on('error', () => {});
}

/** A client for the provisioning channel; one request at a time is fine, several may be in flight. */
export class ProvisionClient {
  private waiting = new Map<number, { resolve(v: Record<string, unknown>): void; reject(e: Error): void }>();
  private nextId = 1;
  /** True once the connection has ended (the enclave went away or closed it). */
  closed = false;
  /** Called once when the connection ends by itself (not by close()). */
  onLost?: () => void;
  private constructor(private readonly sock: net.Socket) {
    const split = new FrameSplitter(MAX_PROVISION_FRAME, (f) => {
      const m = JSON.parse(f.toString()) as { id: number; ok: boolean; error?: { code: ErrorCode; message: string } } & Record<string, unknown>;
      const w = this.waiting.get(m.id);
      if (!w) return;
      this.waiting.delete(m.id);
      if (m.ok) w.resolve(m); else w.reject(new ProvisionError(m.error?.code ?? 'Internal', m.error?.message ?? 'unknown error'));
    });
    sock.on('data', (d) => { try { split.push(d); } catch (e) { sock.destroy(e as Error); } });
    const fail = (e?: Error) => {
      if (!this.closed) { this.closed = true; this.onLost?.(); }
      for (const w of this.waiting.values()) w.reject(e ?? new Error('provisioning channel closed'));
      this.waiting.clear();
    };
    sock.on('error', fail);
    sock.on('close', () => fail());
  }

  static async connect(address: Address, timeoutMs = 5000): Promise<ProvisionClient> {
    // Over vsock the enclave takes provisioning only from a root-bound source port.
    return new ProvisionClient(await connect(address, timeoutMs, { privilegedSource: true }));
  }

  /** A provisioning operation, typed by ProvisionOps. */
  op<K extends ProvisionOp>(op: K, args: ProvisionOps[K]['args'], timeoutMs?: number): Promise<ProvisionOps[K]['result']> {
    return this.call<ProvisionOps[K]['result']>(op, args as Record<string, unknown>, timeoutMs);
  }

  /** Any operation of the framed-JSON channel (the agent's control socket speaks it too). */
  call<T = Record<string, unknown>>(op: string, args: Record<string, unknown> = {}, timeoutMs = 60_000): Promise<T> {
    const id = this.nextId++;
    if (this.closed) return Promise.reject(new Error('provisioning channel closed'));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.waiting.delete(id); reject(new Error(`provisioning ${op} timed out after ${timeoutMs} ms`)); }, timeoutMs);
      this.waiting.set(id, { resolve: (v) => { clearTimeout(timer); resolve(v as T); }, reject: (e) => { clearTimeout(timer); reject(e); } });
      this.sock.write(jsonFrame({ v: PROVISION_VERSION, id, op, ...args }));
    });
  }

  close(): void { this.closed = true; this.sock.destroy(); }
}
