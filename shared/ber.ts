// A small BER/DER reader and DER writer for the ASN.1 that KMS speaks (CMS
// EnvelopedData, indefinite lengths included). Lengths are checked against the
// bytes left, nesting is bounded, and errors name the offset.

export class BerError extends Error {}

export interface BerNode {
  /** The identifier octet(s) as one number: class (2 bits) | constructed (1 bit) | tag number, as in the first octet for low tag numbers. */
  tag: number;
  constructed: boolean;
  /** Content of a primitive node. */
  value: Buffer;
  children: BerNode[];
  offset: number;
}

const MAX_DEPTH = 24;

export function parseBer(data: Buffer): BerNode {
  const r = { off: 0 };
  const node = readNode(data, r, data.length, 0);
  if (r.off !== data.length) throw new BerError(`${data.length - r.off} bytes after the ASN.1 value`);
  return node;
}

function readNode(b: Buffer, r: { off: number }, end: number, depth: number): BerNode {
  if (depth > MAX_DEPTH) throw new BerError(`nesting deeper than ${MAX_DEPTH} at offset ${r.off}`);
  const offset = r.off;
  if (r.off >= end) throw new BerError(`truncated at offset ${offset}: expected a tag`);
  const first = b[r.off++];
  if ((first & 0x1f) === 0x1f) throw new BerError(`multi-byte tag at offset ${offset} is not supported`);
  const constructed = (first & 0x20) !== 0;
  if (r.off >= end) throw new BerError(`truncated at offset ${r.off}: expected a length`);
  const lb = b[r.off++];
  const node: BerNode = { tag: first, constructed, value: Buffer.alloc(0), children: [], offset };
  if (lb === 0x80) {
    if (!constructed) throw new BerError(`indefinite length on a primitive value at offset ${offset}`);
    for (;;) {
      if (end - r.off < 2) throw new BerError(`truncated at offset ${r.off}: no end-of-contents for the indefinite length at offset ${offset}`);
      if (b[r.off] === 0 && b[r.off + 1] === 0) { r.off += 2; return node; }
      node.children.push(readNode(b, r, end, depth + 1));
    }
  }
  let len = lb;
  if (lb & 0x80) {
    const n = lb & 0x7f;
    if (n > 4) throw new BerError(`length of ${n} bytes at offset ${offset} is too long`);
    if (end - r.off < n) throw new BerError(`truncated at offset ${r.off}: length bytes`);
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + b[r.off++];
  }
  if (len > end - r.off) throw new BerError(`truncated at offset ${offset}: ${len} content bytes announced, ${end - r.off} left`);
  const contentEnd = r.off + len;
  if (constructed) {
    while (r.off < contentEnd) node.children.push(readNode(b, r, contentEnd, depth + 1));
  } else {
    node.value = b.subarray(r.off, contentEnd);
    r.off = contentEnd;
  }
  return node;
}

/** The bytes of an OCTET STRING (or an IMPLICIT-tagged one), primitive or constructed of primitive pieces. */
export function octets(n: BerNode, what: string): Buffer {
  if (!n.constructed) return n.value;
  return Buffer.concat(n.children.map((c, i) => {
    if (c.tag !== 0x04) throw new BerError(`${what}: piece ${i} is not an OCTET STRING`);
    return octets(c, what);
  }));
}

export function oid(n: BerNode, what: string): string {
  if (n.tag !== 0x06 || n.constructed) throw new BerError(`${what}: expected an OBJECT IDENTIFIER at offset ${n.offset}`);
  const v = n.value;
  if (v.length === 0) throw new BerError(`${what}: empty OBJECT IDENTIFIER`);
  const parts = [Math.min(2, Math.floor(v[0] / 40)), v[0] - 40 * Math.min(2, Math.floor(v[0] / 40))];
  let acc = 0;
  for (let i = 1; i < v.length; i++) {
    acc = acc * 128 + (v[i] & 0x7f);
    if (!(v[i] & 0x80)) { parts.push(acc); acc = 0; }
  }
  return parts.join('.');
}

export function expect(n: BerNode | undefined, tag: number, what: string): BerNode {
  if (!n) throw new BerError(`${what}: missing`);
  if ((n.tag & ~0x20) !== (tag & ~0x20)) throw new BerError(`${what}: tag 0x${n.tag.toString(16)} at offset ${n.offset}, expected 0x${tag.toString(16)}`);
  return n;
}

// ---- writer (DER for definite values; indefinite wrappers where KMS uses them) ----

function lengthBytes(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

export function der(tag: number, ...content: Buffer[]): Buffer {
  const body = Buffer.concat(content);
  return Buffer.concat([Buffer.from([tag]), lengthBytes(body.length), body]);
}

/** A constructed value with indefinite length (tag | 0x20 is applied). */
export function indefinite(tag: number, ...content: Buffer[]): Buffer {
  return Buffer.concat([Buffer.from([tag | 0x20, 0x80]), ...content, Buffer.from([0, 0])]);
}

export function derOid(dotted: string): Buffer {
  const p = dotted.split('.').map(Number);
  const out = [40 * p[0] + p[1]];
  for (const x of p.slice(2)) {
    const enc = [x & 0x7f];
    for (let v = Math.floor(x / 128); v > 0; v = Math.floor(v / 128)) enc.unshift(0x80 | (v & 0x7f));
    out.push(...enc);
  }
  return der(0x06, Buffer.from(out));
}

export function derInt(n: number): Buffer {
  return der(0x02, Buffer.from([n]));
}
