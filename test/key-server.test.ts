// The key channel from the enclave's side: protocol rules, and clients that
// misbehave (oversized, truncated, garbage, wrong version) without disturbing
// well-behaved ones.
import test from 'ava';
import net from 'node:net';
import crypto from 'node:crypto';
import { startEnclave, type EnclaveFixture } from './helpers/enclave.ts';
import { KeyClient } from './helpers/key-client.ts';
import { Op, SignScheme, Hash, KeyType, decodeTokenList, encodeRequest, KEY_WIRE_VERSION, LIST_CAPS } from '../shared/key-wire.ts';
import { CKR } from '../shared/pkcs11-rv.ts';
import fs from 'node:fs';
import path from 'node:path';
import { KeyStore, KeyView } from '../enclave/keystore.ts';
import { KeyServer } from '../enclave/key-server.ts';
import { CompactAfterBurst } from '../enclave/heap-compaction.ts';
import { createCA, issueServerCert } from '../src/local/pki.ts';
import { createCertificate } from '../shared/x509.ts';
import { parseCertificate } from '../shared/certificate-cache.ts';
import { tmpdir } from './helpers/enclave.ts';

let fx: EnclaveFixture;
// 'guess' is the wrong-PIN test's alone: a right PIN from a test running beside it would reset the throttle it measures.
test.before(async () => { fx = await startEnclave([{ label: 'proto', pin: '5555', names: ['proto.test'] }, { label: 'guess', pin: '5555', names: ['guess.test'] }], { prefix: 'proto' }); });
test.after.always(async () => { await fx?.cleanup(); });

async function listKey(c: KeyClient) {
  const r = await c.call({ op: Op.LIST });
  t0(r.rv === CKR.OK);
  return decodeTokenList(r.body)[0].keys[0];
}
function t0(cond: boolean) { if (!cond) throw new Error('precondition failed'); }

async function stillServes(): Promise<boolean> {
  const c = await KeyClient.connect(fx.socket);
  try { return (await c.call({ op: Op.PING })).rv === CKR.OK; } finally { c.close(); }
}

test('LIST is public and carries the certificate and public key, nothing private', async (t) => {
  const c = await KeyClient.connect(fx.socket);
  const r = await c.call({ op: Op.LIST });
  t.is(r.rv, CKR.OK);
  const [tok] = decodeTokenList(r.body);
  t.is(tok.label, 'proto');
  const jwk = crypto.createPublicKey(fx.tokens[0].certPem).export({ format: 'jwk' });
  t.deepEqual(tok.keys[0].keyType === KeyType.RSA && tok.keys[0].modulus, Buffer.from(jwk.n!, 'base64url'));
  t.is(new crypto.X509Certificate(tok.keys[0].certificates[0].der).fingerprint256, new crypto.X509Certificate(fx.tokens[0].certPem).fingerprint256);
  const d = crypto.createPrivateKey(fx.tokens[0].keyPem).export({ format: 'jwk' }).d!;
  t.false(r.body.includes(Buffer.from(d, 'base64url')), 'private exponent absent');
  c.close();
});

