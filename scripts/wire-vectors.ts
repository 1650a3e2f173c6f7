// Golden vectors of the key channel and the address grammar, made from the
// TypeScript side (shared/key-wire.ts, shared/address.ts), which defines
// the format: `node --import tsx scripts/wire-vectors.ts` writes
// test/vectors/key-wire.txt. The C module's tests (p11-module/tests/vectors_test.c)
// encode the same requests and must get the same bytes, decode the same token
// lists and must read the same fields, and parse the same addresses with the
// same verdict; test/wire-vectors.test.ts checks the file is what this makes.
//
// One vector a line, fields separated by one space, "-" for an empty hex field:
//   list|ping ID FRAME
//   login ID LABEL PIN FRAME            logout ID LABEL FRAME
//   sign ID KEYID SCHEME HASH MGF SALT DATA FRAME
//   decrypt ID KEYID SCHEME HASH MGF OAEPLABEL DATA FRAME
//   tokenlist BODY SUMMARY              (SUMMARY: malformed | overcap | the fields)
//   address TEXT VERDICT                (VERDICT: bad | vsock:CID:PORT | unix:PATH)
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { encodeRequest, encodeTokenList, Op, Hash, SignScheme, DecryptScheme, CertCategory, KeyFlag, KeyType, LIST_CAPS, type WireKey, type WireToken } from '../shared/key-wire.ts';
import { parseAddress } from '../shared/address.ts';

const hex = (b: Uint8Array) => (b.length ? Buffer.from(b).toString('hex') : '-');
const bytes = (n: number, seed: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff));

/** A token list as the C test prints what it decoded: tokens by "|", keys by ";", certificates by ",". */
export function summary(tokens: WireToken[]): string {
  return tokens.map((t) => `${t.label}/${t.serial}/${t.keys.map((k) => `${k.keyId}.${k.flags}.${hex(k.ckaId)}.${k.label}.${k.keyType}.${(k.keyType === KeyType.RSA ? k.modulus : k.ecParams).length}.${(k.keyType === KeyType.RSA ? k.publicExponent : k.ecPoint).length}.${k.certificates.map((c) => `${c.category}:${c.der.length}`).join(',') || '-'}`).join(';') || '-'}`).join('|') || '-';
}

