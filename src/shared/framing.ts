// Length-prefixed framing (u32 big-endian length, then that many bytes) over any
// byte stream: both channels, both transports (unix and vsock) use this one piece.
export class FrameTooLarge extends Error {
  constructor(readonly size: number, readonly max: number) {
    super(`frame of ${size} bytes exceeds the limit of ${max}`);
  }
}

/**
 * Splits a byte stream into frames. Buffers at most one frame plus its header;
 * a header announcing more than `max` bytes is an error before any of it is read.
 */
export class FrameSplitter {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private want = -1; // body length of the frame being read, -1 while reading the header

  constructor(
    private readonly max: number,
    private readonly onFrame: (frame: Buffer) => void,
  ) {}

  /** Feeds bytes; throws FrameTooLarge (the caller drops the connection). */
  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    for (;;) {
      if (this.want < 0) {
        if (this.buffered < 4) return;
        const size = this.take(4).readUInt32BE(0);
        if (size > this.max) throw new FrameTooLarge(size, this.max);
        this.want = size;
      }
      if (this.buffered < this.want) return;
      const frame = this.take(this.want);
      this.want = -1;
      this.onFrame(frame);
    }
  }

  /** Bytes held for an incomplete frame (for memory bounds and idle checks). */
  get pending(): number { return this.buffered; }

  private take(n: number): Buffer {
    let out: Buffer;
    const first = this.chunks[0];
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift(); else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let off = 0;
      while (off < n) {
        const c = this.chunks[0];
        const k = Math.min(c.length, n - off);
        c.copy(out, off, 0, k);
        off += k;
        if (k === c.length) this.chunks.shift(); else this.chunks[0] = c.subarray(k);
      }
    }
    this.buffered -= n;
    return out;
  }
}