test('signing needs a login on the same connection; a wrong PIN is refused and then throttled', async (t) => {
  const c = await KeyClient.connect(fx.socket);
  const key = decodeTokenList((await c.call({ op: Op.LIST })).body).find((x) => x.label === 'guess')!.keys[0];
  const digest = crypto.createHash('sha256').update('x').digest();
  const sign = () => c.call({ op: Op.SIGN, keyId: key.keyId, scheme: SignScheme.PSS, hash: Hash.SHA256, mgfHash: Hash.SHA256, saltLength: 32, data: digest });
  t.is((await sign()).rv, CKR.USER_NOT_LOGGED_IN);
  let started = 0;
  for (let i = 0; i < 3; i++) {
    started = Date.now(); // the next check waits 100 ms from the third wrong PIN, however late it is asked for
    t.is((await c.call({ op: Op.LOGIN, label: 'guess', pin: Buffer.from('0000') })).rv, CKR.PIN_INCORRECT);
  }
  t.is((await c.call({ op: Op.LOGIN, label: 'guess', pin: Buffer.from('5555') })).rv, CKR.OK);
  t.true(Date.now() - started >= 90, 'the attempt after three wrong PINs waits');
  t.is((await c.call({ op: Op.LOGIN, label: 'nope', pin: Buffer.from('5555') })).rv, CKR.TOKEN_NOT_PRESENT);
  const r = await sign();
  t.is(r.rv, CKR.OK);
  t.true(crypto.verify('sha256', Buffer.from('x'), { key: fx.tokens[1].certPem, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }, r.body));
  t.true(fx.log().includes('wrong PIN'), 'wrong PINs are logged');
  t.false(fx.log().includes('0000'), 'the PIN itself is not');
  // Another connection is not logged in.
  const other = await KeyClient.connect(fx.socket);
  t.is((await other.call({ op: Op.SIGN, keyId: key.keyId, scheme: SignScheme.PKCS1, hash: 0, mgfHash: 0, saltLength: 0, data: Buffer.alloc(10) })).rv, CKR.USER_NOT_LOGGED_IN);
  other.close();
  c.close();
});

test('many requests in flight on one connection get their own replies', async (t) => {
  const c = await KeyClient.connect(fx.socket);
  const key = await listKey(c);
  await c.call({ op: Op.LOGIN, label: 'proto', pin: Buffer.from('5555') });
  const msgs = Array.from({ length: 40 }, (_, i) => Buffer.from(`message ${i}`));
  const sigs = await Promise.all(msgs.map((m) => c.call({ op: Op.SIGN, keyId: key.keyId, scheme: SignScheme.PKCS1, hash: 0, mgfHash: 0, saltLength: 0, data: Buffer.concat([Buffer.from('3031300d060960864801650304020105000420', 'hex'), crypto.createHash('sha256').update(m).digest()]) })));
  sigs.forEach((r, i) => t.true(r.rv === CKR.OK && crypto.verify('sha256', msgs[i], fx.tokens[0].certPem, r.body), `reply ${i}`));
  c.close();
});

test('unknown operations and malformed bodies get CKR_ARGUMENTS_BAD and the connection stays usable', async (t) => {
  const c = await KeyClient.connect(fx.socket);
  const unknown = Buffer.from([0, 0, 0, 8, KEY_WIRE_VERSION, 0x42, 0, 0, 0, 0, 0, 1]);
  const short = Buffer.from([0, 0, 0, 10, KEY_WIRE_VERSION, Op.SIGN, 0, 0, 0, 0, 0, 2, 0, 0]);
  const replies: Buffer[] = [];
  c.sock.removeAllListeners('data');
  c.sock.on('data', (d) => replies.push(d));
  c.sock.write(Buffer.concat([unknown, short]));
  await new Promise((r) => setTimeout(r, 300));
  const all = Buffer.concat(replies);
  t.is(all.readUInt32BE(4 + 8), CKR.ARGUMENTS_BAD);
  t.true(all.toString('latin1').includes('truncated'));
  c.close();
  t.true(await stillServes());
});

for (const [name, bytes] of [
  ['a frame announcing 1 GiB', Buffer.from([0x40, 0, 0, 0, 1, 2, 3])],
  ['a frame shorter than its header', Buffer.from([0, 0, 0, 3, 1, 1, 0])],
  ['garbage', Buffer.concat([Buffer.from([0xff]), crypto.randomBytes(4095)])],
  ['a wrong protocol version', encodeRequest(1, { op: Op.PING }).fill(99, 4, 5)],
] as const) {
  test(`a client sending ${name} is dropped; others are served`, async (t) => {
    const s = net.connect(fx.socket);
    await new Promise((r) => s.once('connect', r));
    s.on('error', () => {});
    s.on('data', () => {});
    const closed = new Promise<boolean>((r) => { s.once('close', () => r(true)); setTimeout(() => r(false), 3000); });
    s.write(bytes);
    t.true(await closed, 'the server closed the connection');
    t.true(await stillServes());
  });
}

