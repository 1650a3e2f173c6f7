// The key channel (PKCS#11 module <-> enclave app), version 1. docs/protocol.md is
// the specification; p11-module/src/wire.h is the C side of the same format.
import { Reader, Writer, DecodeError } from './bytes.ts';

export const KEY_WIRE_VERSION = 1;
/** Largest request the enclave accepts (a sign or decrypt input is at most 512 bytes). */
export const MAX_REQUEST = 16 * 1024;
/** Longest OAEP label the module carries (p11-module/src/wire.h KW_MAX_OAEP_LABEL); longer ones fail C_DecryptInit. */
export const MAX_OAEP_LABEL = 8192;
/** Largest response the module accepts (the LIST of every token's public objects). */
export const MAX_RESPONSE = 8 * 1024 * 1024;
/**
 * Caps on one token list (p11-module/src/wire.h KW_MAX_*; docs/protocol.md): the
 * enclave app holds no more, and the module refuses a list over any of them.
 * `objects` counts two per key (private, public) plus its certificates.
 */
export const LIST_CAPS = { tokens: 1024, keysPerToken: 16, certificatesPerKey: 8, objects: 65536 } as const;
/** A token's label, in bytes (CK_TOKEN_INFO.label; p11-module/src/wire.h KW_MAX_TOKEN_LABEL). */
export const TOKEN_LABEL_MAX_BYTES = 32;
/** A key's label (CKA_LABEL), in bytes: one length byte on the wire (KW_MAX_LABEL_BYTES). */
export const KEY_LABEL_MAX_BYTES = 255;
/** A token's PIN, in bytes (p11-module/src/wire.h KW_MIN_PIN, KW_MAX_PIN): AWS's agent takes any non-empty string; LOGIN carries up to 255. */
export const PIN_BYTES = { min: 1, max: 255 } as const;
export const REQUEST_HEADER = 8; // version, op, flags, id
export const RESPONSE_HEADER = 16; // version, op|0x80, flags, id, rv, generation

export const Op = { LIST: 1, LOGIN: 2, LOGOUT: 3, SIGN: 4, DECRYPT: 5, PING: 6 } as const;
export const REPLY_BIT = 0x80;

export const Hash = { SHA1: 1, SHA224: 2, SHA256: 3, SHA384: 4, SHA512: 5 } as const;
export const HASH_NAMES: Record<number, string> = { 1: 'sha1', 2: 'sha224', 3: 'sha256', 4: 'sha384', 5: 'sha512' };
export const HASH_LEN: Record<number, number> = { 1: 20, 2: 28, 3: 32, 4: 48, 5: 64 };

/** ECDSA: the input is a digest already computed; the signature is r||s (PKCS#11's form). */
export const SignScheme = { PKCS1: 1, PSS: 2, RAW: 3, ECDSA: 4 } as const;
export const DecryptScheme = { PKCS1: 1, OAEP: 2, RAW: 3 } as const;

export const KeyFlag = { RETIRED: 1 } as const;
export const CertCategory = { LEAF: 0, AUTHORITY: 2 } as const; // CKA_CERTIFICATE_CATEGORY values

/** A key's type on the wire, and what its two public fields hold. */
export const KeyType = { RSA: 0, EC: 1 } as const;
export type KeyTypeCode = (typeof KeyType)[keyof typeof KeyType];

/**
 * RSA: `modulus` and `publicExponent`. EC: `ecParams` (CKA_EC_PARAMS, the DER OID
 * of a named curve) and `ecPoint` (the public point, uncompressed: 04 || X || Y).
 */
export type WirePublicKey = { keyType: typeof KeyType.RSA; modulus: Buffer; publicExponent: Buffer } | { keyType: typeof KeyType.EC; ecParams: Buffer; ecPoint: Buffer };

export type WireKey = WirePublicKey & {
  keyId: number;
  flags: number;
  ckaId: Buffer;
  label: string;
  certificates: { category: number; der: Buffer }[];
};
export interface WireToken { label: string; serial: string; keys: WireKey[] }

export interface RequestHeader { version: number; op: number; id: number }

