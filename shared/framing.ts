// Length-prefixed framing (u32 big-endian length, then that many bytes) over any
// byte stream: both channels, both transports (unix and vsock) use this one piece.
export class FrameTooLarge extends Error {
  constructor(readonly size: number, readonly max: number) {
    super(`frame of ${size} bytes exceeds the limit of ${max}`);
  }
}

/**
 * Splits a byte stream into frames. With push(), buffers at most one frame plus
 * its header; with feed() and next(), what was fed until it is taken. A header
 * announcing more than `max` bytes is an error before any of it is read.
 */
export class FrameSplitter {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private want = -1; // body length of the frame being read, -1 while reading the header

  constructor(
    private readonly max: number,
    private readonly onFrame: (frame: Buffer) => void = () => {},
  ) {}

  /** Feeds bytes and hands every whole frame to onFrame; throws FrameTooLarge (the caller drops the connection). */
  push(chunk: Buffer): void {
    this.feed(chunk);
    for (let f = this.next(); f; f = this.next()) this.onFrame(f);
  }

  /** Feeds bytes without taking frames out (a server that takes requests only as fast as it answers them). */
  feed(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    this.header();
  }

  /** The next whole frame, or undefined until more bytes come; throws FrameTooLarge. */
  next(): Buffer | undefined {
    if (!this.header() || this.buffered < this.want) return undefined;
    const frame = this.take(this.want);
    this.want = -1;
    this.header(); // a too-large next frame is an error now, before its bytes are waited for
    return frame;
  }

  /** Reads the next frame's length if it is here; true once it is known. */
  private header(): boolean {
    if (this.want >= 0) return true;
    if (this.buffered < 4) return false;
    const size = this.take(4).readUInt32BE(0);
    if (size > this.max) throw new FrameTooLarge(size, this.max);
    this.want = size;
    return true;
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