test('mutated SIGN requests after a login: each gets one reply in order, an OK one is a valid signature over what was asked, and the server keeps serving', async (t) => {
  // The native key channel (shared/native/native.c) answers a valid SIGN of a
  // logged-in connection itself and leaves everything else to JavaScript: hostile
  // bodies reach that parser here, on a connection that passes its login check.
  const c = await KeyClient.connect(fx.socket);
  const key = await listKey(c);
  t0(key.keyType === KeyType.RSA);
  t.is((await c.call({ op: Op.LOGIN, label: 'proto', pin: Buffer.from('5555') })).rv, CKR.OK);
  const pub = crypto.createPublicKey({ key: { kty: 'RSA', n: (key as { modulus: Buffer }).modulus.toString('base64url'), e: (key as { publicExponent: Buffer }).publicExponent.toString('base64url') }, format: 'jwk' });
  const k = (key as { modulus: Buffer }).modulus.length;
  const digest = crypto.createHash('sha256').update('fuzz').digest();
  const digestInfo = Buffer.concat([Buffer.from('3031300d060960864801650304020105000420', 'hex'), digest]);
  const raw = Buffer.concat([Buffer.from([0]), crypto.randomBytes(k - 1)]);
  const seeds = [
    encodeRequest(0, { op: Op.SIGN, keyId: key.keyId, scheme: SignScheme.PKCS1, hash: 0, mgfHash: 0, saltLength: 0, data: digestInfo }),
    encodeRequest(0, { op: Op.SIGN, keyId: key.keyId, scheme: SignScheme.PSS, hash: Hash.SHA256, mgfHash: Hash.SHA256, saltLength: 32, data: digest }),
    encodeRequest(0, { op: Op.SIGN, keyId: key.keyId, scheme: SignScheme.RAW, hash: 0, mgfHash: 0, saltLength: 0, data: raw }),
    encodeRequest(0, { op: Op.SIGN, keyId: key.keyId, scheme: SignScheme.ECDSA, hash: 0, mgfHash: 0, saltLength: 0, data: digest }),
  ].map((f) => f.subarray(4));
  let seed = 7;
  const rand = (n: number) => { seed = (seed * 1103515245 + 12345) >>> 0; return seed % n; };
  const frames: Buffer[] = [];
  for (let id = 1; id <= 1500; id++) {
    let body = Buffer.from(seeds[id % seeds.length]);
    // Mutate after the version and op (which keep it a SIGN): a byte or two, a length field, or the size.
    const how = rand(4);
    if (how === 0) body[8 + rand(body.length - 8)] = rand(256);
    else if (how === 1) { body[8 + 12] = rand(256); body[8 + 13] = rand(256); }
    else if (how === 2) body = body.subarray(0, 8 + rand(body.length - 8));
    else if (how === 3) body = Buffer.concat([body, crypto.randomBytes(1 + rand(40))]);
    if (id % 10 === 0) body = Buffer.from(seeds[id % seeds.length]); // and some untouched
    body.writeUInt32BE(id, 4);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(body.length);
    frames.push(len, body);
  }
  const sent = new Map<number, Buffer>();
  for (let i = 1; i < frames.length; i += 2) sent.set(frames[i].readUInt32BE(4), frames[i]);
  const replies: { id: number; rv: number; body: Buffer }[] = [];
  const { FrameSplitter } = await import('../shared/framing.ts');
  const split = new FrameSplitter(1 << 20, (f) => replies.push({ id: f.readUInt32BE(4), rv: f.readUInt32BE(8), body: f.subarray(16) }));
  c.sock.removeAllListeners('data');
  c.sock.on('data', (d) => split.push(d));
  c.sock.write(Buffer.concat(frames));
  for (let waited = 0; replies.length < 1500 && waited < 20_000; waited += 50) await new Promise((r) => setTimeout(r, 50));
  t.is(replies.length, 1500, 'one reply per request');
  t.deepEqual(replies.map((r) => r.id), [...sent.keys()], 'in the order sent');
  let ok = 0;
  for (const r of replies) {
    if (r.rv !== CKR.OK) continue;
    ok++;
    const body = sent.get(r.id)!;
    const scheme = body[8 + 4], data = body.subarray(8 + 14, 8 + 14 + body.readUInt16BE(8 + 12));
    t.is(r.body.length, k, `request ${r.id}: a signature as long as the modulus`);
    if (scheme === SignScheme.PKCS1) t.deepEqual(crypto.publicDecrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_PADDING }, r.body), data, `request ${r.id}: PKCS#1 over what was asked`);
    else if (scheme === SignScheme.RAW) t.deepEqual(crypto.publicDecrypt({ key: pub, padding: crypto.constants.RSA_NO_PADDING }, r.body), Buffer.concat([Buffer.alloc(k - data.length), data]), `request ${r.id}: raw over what was asked`);
    else t.is(scheme, SignScheme.PSS, `request ${r.id}: only the RSA schemes sign with an RSA key`);
  }
  t.true(ok >= 150, `the untouched ones and some mutated ones signed (${ok})`);
  c.close();
  t.true(await stillServes());
});

