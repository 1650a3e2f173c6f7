// A small, strict CBOR (RFC 8949) codec for what Nitro uses: attestation
// documents (COSE_Sign1) and NSM requests. Definite lengths only on output;
// indefinite-length strings, arrays and maps are accepted on input. Every length
// is checked against the bytes left before anything is allocated, and nesting is
// bounded, so hostile input fails with a CborError naming the offset.

export class CborError extends Error {}

export class Tagged {
  constructor(readonly tag: number, readonly value: CborValue) {}
}

export type CborValue =
  | number
  | bigint
  | string
  | boolean
  | null
  | undefined
  | Uint8Array
  | CborValue[]
  | Map<CborValue, CborValue>
  | Tagged;

const MAX_DEPTH = 32;

export function decodeCbor(data: Uint8Array): CborValue {
  const d = new Decoder(data);
  const v = d.item(0);
  if (d.off !== data.length) throw new CborError(`${data.length - d.off} bytes after the CBOR item`);
  return v;
}

class Decoder {
  off = 0;
  private view: DataView;
  constructor(private readonly b: Uint8Array) {
    this.view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  }

  private need(n: number | bigint): number {
    if (typeof n === 'bigint' || n > this.b.length - this.off) throw new CborError(`truncated at offset ${this.off}: ${n} more bytes announced, ${this.b.length - this.off} left`);
    return n;
  }

  private arg(info: number): number | bigint {
    if (info < 24) return info;
    switch (info) {
      case 24: this.need(1); return this.b[this.off++];
      case 25: { this.need(2); const v = this.view.getUint16(this.off); this.off += 2; return v; }
      case 26: { this.need(4); const v = this.view.getUint32(this.off); this.off += 4; return v; }
      case 27: {
        this.need(8);
        const v = this.view.getBigUint64(this.off);
        this.off += 8;
        return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
      }
      default: throw new CborError(`reserved additional information ${info} at offset ${this.off - 1}`);
    }
  }

  private bytesOrText(major: number, info: number, depth: number): Uint8Array {
    if (info === 31) {
      const parts: Uint8Array[] = [];
      for (;;) {
        this.need(1);
        if (this.b[this.off] === 0xff) { this.off++; break; }
        const start = this.off;
        const head = this.b[this.off++];
        if (head >> 5 !== major || (head & 31) === 31) throw new CborError(`bad chunk in an indefinite-length string at offset ${start}`);
        parts.push(this.bytesOrText(major, head & 31, depth + 1));
      }
      return Buffer.concat(parts);
    }
    const n = this.need(this.arg(info));
    const out = this.b.subarray(this.off, this.off + n);
    this.off += n;
    return out;
  }

  item(depth: number): CborValue {
    if (depth > MAX_DEPTH) throw new CborError(`nesting deeper than ${MAX_DEPTH} at offset ${this.off}`);
    this.need(1);
    const start = this.off;
    const head = this.b[this.off++];
    const major = head >> 5, info = head & 31;
    switch (major) {
      case 0: return this.arg(info);
      case 1: { const v = this.arg(info); return typeof v === 'bigint' ? -1n - v : -1 - v; }
      case 2: return Buffer.from(this.bytesOrText(2, info, depth));
      case 3: {
        const raw = this.bytesOrText(3, info, depth);
        try { return new TextDecoder('utf-8', { fatal: true }).decode(raw); } catch { throw new CborError(`invalid UTF-8 in a text string at offset ${start}`); }
      }
      case 4: {
        const out: CborValue[] = [];
        if (info === 31) {
          for (;;) { this.need(1); if (this.b[this.off] === 0xff) { this.off++; return out; } out.push(this.item(depth + 1)); }
        }
        const n = this.need(this.arg(info)); // every element takes at least one byte
        for (let i = 0; i < n; i++) out.push(this.item(depth + 1));
        return out;
      }
      case 5: {
        const out = new Map<CborValue, CborValue>();
        const put = () => {
          const at = this.off;
          const k = this.item(depth + 1);
          if (k instanceof Uint8Array || Array.isArray(k) || k instanceof Map || k instanceof Tagged) throw new CborError(`unsupported map key type at offset ${at}`);
          if (out.has(k)) throw new CborError(`duplicate map key ${String(k)} at offset ${at}`);
          out.set(k, this.item(depth + 1));
        };
        if (info === 31) {
          for (;;) { this.need(1); if (this.b[this.off] === 0xff) { this.off++; return out; } put(); }
        }
        const n = this.arg(info);
        this.need(typeof n === 'number' ? n * 2 : n);
        for (let i = 0; i < (n as number); i++) put();
        return out;
      }
      case 6: { const tag = this.arg(info); if (typeof tag === 'bigint') throw new CborError(`tag too large at offset ${start}`); return new Tagged(tag, this.item(depth + 1)); }
      case 7:
        switch (info) {
          case 20: return false;
          case 21: return true;
          case 22: return null;
          case 23: return undefined;
          case 26: { this.need(4); const v = this.view.getFloat32(this.off); this.off += 4; return v; }
          case 27: { this.need(8); const v = this.view.getFloat64(this.off); this.off += 8; return v; }
          default: throw new CborError(`unsupported simple value ${info} at offset ${start}`);
        }
      default: throw new CborError(`unexpected major type ${major} at offset ${start}`);
    }
  }
}

export function encodeCbor(v: CborValue): Buffer {
  const parts: Buffer[] = [];
  const head = (major: number, n: number | bigint) => {
    const m = major << 5;
    if (typeof n === 'bigint' || n > 0xffffffff) { const b = Buffer.alloc(9); b[0] = m | 27; b.writeBigUInt64BE(BigInt(n), 1); parts.push(b); }
    else if (n < 24) parts.push(Buffer.from([m | n]));
    else if (n < 0x100) parts.push(Buffer.from([m | 24, n]));
    else if (n < 0x10000) { const b = Buffer.alloc(3); b[0] = m | 25; b.writeUInt16BE(n, 1); parts.push(b); }
    else { const b = Buffer.alloc(5); b[0] = m | 26; b.writeUInt32BE(n, 1); parts.push(b); }
  };
  const enc = (x: CborValue) => {
    if (x === null) parts.push(Buffer.from([0xf6]));
    else if (x === undefined) parts.push(Buffer.from([0xf7]));
    else if (x === true) parts.push(Buffer.from([0xf5]));
    else if (x === false) parts.push(Buffer.from([0xf4]));
    else if (typeof x === 'number') {
      if (!Number.isInteger(x)) { const b = Buffer.alloc(9); b[0] = 0xfb; b.writeDoubleBE(x, 1); parts.push(b); }
      else if (x >= 0) head(0, x);
      else head(1, -1 - x);
    } else if (typeof x === 'bigint') { if (x >= 0n) head(0, x); else head(1, -1n - x); }
    else if (typeof x === 'string') { const b = Buffer.from(x, 'utf8'); head(3, b.length); parts.push(b); }
    else if (x instanceof Uint8Array) { head(2, x.length); parts.push(Buffer.from(x.buffer, x.byteOffset, x.byteLength)); }
    else if (Array.isArray(x)) { head(4, x.length); x.forEach(enc); }
    else if (x instanceof Map) { head(5, x.size); for (const [k, val] of x) { enc(k); enc(val); } }
    else if (x instanceof Tagged) { head(6, x.tag); enc(x.value); }
    else throw new CborError(`cannot encode ${typeof x}`);
  };
  enc(v);
  return Buffer.concat(parts);
}
