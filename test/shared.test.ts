// Pieces shared by the agent and the enclave app: addresses, framing, the key
// channel codec, the RSA padding code, and the vsock transport's failure modes.
import test from 'ava';
import net from 'node:net';
import crypto from 'node:crypto';
import { parseAddress, formatAddress } from '../shared/address.ts';
import { FrameSplitter, FrameTooLarge } from '../shared/framing.ts';
import { encodeTokenList, decodeTokenList, encodeRequest, decodeRequest, Op, SignScheme, DecryptScheme, Hash, KeyType } from '../shared/key-wire.ts';
import { listen, connect } from '../shared/transport.ts';
import { sign, decrypt } from '../enclave/rsa-ops.ts';
import { CKR, P11Error } from '../shared/pkcs11-rv.ts';
import { native, type EcdsaKey, type RsaKey } from '../shared/native.ts';

test('addresses: both forms parse and print back; errors say what is wrong', (t) => {
  for (const a of ['unix:path=/run/nitro-acm/keys.sock', 'vsock:cid=16;port=9999']) t.is(formatAddress(parseAddress(a)), a);
  t.deepEqual(parseAddress('vsock:port=10000;cid=4294967295'), { kind: 'vsock', cid: 4294967295, port: 10000 });
  t.throws(() => parseAddress('tcp:host=x'), { message: /unknown scheme "tcp"/ });
  t.throws(() => parseAddress('vsock:cid=16'), { message: /missing port=/ });
  t.throws(() => parseAddress('vsock:cid=x;port=1'), { message: /cid must be an integer/ });
  t.throws(() => parseAddress('vsock:cid=1;port=2;color=red'), { message: /unknown field "color"/ });
  t.throws(() => parseAddress('unix:'), { message: /missing path=/ });
  t.throws(() => parseAddress('/run/x.sock'), { message: /expected unix:path=/ });
});

test('framing: frames split across and packed into chunks come out whole; oversize is refused before buffering', (t) => {
  const frames: Buffer[] = [];
  const s = new FrameSplitter(100, (f) => frames.push(f));
  const a = encodeRequest(1, { op: Op.PING }), b = encodeRequest(2, { op: Op.LOGIN, label: 'x', pin: Buffer.from('1234') });
  const all = Buffer.concat([a, b, a]);
  for (const byte of all) s.push(Buffer.from([byte]));
  s.push(all);
  t.is(frames.length, 6);
  t.deepEqual(frames[1], b.subarray(4));
  t.is(s.pending, 0);
  const e = t.throws(() => s.push(Buffer.from([0, 0, 1, 0])), { instanceOf: FrameTooLarge });
  t.is(e?.size, 256);
});

test('key channel codec: requests and token lists survive a round trip; truncation is an error', (t) => {
  const req = { op: Op.SIGN, keyId: 9, scheme: SignScheme.PSS, hash: Hash.SHA384, mgfHash: Hash.SHA384, saltLength: 48, data: crypto.randomBytes(48) } as const;
  t.deepEqual(decodeRequest(encodeRequest(5, req).subarray(4)), req);
  const tokens = [{ label: 'a', serial: '01', keys: [{ keyType: KeyType.RSA, keyId: 1, flags: 0, ckaId: Buffer.alloc(20, 7), label: 'a', modulus: crypto.randomBytes(256), publicExponent: Buffer.from([1, 0, 1]), certificates: [{ category: 1, der: crypto.randomBytes(700) }] }] }];
  const body = encodeTokenList(tokens);
  t.deepEqual(decodeTokenList(body), tokens);
  t.throws(() => decodeTokenList(body.subarray(0, body.length - 1)), { message: /truncated certificate/ });
  t.throws(() => decodeRequest(encodeRequest(1, req).subarray(4, 20)), { message: /truncated/ });
});