test('a truncated frame followed by a hang-up leaves the server serving', async (t) => {
  const s = net.connect(fx.socket);
  await new Promise((r) => s.once('connect', r));
  s.on('error', () => {});
  s.end(encodeRequest(7, { op: Op.LIST }).subarray(0, 6));
  await new Promise((r) => s.once('close', r));
  t.true(await stillServes());
});

test('a renewal counts as done only once every key worker serves it, a worker busy with a burst of signatures included', async (t) => {
  // What the provisioning channel waits for before it answers (enclave/provision-server.ts):
  // the agent reloads the web server right after, and a web server whose connection
  // sits on a worker still holding the previous list would not find the new key.
  const ca = createCA('settle CA');
  const [before, after] = [issueServerCert(ca, ['settle.test'], { bits: 4096 }), issueServerCert(ca, ['settle.test'], { bits: 4096 })];
  const store = new KeyStore();
  const pin = Buffer.from('5555');
  store.put('settle', pin, { privateKeyPem: before.keyPem, certificatePem: before.certPem });
  const server = new KeyServer(store, { threads: 1 });
  const dir = tmpdir('settle');
  await server.listen({ kind: 'unix', path: path.join(dir, 'keys.sock') });
  try {
    const busy = await KeyClient.connect(path.join(dir, 'keys.sock'));
    const watcher = await KeyClient.connect(path.join(dir, 'keys.sock'));
    const key = await listKey(busy);
    t.is((await busy.call({ op: Op.LOGIN, label: 'settle', pin })).rv, CKR.OK);
    // One write of 150 RSA-4096 signatures keeps the only worker busy for a while.
    let answered = 0;
    const digest = crypto.createHash('sha256').update('x').digest();
    const burst = Promise.all(Array.from({ length: 150 }, () => busy.call({ op: Op.SIGN, keyId: key.keyId, scheme: SignScheme.PSS, hash: Hash.SHA256, mgfHash: Hash.SHA256, saltLength: 32, data: digest }).then((r) => { answered++; return r.rv; })));
    await new Promise((r) => setTimeout(r, 20));
    store.put('settle', pin, { privateKeyPem: after.keyPem, certificatePem: after.certPem });
    const settled = await server.settled();
    const answeredWhenSettled = answered;
    const listed = await watcher.call({ op: Op.LIST });
    t.true(settled);
    // The worker reads a connection 4 KiB at a time (about 70 of these requests) and takes messages between reads.
    t.true(answeredWhenSettled >= 30, `the worker took the change after signatures it was busy with (${answeredWhenSettled} of 150 answered when it said so)`);
    t.is(listed.generation, store.generation, 'a connection opened before the change lists the new generation at once');
    const current = decodeTokenList(listed.body)[0].keys.find((k) => k.flags === 0)!;
    t.deepEqual(current.keyType === KeyType.RSA && current.modulus, Buffer.from(crypto.createPublicKey(after.certPem).export({ format: 'jwk' }).n!, 'base64url'), 'and the renewed key as the current one');
    t.true((await burst).every((rv) => rv === CKR.OK));
    t.true(await server.settled(), 'with nothing changed it is settled at once');
    busy.close();
    watcher.close();
  } finally {
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a burst of key-store changes compacts every thread\'s heap once the store is quiet; a few changes do not', async (t) => {
  // enclave/heap-compaction.ts: the garbage of a provisioning burst is given back
  // after it (docs/BENCHMARKS.md has what this saves), not after each change.
  const ca = createCA('compaction CA');
  const leaf = issueServerCert(ca, ['compact.test']);
  const store = new KeyStore();
  let collections = 0;
  const server = new KeyServer(store, { threads: 2, compaction: { gc: () => { collections++; }, minChanges: 4, quietMs: 150 } });
  const put = (i: number) => store.put(`c${i}`, Buffer.from('5555'), { privateKeyPem: leaf.keyPem, certificatePem: leaf.certPem });
  try {
    for (let i = 0; i < 3; i++) put(i);
    await new Promise((r) => setTimeout(r, 400));
    t.is(collections, 0, 'three changes are not a burst');
    put(3);
    put(4);
    await new Promise((r) => setTimeout(r, 50));
    t.is(collections, 0, 'not while the store is still changing');
    for (let waited = 0; server.compactions === 0 && waited < 5000; waited += 50) await new Promise((r) => setTimeout(r, 50));
    t.is(collections, 1, 'one collection on the main thread for the burst');
    t.is(server.compactions, 1, 'and both workers did theirs');
    await new Promise((r) => setTimeout(r, 400));
    t.is(collections, 1, 'nothing more while nothing changes');
    t.true(await server.settled(), 'the workers serve the store as it is');
  } finally {
    await server.close();
  }
});

test('a long burst is compacted every maxChanges changes while it goes on, not only at its end', (t) => {
  const compacted: number[] = [];
  const c = new CompactAfterBurst((n) => compacted.push(n), { minChanges: 2, maxChanges: 5, quietMs: 60_000 });
  for (let i = 0; i < 12; i++) c.changed();
  c.stop();
  t.deepEqual(compacted, [5, 5], 'two compactions in twelve changes; the last two wait for the store to be quiet');
});

// Serial: the environment it changes is the one every worker started in this file inherits.
test.serial('key workers that cannot start are given up after three attempts in a row, not restarted for ever', async (t) => {
  // A worker loads the native addon as it starts (the key channel's connections are native);
  // one that cannot made the main thread start another, and another, logging each.
  const before = process.env.NITRO_ACM_NATIVE;
  process.env.NITRO_ACM_NATIVE = '/nonexistent/native.node';
  let given: Error | undefined;
  let calls = 0;
  const server = new KeyServer(new KeyStore(), { threads: 1, onWorkersCannotStart: (e) => { calls++; given = e; } });
  try {
    for (let waited = 0; !given && waited < 20_000; waited += 50) await new Promise((r) => setTimeout(r, 50));
    t.truthy(given, 'given up');
    t.regex(given!.message, /key worker threads cannot start \(3 attempts in a row\): native addon not built \(\/nonexistent\/native\.node\)/);
    await new Promise((r) => setTimeout(r, 500));
    t.is(calls, 1, 'once, and no further worker started');
  } finally {
    if (before === undefined) delete process.env.NITRO_ACM_NATIVE; else process.env.NITRO_ACM_NATIVE = before;
    await server.close();
  }
});

// Security finding 8 (issue 11): the module refuses a token list over LIST_CAPS
// whole, so the enclave app must never hold one: it refuses the token, the chain
// or the key that would take it over, and a renewal drops its oldest retired key.
test('the key store keeps its token list within the caps the module accepts', (t) => {
  const ca = createCA('caps CA');
  const leaf = issueServerCert(ca, ['caps.test']);
  const material = { privateKeyPem: leaf.keyPem, certificatePem: leaf.certPem, chainPem: ca.certPem };
  const store = new KeyStore();
  const pin = Buffer.from('caps-pin-0123456789');
  for (let i = 0; i < LIST_CAPS.tokens; i++) store.put(`t${i}`, pin, material);
  const e = t.throws(() => store.put('one-more', pin, material));
  t.is(e?.message, `token "one-more": the enclave holds at most ${LIST_CAPS.tokens} tokens`);
  t.is(decodeTokenList(store.listBody()).length, LIST_CAPS.tokens);

  // Renewals: the current key and at most keysPerToken - 1 retired ones are listed.
  for (let i = 0; i < LIST_CAPS.keysPerToken + 4; i++) store.put('t0', pin, material);
  const t0Keys = decodeTokenList(store.listBody()).find((x) => x.label === 't0')!.keys;
  t.is(t0Keys.length, LIST_CAPS.keysPerToken);
  t.is(t0Keys.filter((k) => k.flags === 0).length, 1);

  // A renewal with another PIN is refused and leaves the served key as it was.
  const current = store.token("t1")!.current[0].keyId;
  t.throws(() => store.put('t1', Buffer.from('another-pin-0123456'), material), { message: /cannot change its PIN/ });
  t.is(store.token("t1")!.current[0].keyId, current);
  t.is(store.token('t1')!.retired.length, 0);
  t.truthy(store.key(current));

  const long = new KeyStore();
  const chain = Array.from({ length: LIST_CAPS.certificatesPerKey }, () => ca.certPem).join('');
  t.throws(() => long.put('long', pin, { ...material, chainPem: chain }), { message: `certificate chain: ${LIST_CAPS.certificatesPerKey} certificates besides the leaf, at most ${LIST_CAPS.certificatesPerKey - 1}` });
});

test('a key worker that gets only the changes holds what a fresh snapshot holds, through adds, renewals, removals and a re-add; the list is shared, not copied', (t) => {
  const ca = createCA('delta CA');
  const material = () => { const leaf = issueServerCert(ca, ['delta.test']); return { privateKeyPem: leaf.keyPem, certificatePem: leaf.certPem, chainPem: ca.certPem }; };
  const store = new KeyStore();
  const pin = Buffer.from('delta-pin-0123456789');
  const sent = store.sentNow();
  let view = new KeyView(store.snapshot());
  const same = (step: string) => {
    const fresh = new KeyView(store.snapshot());
    t.true(view.listBody.equals(fresh.listBody), `${step}: list`);
    t.is(view.generation, fresh.generation, `${step}: generation`);
    for (const label of ['a', 'b', 'c']) {
      t.is(view.hasToken(label), fresh.hasToken(label), `${step}: ${label} listed`);
      t.is(view.identity(label), fresh.identity(label), `${step}: ${label} identity`);
      t.is(view.checkPin(label, pin), fresh.checkPin(label, pin), `${step}: ${label} PIN`);
    }
    for (const k of decodeTokenList(fresh.listBody).flatMap((x) => x.keys)) t.truthy(view.key(k.keyId), `${step}: key ${k.keyId}`);
    t.is(decodeTokenList(view.listBody).flatMap((x) => x.keys).filter((k) => !view.key(k.keyId)).length, 0, `${step}: no listed key missing`);
  };
  const steps: [string, () => void][] = [
    ['add a', () => store.put('a', pin, material())],
    ['add b and c', () => { store.put('b', pin, material()); store.put('c', pin, material()); }],
    ['renew a', () => store.put('a', pin, material())],
    ['remove b', () => store.remove('b')],
    ['re-add b', () => store.put('b', pin, material())],
    ['remove and re-add c in one delta (a new identity)', () => { store.remove('c'); store.put('c', pin, material()); }],
    ['retired keys expire', () => store.expireRetired(Date.now() + 365 * 86400_000)],
  ];
  for (const [step, change] of steps) {
    const before = view.identity('c');
    change();
    const delta = store.delta(sent);
    if (step.includes('one delta')) { t.deepEqual(delta.removeTokens, ['c']); t.deepEqual(delta.addTokens.map((x) => x.label), ['c']); t.not(store.token('c')!.identity, before); }
    // The list is in shared memory: posting it to a worker shares it.
    t.true(delta.listBody.buffer instanceof SharedArrayBuffer, `${step}: shared list`);
    t.true(delta.addKeys.length <= 2, `${step}: only new keys sent`);
    view = view.apply(delta);
    same(step);
  }
  t.false(view.checkPin('a', Buffer.from('wrong')));
});

test('the key store refuses a private key that is not the certificate\'s, whatever the two key types', (t) => {
  const ca = createCA('match CA');
  const rsa = [issueServerCert(ca, ['a.test']), issueServerCert(ca, ['b.test'])];
  const p256 = [issueServerCert(ca, ['c.test'], { keyType: 'ec-p256' }), issueServerCert(ca, ['d.test'], { keyType: 'ec-p256' })];
  const p384 = issueServerCert(ca, ['e.test'], { keyType: 'ec-p384' });
  // An RSA-PSS certificate key (JWK cannot show it): refused, not a crash.
  const pss = crypto.generateKeyPairSync('rsa-pss', { modulusLength: 2048 });
  const pssCert = createCertificate({ subject: { CN: 'pss.test' }, issuer: new crypto.X509Certificate(ca.certPem), publicKey: pss.publicKey, signingKey: crypto.createPrivateKey(ca.keyPem), notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 86_400_000) });
  const store = new KeyStore();
  const pin = Buffer.from('match-pin-0123456789');
  const cases: [string, string, string][] = [
    ['rsa key, other rsa certificate', rsa[0].keyPem, rsa[1].certPem],
    ['p256 key, other p256 certificate', p256[0].keyPem, p256[1].certPem],
    ['p256 key, p384 certificate', p256[0].keyPem, p384.certPem],
    ['p256 key, rsa certificate', p256[0].keyPem, rsa[0].certPem],
    ['rsa key, p256 certificate', rsa[0].keyPem, p256[0].certPem],
    ['rsa key, rsa-pss certificate', rsa[0].keyPem, pssCert.toString()],
  ];
  for (const [what, privateKeyPem, certificatePem] of cases) {
    t.throws(() => store.put('m', pin, { privateKeyPem, certificatePem, chainPem: ca.certPem }), { message: 'private key does not match the certificate\'s public key' }, what);
  }
  t.is(store.token('m'), undefined);
  [rsa[1], p256[1], p384].forEach((own, i) => t.notThrows(() => store.put(`own-${i}`, pin, { privateKeyPem: own.keyPem, certificatePem: own.certPem, chainPem: ca.certPem })));
});

test('certificates parsed once and reused: a garbage chain entry is refused by position every time, and a cached chain lists the same bytes', (t) => {
  const ca = createCA('cache CA');
  const leaf = issueServerCert(ca, ['cache.test']);
  const store = new KeyStore();
  const pin = Buffer.from('cache-pin-0123456789');
  const garbage = '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n';
  for (let i = 0; i < 2; i++) {
    t.throws(() => store.put('g', pin, { privateKeyPem: leaf.keyPem, certificatePem: leaf.certPem, chainPem: ca.certPem + garbage }), { message: /^certificate chain entry 2: cannot parse/ }, `attempt ${i + 1}: a failure is not remembered as a certificate`);
  }
  t.is(store.token('g'), undefined);
  // The same leaf and chain for two tokens, and more distinct certificates than the cache holds in between.
  store.put('a', pin, { privateKeyPem: leaf.keyPem, certificatePem: leaf.certPem, chainPem: ca.certPem });
  for (let i = 0; i < 70; i++) parseCertificate(issueServerCert(ca, [`filler${i}.test`], { keyType: 'ec-p256' }).certPem);
  store.put('b', pin, { privateKeyPem: leaf.keyPem, certificatePem: leaf.certPem, chainPem: ca.certPem });
  const [a, b] = ['a', 'b'].map((l) => decodeTokenList(store.listBody()).find((x) => x.label === l)!.keys[0].certificates.map((c) => Buffer.from(c.der).toString('hex')));
  t.deepEqual(a, b);
  t.is(a[0], new crypto.X509Certificate(leaf.certPem).raw.toString('hex'));
});
