// The provisioning channel (agent <-> enclave app), version 1: framed JSON
// (json-frames.ts, docs/protocol.md). Its operations, errors, limits and the
// client live here; the server is enclave/provision-server.ts.
import { FrameError, JsonFrameClient, type JsonChannel } from './json-frames.ts';
import { connect } from './transport.ts';
import type { Address } from './address.ts';
import type { Bundle, FileDbKey } from './bundle.ts';
import type { TokenOperationStats } from './operation-stats.ts';

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
  /** describe only: the token's signatures and decryptions since the enclave app started (counted by its key workers). */
  operations?: TokenOperationStats;
}

export interface Health {
  ok: true; version: number; nsm: 'device' | 'simulated'; localMode: boolean; tokens: number; generation: number; memory?: { rssMiB: number; heapUsedMiB: number; externalMiB: number };
  /** Present when the request carried a nonce: the NSM's attestation document over that nonce (base64). */
  attestation?: string;
}

/** health's optional nonce (base64): the agent's fresh random bytes, which the attestation document must carry. */
export const HEALTH_NONCE_BYTES = { min: 16, max: 512 };

export type ErrorCode = 'BadRequest' | 'TokenExists' | 'NoSuchToken' | 'PlaintextRefused' | 'KmsDenied' | 'KmsError' | 'KeyMismatch' | 'KeyInvalid' | 'Internal' | 'UnsupportedVersion' | 'PinChange';

/** Errors that the same request would get again: the agent does not retry them. */
export const PERMANENT_ERRORS: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['KeyMismatch', 'KeyInvalid', 'BadRequest', 'PlaintextRefused', 'KmsDenied']);

/**
 * Every operation of the provisioning channel, once: its arguments and its
 * result. The client (ProvisionClient.call) and the server
 * (enclave/provision-server.ts, whose switch must cover every one) both use it.
 */
export interface ProvisionOps {
  health: { args: { nonce?: string }; result: Health };
  describe: { args: Record<string, never>; result: { tokens: TokenDescription[] } };
  add: { args: TokenRequest; result: { token: TokenDescription } };
  update: { args: TokenRequest; result: { token: TokenDescription } };
  refresh: { args: TokenRequest; result: { token: TokenDescription } };
  remove: { args: { label: string }; result: Record<string, never> };
}
export type ProvisionOp = keyof ProvisionOps;
export const PROVISION_OPS: readonly ProvisionOp[] = ['health', 'describe', 'add', 'update', 'refresh', 'remove'];

export class ProvisionError extends FrameError<ErrorCode> {}

/** The provisioning channel over framed JSON (json-frames.ts). */
export const PROVISIONING: JsonChannel = { name: 'provisioning', server: 'enclave', version: PROVISION_VERSION, maxFrame: MAX_PROVISION_FRAME };

/** A client for the provisioning channel; one request at a time is fine, several may be in flight. */
export class ProvisionClient extends JsonFrameClient {
  static async connect(address: Address, timeoutMs = 5000): Promise<ProvisionClient> {
    // Over vsock the enclave takes provisioning only from a root-bound source port.
    return new ProvisionClient(await connect(address, timeoutMs, { privilegedSource: true }), PROVISIONING, (code, message) => new ProvisionError(code as ErrorCode, message));
  }

  /** A provisioning operation, typed by ProvisionOps. */
  op<K extends ProvisionOp>(op: K, args: ProvisionOps[K]['args'], timeoutMs?: number): Promise<ProvisionOps[K]['result']> {
    return this.call<ProvisionOps[K]['result']>(op, args, timeoutMs);
  }
}