export type Request =
  | { op: typeof Op.LIST }
  | { op: typeof Op.PING }
  | { op: typeof Op.LOGIN; label: string; pin: Buffer }
  | { op: typeof Op.LOGOUT; label: string }
  | { op: typeof Op.SIGN; keyId: number; scheme: number; hash: number; mgfHash: number; saltLength: number; data: Buffer }
  | { op: typeof Op.DECRYPT; keyId: number; scheme: number; hash: number; mgfHash: number; oaepLabel: Buffer; data: Buffer };

export function readRequestHeader(msg: Buffer): RequestHeader {
  if (msg.length < REQUEST_HEADER) throw new DecodeError(`request of ${msg.length} bytes is shorter than its ${REQUEST_HEADER}-byte header`);
  return { version: msg[0], op: msg[1], id: msg.readUInt32BE(4) };
}

export function decodeRequest(msg: Buffer): Request {
  const r = new Reader(msg.subarray(REQUEST_HEADER));
  const op = msg[1];
  let req: Request;
  switch (op) {
    case Op.LIST: req = { op }; break;
    case Op.PING: req = { op }; break;
    case Op.LOGIN: req = { op, label: r.str8('token label'), pin: r.bytes8('PIN') }; break;
    case Op.LOGOUT: req = { op, label: r.str8('token label') }; break;
    case Op.SIGN: {
      const keyId = r.u32('key id'), scheme = r.u8('scheme'), hash = r.u8('hash'), mgfHash = r.u8('mgf hash');
      r.u8('padding byte');
      req = { op, keyId, scheme, hash, mgfHash, saltLength: r.u32('salt length'), data: r.bytes16('data') };
      break;
    }
    case Op.DECRYPT: {
      const keyId = r.u32('key id'), scheme = r.u8('scheme'), hash = r.u8('hash'), mgfHash = r.u8('mgf hash');
      r.u8('padding byte');
      req = { op, keyId, scheme, hash, mgfHash, oaepLabel: r.bytes16('OAEP label'), data: r.bytes16('data') };
      break;
    }
    default: throw new DecodeError(`unknown operation ${op}`);
  }
  r.end(`operation ${op}`);
  return req;
}

function header(w: Writer, op: number, id: number): Writer {
  return w.u32(0).u8(KEY_WIRE_VERSION).u8(op).u16(0).u32(id);
}
function framed(w: Writer): Buffer {
  return w.setU32(0, w.length - 4).finish();
}

/** A whole frame (length prefix included) for a request; used by tests and tools, the module has its own in C. */
export function encodeRequest(id: number, req: Request): Buffer {
  const w = header(new Writer(64), req.op, id);
  switch (req.op) {
    case Op.LIST: case Op.PING: break;
    case Op.LOGIN: w.str8(req.label).bytes8(req.pin); break;
    case Op.LOGOUT: w.str8(req.label); break;
    case Op.SIGN: w.u32(req.keyId).u8(req.scheme).u8(req.hash).u8(req.mgfHash).u8(0).u32(req.saltLength).bytes16(req.data); break;
    case Op.DECRYPT: w.u32(req.keyId).u8(req.scheme).u8(req.hash).u8(req.mgfHash).u8(0).bytes16(req.oaepLabel).bytes16(req.data); break;
  }
  return framed(w);
}

/** A whole response frame. `body` is the op's result on success, or a UTF-8 reason on failure. */
export function encodeResponse(op: number, id: number, rv: number, generation: number, body?: Uint8Array): Buffer {
  const head = encodeResponseHead(op, id, rv, generation, body?.length ?? 0);
  return body?.length ? Buffer.concat([head, body]) : head;
}

/**
 * A response frame's length prefix and header, for a body sent after it as it is:
 * the enclave sends the shared LIST body this way, so a reply waiting in a socket's
 * queue holds a reference to it, not a copy.
 */
export function encodeResponseHead(op: number, id: number, rv: number, generation: number, bodyLength: number): Buffer {
  const w = new Writer(RESPONSE_HEADER + 4);
  w.u32(RESPONSE_HEADER + bodyLength).u8(KEY_WIRE_VERSION).u8(op | REPLY_BIT).u16(0).u32(id).u32(rv).u32(generation);
  return w.finish();
}