test('RSA padding: PKCS#1 v1.5 and PSS verify; bad decrypt padding and oversize input give the right CK_RV', (t) => {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const digest = crypto.createHash('sha256').update('m').digest();
  const pss = sign({ key: privateKey, modulusBits: 2048, scheme: SignScheme.PSS, hash: Hash.SHA256, mgfHash: Hash.SHA256, saltLength: 32, data: digest });
  t.true(crypto.verify('sha256', Buffer.from('m'), { key: publicKey, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, pss));
  const rvOf = (fn: () => unknown) => { try { fn(); return CKR.OK; } catch (e) { return e instanceof P11Error ? e.rv : -1; } };
  t.is(rvOf(() => sign({ key: privateKey, modulusBits: 2048, scheme: SignScheme.PKCS1, hash: 0, mgfHash: 0, saltLength: 0, data: Buffer.alloc(246) })), CKR.DATA_LEN_RANGE);
  t.is(rvOf(() => sign({ key: privateKey, modulusBits: 2048, scheme: SignScheme.PSS, hash: Hash.SHA256, mgfHash: Hash.SHA256, saltLength: 300, data: digest })), CKR.MECHANISM_PARAM_INVALID);
  t.is(rvOf(() => sign({ key: privateKey, modulusBits: 2048, scheme: SignScheme.RAW, hash: 0, mgfHash: 0, saltLength: 0, data: Buffer.alloc(256, 0xff) })), CKR.DATA_INVALID);
  // A block that decrypts to something not starting 00 02 is refused.
  const notType2 = crypto.publicEncrypt({ key: publicKey, padding: crypto.constants.RSA_NO_PADDING }, Buffer.concat([Buffer.from([0, 1]), Buffer.alloc(254, 0x11)]));
  t.is(rvOf(() => decrypt({ key: privateKey, modulusBits: 2048, scheme: DecryptScheme.PKCS1, hash: 0, mgfHash: 0, oaepLabel: Buffer.alloc(0), data: notType2 })), CKR.ENCRYPTED_DATA_INVALID);
  const ok = crypto.publicEncrypt({ key: publicKey, padding: crypto.constants.RSA_PKCS1_PADDING }, Buffer.from('premaster'));
  t.deepEqual(decrypt({ key: privateKey, modulusBits: 2048, scheme: DecryptScheme.PKCS1, hash: 0, mgfHash: 0, oaepLabel: Buffer.alloc(0), data: ok }), Buffer.from('premaster'));
});

test('vsock transport: listening works here; connecting to an absent CID fails within its timeout with a named error', async (t) => {
  const server = net.createServer();
  try {
    await listen(server, { kind: 'vsock', cid: 0xffffffff, port: 40000 + crypto.randomInt(20000) });
    t.true(server.listening);
    server.close();
  } catch (e) {
    // Kernels without a vsock transport: the error must still be a clean one.
    t.regex((e as Error).message, /vsock listen/);
  }
  const started = Date.now();
  // CID 77 is not this host (never CID 1 or 2 here): nothing answers there.
  const err = await t.throwsAsync(connect({ kind: 'vsock', cid: 77, port: 9999 }, 500));
  t.regex(err!.message, /vsock connect to cid 77 port 9999/);
  t.true(Date.now() - started < 5000);
});

test('ECDSA over a given digest (native addon, for CKM_ECDSA): P-256 and P-384 verify as r||s; other keys and bad arguments are refused', (t) => {
  for (const [curve, hash, size] of [['P-256', 'sha256', 64], ['P-384', 'sha384', 96], ['P-384', 'sha256', 96]] as const) {
    const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: curve });
    const data = crypto.randomBytes(100);
    const sig = native().ecdsaSignDigest(native().ecdsaKey(privateKey.export({ type: 'pkcs8', format: 'der' })), crypto.createHash(hash).update(data).digest());
    t.is(sig.length, size, `${curve}: r||s`);
    t.true(crypto.verify(hash, data, { key: publicKey, dsaEncoding: 'ieee-p1363' }, sig), `${curve} over ${hash}`);
  }
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'der' });
  t.throws(() => native().ecdsaKey(rsa), { message: 'not an EC private key' });
  t.throws(() => native().ecdsaKey(Buffer.from('not a key')), { message: 'not an EC private key' });
  t.throws(() => native().ecdsaKey(Buffer.alloc(5000)), { message: /a key of 1\.\.4096 bytes/ });
  const ec = native().ecdsaKey(crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'der' }));
  t.throws(() => native().ecdsaSignDigest(ec, Buffer.alloc(65)), { message: /a digest of 1\.\.64 bytes/ });
  t.throws(() => native().ecdsaSignDigest(rsa as unknown as EcdsaKey, Buffer.alloc(32)), { message: /a key from ecdsaKey\(\)/ });
  t.throws(() => native().ecdsaSignDigest(native().rsaKey(rsa) as unknown as EcdsaKey, Buffer.alloc(32)), { message: /a key from ecdsaKey\(\)/ }, 'an RSA handle is refused, not misread');
});

