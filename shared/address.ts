// Channel addresses in p11-kit's syntax, shared by the agent, the enclave app and
// (by convention, re-implemented in C) the PKCS#11 module:
//   unix:path=/run/nitro-acm/keys.sock
//   vsock:cid=16;port=9999
export type Address =
  | { kind: 'unix'; path: string }
  | { kind: 'vsock'; cid: number; port: number };

export class AddressError extends Error {}

/** Longest unix socket path (sun_path is 108 bytes with its NUL). */
export const MAX_UNIX_PATH = 107;

function fields(rest: string, what: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of rest.split(';')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    if (eq <= 0) throw new AddressError(`${what}: expected key=value, got "${part}"`);
    const key = part.slice(0, eq);
    if (out.has(key)) throw new AddressError(`${what}: "${key}" given twice`);
    out.set(key, part.slice(eq + 1));
  }
  return out;
}

function u32(value: string | undefined, name: string, what: string, max: number): number {
  if (value === undefined) throw new AddressError(`${what}: missing ${name}=`);
  if (!/^[0-9]+$/.test(value) || Number(value) > max) {
    throw new AddressError(`${what}: ${name} must be an integer 0..${max}, got "${value}"`);
  }
  return Number(value);
}

export function parseAddress(text: string): Address {
  const what = `address "${text}"`;
  const colon = text.indexOf(':');
  if (colon < 0) throw new AddressError(`${what}: expected unix:path=... or vsock:cid=...;port=...`);
  const scheme = text.slice(0, colon);
  const f = fields(text.slice(colon + 1), what);
  if (scheme === 'unix') {
    const path = f.get('path');
    if (!path) throw new AddressError(`${what}: missing path=`);
    // sun_path holds 108 bytes with its NUL (the PKCS#11 module's conn.c refuses longer ones too).
    if (Buffer.byteLength(path) > MAX_UNIX_PATH) throw new AddressError(`${what}: path is ${Buffer.byteLength(path)} bytes, at most ${MAX_UNIX_PATH}`);
    for (const k of f.keys()) if (k !== 'path') throw new AddressError(`${what}: unknown field "${k}"`);
    return { kind: 'unix', path };
  }
  if (scheme === 'vsock') {
    for (const k of f.keys()) if (k !== 'cid' && k !== 'port') throw new AddressError(`${what}: unknown field "${k}"`);
    return { kind: 'vsock', cid: u32(f.get('cid'), 'cid', what, 0xffffffff), port: u32(f.get('port'), 'port', what, 0xffffffff) };
  }
  throw new AddressError(`${what}: unknown scheme "${scheme}" (expected unix or vsock)`);
}

export function formatAddress(a: Address): string {
  return a.kind === 'unix' ? `unix:path=${a.path}` : `vsock:cid=${a.cid};port=${a.port}`;
}

/** Defaults, as in AWS's ACM for Nitro Enclaves: key channel 9999, provisioning 10000. */
export const DEFAULT_KEY_PORT = 9999;
export const DEFAULT_PROVISION_PORT = 10000;
/**
 * The enclave's CID: fixed, because the PKCS#11 module's p11-kit registration
 * (/usr/share/p11-kit/modules/nitro-acm.module) names it, and web servers read it
 * when they start.
 */
export const ENCLAVE_CID = 16;
/** Where the PKCS#11 module finds the enclave unless told (p11-module/src/wire.h KW_DEFAULT_KEY_ADDRESS). */
export const DEFAULT_KEY_ADDRESS = `vsock:cid=${ENCLAVE_CID};port=${DEFAULT_KEY_PORT}`;
/** VMADDR_CID_ANY, for servers inside the enclave. */
export const VSOCK_CID_ANY = 0xffffffff;