export interface Response { op: number; id: number; rv: number; generation: number; body: Buffer }
export function decodeResponse(msg: Buffer): Response {
  if (msg.length < RESPONSE_HEADER) throw new DecodeError(`response of ${msg.length} bytes is shorter than its header`);
  if (msg[0] !== KEY_WIRE_VERSION) throw new DecodeError(`response version ${msg[0]}, expected ${KEY_WIRE_VERSION}`);
  return { op: msg[1] & ~REPLY_BIT, id: msg.readUInt32BE(4), rv: msg.readUInt32BE(8), generation: msg.readUInt32BE(12), body: msg.subarray(RESPONSE_HEADER) };
}

export function encodeTokenList(tokens: WireToken[]): Buffer {
  return joinTokenList(tokens.map(encodeTokenEntry));
}

/**
 * One token's part of the list. The list is its entries after a count, so the
 * enclave's key store re-encodes only the tokens that changed (provisioning
 * 1,000 tokens changes the list 1,000 times).
 */
export function encodeTokenEntry(t: WireToken): Buffer {
  const w = new Writer(256);
  w.str8(t.label).str8(t.serial).u16(t.keys.length);
  for (const k of t.keys) {
    w.u32(k.keyId).u8(k.flags).bytes8(k.ckaId).str8(k.label).u8(k.keyType);
    if (k.keyType === KeyType.RSA) w.bytes16(k.modulus).bytes16(k.publicExponent);
    else w.bytes16(k.ecParams).bytes16(k.ecPoint);
    w.u16(k.certificates.length);
    for (const c of k.certificates) w.u8(c.category).bytes32(c.der);
  }
  return w.finish();
}

/** The list of these entries, in `into` when given (it must have room: 2 bytes plus the entries). */
export function joinTokenList(entries: Uint8Array[], into?: Buffer): Buffer {
  if (entries.length > 0xffff) throw new RangeError(`${entries.length} tokens exceed a list's count field`);
  const size = entries.reduce((n, e) => n + e.length, 2);
  const out = into ? into.subarray(0, size) : Buffer.allocUnsafe(size);
  if (out.length < size) throw new RangeError(`a list of ${size} bytes does not fit in ${out.length}`);
  out.writeUInt16BE(entries.length, 0);
  let off = 2;
  for (const e of entries) { out.set(e, off); off += e.length; }
  return out;
}

export function decodeTokenList(body: Buffer): WireToken[] {
  const r = new Reader(body);
  const tokens: WireToken[] = [];
  for (let n = r.u16('token count'); n > 0; n--) {
    const label = r.str8('token label'), serial = r.str8('serial');
    const keys: WireKey[] = [];
    for (let m = r.u16('key count'); m > 0; m--) {
      const keyId = r.u32('key id'), flags = r.u8('key flags'), ckaId = r.bytes8('CKA_ID'), klabel = r.str8('key label');
      const type = r.u8('key type');
      let pub: WirePublicKey;
      if (type === KeyType.RSA) pub = { keyType: KeyType.RSA, modulus: r.bytes16('modulus'), publicExponent: r.bytes16('public exponent') };
      else if (type === KeyType.EC) {
        pub = { keyType: KeyType.EC, ecParams: r.bytes16('EC parameters'), ecPoint: r.bytes16('EC point') };
        // As p11-module/src/wire.c reads them: a named curve's OID, and 04 || X || Y of at most P-521's size.
        const { ecParams: p, ecPoint: q } = pub;
        if (p.length < 3 || p.length > 16 || p[0] !== 0x06 || p[1] !== p.length - 2) throw new DecodeError('EC parameters are not a curve OID');
        if (q.length < 3 || q.length > 133 || q.length % 2 === 0 || q[0] !== 0x04) throw new DecodeError('EC point is not an uncompressed point');
      }
      else throw new DecodeError(`unknown key type ${type}`);
      const certificates: WireKey['certificates'] = [];
      for (let c = r.u16('certificate count'); c > 0; c--) certificates.push({ category: r.u8('category'), der: r.bytes32('certificate') });
      keys.push({ ...pub, keyId, flags, ckaId, label: klabel, certificates });
    }
    tokens.push({ label, serial, keys });
  }
  r.end('token list');
  return tokens;
}
