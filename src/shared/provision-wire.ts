// The provisioning channel (agent <-> enclave app), version 1: length-prefixed
// JSON frames (docs/protocol.md). The types, limits and the client live here; the
// server is enclave/provision-server.ts.
import type net from 'node:net';
import { FrameSplitter } from './framing.ts';
import { connect } from './transport.ts';
import type { Address } from './address.ts';
import type { Bundle } from './bundle.ts';

export const PROVISION_VERSION = 1;
export const MAX_PROVISION_FRAME = 1024 * 1024;

export interface AwsCredentialsWire { accessKeyId: string; secretAccessKey: string; sessionToken?: string }

export interface TokenRequest { label: string; pin: string; bundle: Bundle; credentials?: AwsCredentialsWire; region?: string }

export interface TokenDescription {
  label: string;
  keyType: string;
  subject: string;
  notAfter: string;
  serial: string;
  fingerprint256: string;
  refreshedAt: string;
  retiredKeys: number;
}

export interface Health { ok: true; version: number; nsm: 'device' | 'simulated'; localMode: boolean; tokens: number; generation: number }

export type ErrorCode = 'BadRequest' | 'TokenExists' | 'NoSuchToken' | 'PlaintextRefused' | 'KmsDenied' | 'KmsError' | 'KeyMismatch' | 'KeyInvalid' | 'Internal' | 'UnsupportedVersion';

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

/** A client for the provisioning channel; one request at a time is fine, several may be in flight. */
export class ProvisionClient {
  private waiting = new Map<number, { resolve(v: Record<string, unknown>): void; reject(e: Error): void }>();
  private nextId = 1;
  private constructor(private readonly sock: net.Socket) {
    const split = new FrameSplitter(MAX_PROVISION_FRAME, (f) => {
      const m = JSON.parse(f.toString()) as { id: number; ok: boolean; error?: { code: ErrorCode; message: string } } & Record<string, unknown>;
      const w = this.waiting.get(m.id);
      if (!w) return;
      this.waiting.delete(m.id);
      if (m.ok) w.resolve(m); else w.reject(new ProvisionError(m.error?.code ?? 'Internal', m.error?.message ?? 'unknown error'));
    });
    sock.on('data', (d) => { try { split.push(d); } catch (e) { sock.destroy(e as Error); } });
    const fail = (e?: Error) => { for (const w of this.waiting.values()) w.reject(e ?? new Error('provisioning channel closed')); this.waiting.clear(); };
    sock.on('error', fail);
    sock.on('close', () => fail());
  }

  static async connect(address: Address, timeoutMs = 5000): Promise<ProvisionClient> {
    return new ProvisionClient(await connect(address, timeoutMs));
  }

  call<T = Record<string, unknown>>(op: string, args: Record<string, unknown> = {}, timeoutMs = 60_000): Promise<T> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { this.waiting.delete(id); reject(new Error(`provisioning ${op} timed out after ${timeoutMs} ms`)); }, timeoutMs);
      this.waiting.set(id, { resolve: (v) => { clearTimeout(timer); resolve(v as T); }, reject: (e) => { clearTimeout(timer); reject(e); } });
      this.sock.write(jsonFrame({ v: PROVISION_VERSION, id, op, ...args }));
    });
  }

  close(): void { this.sock.destroy(); }
}