export function wireVectors(): string {
  const lines: string[] = [];
  const req = (name: string, id: number, fields: (string | number)[], frame: Buffer) => lines.push([name, id, ...fields, hex(frame)].join(' '));
  req('list', 1, [], encodeRequest(1, { op: Op.LIST }));
  req('ping', 0xfffffffe, [], encodeRequest(0xfffffffe, { op: Op.PING }));
  for (const [label, pin] of [['www', Buffer.from('0123456789abcdef')], ['x'.repeat(32), bytes(255, 7)], ['t', Buffer.from('1')]] as const) {
    req('login', 42, [label, hex(pin)], encodeRequest(42, { op: Op.LOGIN, label, pin }));
  }
  req('logout', 43, ['www'], encodeRequest(43, { op: Op.LOGOUT, label: 'www' }));
  for (const [scheme, hash, mgf, salt, n] of [[SignScheme.PKCS1, Hash.SHA256, 0, 0, 51], [SignScheme.PSS, Hash.SHA384, Hash.SHA384, 48, 48], [SignScheme.RAW, 0, 0, 0, 512], [SignScheme.ECDSA, 0, 0, 0, 48]]) {
    const data = bytes(n, scheme);
    req('sign', 7, [0x12345678, scheme, hash, mgf, salt, hex(data)], encodeRequest(7, { op: Op.SIGN, keyId: 0x12345678, scheme, hash, mgfHash: mgf, saltLength: salt, data }));
  }
  for (const [scheme, hash, mgf, label] of [[DecryptScheme.PKCS1, 0, 0, Buffer.alloc(0)], [DecryptScheme.OAEP, Hash.SHA256, Hash.SHA1, Buffer.from('label')], [DecryptScheme.RAW, 0, 0, Buffer.alloc(0)]] as const) {
    const data = bytes(256, 3);
    req('decrypt', 9, [1, scheme, hash, mgf, hex(label), hex(data)], encodeRequest(9, { op: Op.DECRYPT, keyId: 1, scheme, hash, mgfHash: mgf, oaepLabel: label, data }));
  }
  const certsOf = (certs: number[]) => certs.map((n, i) => ({ category: i ? CertCategory.AUTHORITY : CertCategory.LEAF, der: bytes(n, i) }));
  const key = (keyId: number, flags: number, id: Buffer, label: string, certs: number[]): WireKey => ({ keyType: KeyType.RSA, keyId, flags, ckaId: id, label, modulus: bytes(256, keyId), publicExponent: Buffer.from([1, 0, 1]), certificates: certsOf(certs) });
  // P-256 (the OID 1.2.840.10045.3.1.7) and P-384 (1.3.132.0.34) keys: CKA_EC_PARAMS and an uncompressed point.
  const ecKey = (keyId: number, oid: string, field: number): WireKey => ({ keyType: KeyType.EC, keyId, flags: 0, ckaId: bytes(20, keyId), label: 'ec', ecParams: Buffer.from(oid, 'hex'), ecPoint: Buffer.concat([Buffer.from([4]), bytes(2 * field, keyId)]), certificates: certsOf([500]) });
  const lists: WireToken[][] = [
    [],
    [{ label: 'www', serial: '0123456789abcdef', keys: [key(1, 0, bytes(20, 1), 'www', [900, 800])] }],
    [
      { label: 'renewed', serial: 'aa', keys: [key(2, 0, bytes(20, 2), 'renewed', [700]), key(3, KeyFlag.RETIRED, bytes(20, 3), 'renewed', [700])] },
      { label: 'filedb', serial: 'bb', keys: [key(4, 0, Buffer.from([1]), 'acm-key', [600]), key(5, 0, Buffer.from([2]), 'k'.repeat(255), [])] },
      { label: 'empty', serial: '', keys: [] },
    ],
    [{ label: 'ecdsa', serial: 'cc', keys: [ecKey(6, '06082a8648ce3d030107', 32), ecKey(7, '06052b81040022', 48)] }],
  ];
  for (const l of lists) lines.push(`tokenlist ${hex(encodeTokenList(l))} ${summary(l)}`);
  const good = encodeTokenList(lists[1]);
  lines.push(`tokenlist ${hex(good.subarray(0, good.length - 1))} malformed`);
  lines.push(`tokenlist ${hex(Buffer.concat([good, Buffer.from([0])]))} malformed`);
  // EC keys whose curve or point both sides refuse: not an OID, an OID whose length lies, a compressed point, an even length, too long.
  const badEc = (ecParams: Buffer, ecPoint: Buffer): WireToken[] => [{ label: 'bad-ec', serial: '', keys: [{ ...ecKey(8, '06082a8648ce3d030107', 32), ecParams, ecPoint } as WireKey] }];
  const point = Buffer.concat([Buffer.from([4]), bytes(64, 8)]);
  for (const l of [
    badEc(Buffer.from('04082a8648ce3d030107', 'hex'), point),
    badEc(Buffer.from('06092a8648ce3d030107', 'hex'), point),
    badEc(Buffer.from('06082a8648ce3d030107', 'hex'), Buffer.concat([Buffer.from([2]), bytes(32, 8)])),
    badEc(Buffer.from('06082a8648ce3d030107', 'hex'), point.subarray(0, 64)),
    badEc(Buffer.from('06082a8648ce3d030107', 'hex'), Buffer.concat([Buffer.from([4]), bytes(134, 8)])),
  ]) lines.push(`tokenlist ${hex(encodeTokenList(l))} malformed`);
  const over = Buffer.alloc(2);
  over.writeUInt16BE(LIST_CAPS.tokens + 1);
  lines.push(`tokenlist ${hex(over)} overcap`);
  for (const text of ['vsock:cid=16;port=9999', 'vsock:port=1;cid=2', 'vsock:cid=4294967295;port=0', 'vsock:cid=16;port=9999;', 'vsock:cid=01;port=2',
    'vsock:cid=16;cid=17;port=1', 'vsock:cid=16', 'vsock:cid=4294967296;port=1', 'vsock:cid=+1;port=1', 'vsock:cid=-0;port=1', 'vsock:cid=1;port=2;x=3', 'vsock:cid=;port=1',
    'unix:path=/run/nitro-acm/keys.sock', `unix:path=/${'p'.repeat(106)}`, `unix:path=/${'p'.repeat(107)}`, 'unix:path=', 'unix:path=/a;x=1', 'tcp:host=1', 'nonsense']) {
    let verdict: string;
    try { const a = parseAddress(text); verdict = a.kind === 'unix' ? `unix:${a.path}` : `vsock:${a.cid}:${a.port}`; } catch { verdict = 'bad'; }
    lines.push(`address ${text} ${verdict}`);
  }
  return lines.join('\n') + '\n';
}

export const VECTORS_FILE = path.join(path.dirname(fileURLToPath(import.meta.url)), '../test/vectors/key-wire.txt');

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  fs.writeFileSync(VECTORS_FILE, wireVectors());
  process.stdout.write(`${VECTORS_FILE}: ${wireVectors().split('\n').length - 1} vectors\n`);
}
