// Bounds-checked big-endian reader and a growable writer for the binary key channel.
export class DecodeError extends Error {}

export class Reader {
  private off = 0;
  constructor(private readonly buf: Buffer) {}
  private need(n: number, what: string): void {
    if (this.off + n > this.buf.length) {
      throw new DecodeError(`truncated ${what}: need ${n} bytes at offset ${this.off}, have ${this.buf.length - this.off}`);
    }
  }
  u8(what = 'u8'): number { this.need(1, what); return this.buf[this.off++]; }
  u16(what = 'u16'): number { this.need(2, what); const v = this.buf.readUInt16BE(this.off); this.off += 2; return v; }
  u32(what = 'u32'): number { this.need(4, what); const v = this.buf.readUInt32BE(this.off); this.off += 4; return v; }
  bytes(n: number, what = 'bytes'): Buffer { this.need(n, what); const v = this.buf.subarray(this.off, this.off + n); this.off += n; return v; }
  bytes8(what?: string): Buffer { return this.bytes(this.u8(what), what); }
  bytes16(what?: string): Buffer { return this.bytes(this.u16(what), what); }
  bytes32(what?: string): Buffer { return this.bytes(this.u32(what), what); }
  str8(what?: string): string { return this.bytes8(what).toString('utf8'); }
  get remaining(): number { return this.buf.length - this.off; }
  end(what: string): void {
    if (this.off !== this.buf.length) throw new DecodeError(`${this.buf.length - this.off} trailing bytes after ${what}`);
  }
}

export class Writer {
  private buf: Buffer;
  private off = 0;
  constructor(size = 256) { this.buf = Buffer.allocUnsafe(size); }
  private room(n: number): void {
    if (this.off + n <= this.buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.off + n));
    this.buf.copy(next, 0, 0, this.off);
    this.buf = next;
  }
  u8(v: number): this { this.room(1); this.buf[this.off++] = v; return this; }
  u16(v: number): this { this.room(2); this.buf.writeUInt16BE(v, this.off); this.off += 2; return this; }
  u32(v: number): this { this.room(4); this.buf.writeUInt32BE(v >>> 0, this.off); this.off += 4; return this; }
  raw(b: Uint8Array): this { this.room(b.length); this.buf.set(b, this.off); this.off += b.length; return this; }
  private sized(b: Uint8Array, max: number, lenWriter: (n: number) => this): this {
    if (b.length > max) throw new RangeError(`field of ${b.length} bytes exceeds ${max}`);
    lenWriter(b.length);
    return this.raw(b);
  }
  bytes8(b: Uint8Array): this { return this.sized(b, 0xff, (n) => this.u8(n)); }
  bytes16(b: Uint8Array): this { return this.sized(b, 0xffff, (n) => this.u16(n)); }
  bytes32(b: Uint8Array): this { return this.sized(b, 0xffffffff, (n) => this.u32(n)); }
  str8(s: string): this { return this.bytes8(Buffer.from(s, 'utf8')); }
  /** Patch a u32 written earlier (used for the frame length prefix). */
  setU32(at: number, v: number): this { this.buf.writeUInt32BE(v >>> 0, at); return this; }
  get length(): number { return this.off; }
  finish(): Buffer { return this.buf.subarray(0, this.off); }
}