test('RSA signatures in the native addon: PKCS#1 v1.5 over a DigestInfo, PSS over a digest, raw; each verifies; other keys, handles and bad inputs are refused', (t) => {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const key = native().rsaKey(privateKey.export({ type: 'pkcs8', format: 'der' }));
  const data = crypto.randomBytes(100);
  const digest = crypto.createHash('sha256').update(data).digest();
  const digestInfo = Buffer.concat([Buffer.from('3031300d060960864801650304020105000420', 'hex'), digest]);
  t.true(crypto.verify('sha256', data, publicKey, native().rsaSignDigest(key, 'pkcs1', digestInfo)), 'PKCS#1 v1.5');
  for (const [hash, salt] of [['sha256', 32], ['sha384', 48], ['sha512', 0]] as const) {
    const d = crypto.createHash(hash).update(data).digest();
    for (let i = 0; i < 2; i++) { // the second uses the key context the first made
      const sig = native().rsaSignDigest(key, 'pss', d, hash, hash, salt);
      t.true(crypto.verify(hash, data, { key: publicKey, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: salt }, sig), `PSS ${hash} salt ${salt}`);
    }
  }
  const em = Buffer.concat([Buffer.from([0]), crypto.randomBytes(255)]);
  t.deepEqual(crypto.publicDecrypt({ key: publicKey, padding: crypto.constants.RSA_NO_PADDING }, native().rsaSignDigest(key, 'raw', em)), em, 'raw');
  t.throws(() => native().rsaSignDigest(key, 'raw', Buffer.alloc(256, 0xff)), { message: 'raw RSA input is not below the modulus' });
  t.throws(() => native().rsaSignDigest(key, 'raw', Buffer.alloc(255)), { message: /as long as the modulus/ });
  t.throws(() => native().rsaSignDigest(key, 'pkcs1', Buffer.alloc(246)), { message: /longer than the key allows/ });
  t.throws(() => native().rsaSignDigest(key, 'pss', Buffer.alloc(31), 'sha256', 'sha256', 32), { message: /a digest of the hash's size/ });
  t.throws(() => native().rsaSignDigest(key, 'pss', digest, 'md-unknown', 'sha256', 32), { message: /a known hash/ });
  t.throws(() => native().rsaSignDigest(key, 'pss', digest, 'sha256', 'sha256', 300), { message: /signing failed|cannot sign with these parameters/ });
  t.throws(() => native().rsaSignDigest(key, 'rot13' as 'raw', digest), { message: /scheme is pkcs1, pss/ });
  const ecPkcs8 = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'der' });
  t.throws(() => native().rsaKey(ecPkcs8), { message: 'not an RSA private key' });
  t.throws(() => native().rsaKey(Buffer.alloc(9000)), { message: /1\.\.8192 bytes/ });
  t.throws(() => native().rsaSignDigest(native().ecdsaKey(ecPkcs8) as unknown as RsaKey, 'pkcs1', digestInfo), { message: /a key from rsaKey\(\)/ }, 'an EC handle is refused, not misread');
});
