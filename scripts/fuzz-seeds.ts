// Seeds for the module's fuzzers from real traffic: starts an enclave app with three
// test tokens (RSA-2048, RSA-3072, EC P-256), sends it real requests (PING, LIST,
// LOGIN right and wrong, SIGN PKCS#1, PSS and ECDSA, DECRYPT, an EC key asked to
// decrypt, LOGOUT, a bad request) and records its raw replies.
// Writes p11-module/fuzz/corpus/wire/* (reply messages) and corpus/module/* (a
// call script followed by those replies as chunks, see fuzz_module.c).
// Usage: node --import tsx scripts/fuzz-seeds.ts
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import crypto from 'node:crypto';
import { startEnclave } from '../test/helpers/enclave.ts';
import { encodeRequest, decodeTokenList, Op, Hash, SignScheme, DecryptScheme, type Request } from '../shared/key-wire.ts';
import { PROJECT_ROOT } from '../src/paths.ts';

const fx = await startEnclave([{ label: 'fuzz', pin: '1234', names: ['fuzz.test'] }, { label: 'second', pin: 'abcdef', names: ['b.test'], bits: 3072 }, { label: 'ec', pin: 'ec-pin', names: ['ec.test'], keyType: 'ec-p256' }], { prefix: 'fuzz-seeds' });
const sock = net.connect(fx.socket);
await new Promise((r) => sock.once('connect', r));
let pending = Buffer.alloc(0);
const waiters: ((b: Buffer) => void)[] = [];
sock.on('data', (d) => {
  pending = Buffer.concat([pending, d]);
  while (pending.length >= 4 && pending.length >= 4 + pending.readUInt32BE(0)) {
    const n = pending.readUInt32BE(0);
    waiters.shift()?.(pending.subarray(4, 4 + n));
    pending = pending.subarray(4 + n);
  }
});
let id = 1;
const ask = (req: Request) => new Promise<Buffer>((resolve) => { waiters.push(resolve); sock.write(encodeRequest(id++, req)); });

const replies: [string, Buffer][] = [];
replies.push(['ping', await ask({ op: Op.PING })]);
const list = await ask({ op: Op.LIST });
replies.push(['list', list]);
const keyId = decodeTokenList(list.subarray(16))[0].keys[0].keyId;
replies.push(['login-wrong', await ask({ op: Op.LOGIN, label: 'fuzz', pin: Buffer.from('0000') })]);
replies.push(['login', await ask({ op: Op.LOGIN, label: 'fuzz', pin: Buffer.from('1234') })]);
const digest = crypto.createHash('sha256').update('seed').digest();
replies.push(['sign-pkcs1', await ask({ op: Op.SIGN, keyId, scheme: SignScheme.PKCS1, hash: Hash.SHA256, mgfHash: 0, saltLength: 0, data: digest })]);
replies.push(['sign-pss', await ask({ op: Op.SIGN, keyId, scheme: SignScheme.PSS, hash: Hash.SHA256, mgfHash: Hash.SHA256, saltLength: 32, data: digest })]);
const ct = crypto.publicEncrypt({ key: fx.tokens[0].certPem, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, Buffer.from('secret'));
replies.push(['decrypt-oaep', await ask({ op: Op.DECRYPT, keyId, scheme: DecryptScheme.OAEP, hash: Hash.SHA256, mgfHash: Hash.SHA256, oaepLabel: Buffer.alloc(0), data: ct })]);
replies.push(['sign-unknown-key', await ask({ op: Op.SIGN, keyId: keyId + 999, scheme: SignScheme.PKCS1, hash: Hash.SHA256, mgfHash: 0, saltLength: 0, data: digest })]);
replies.push(['logout', await ask({ op: Op.LOGOUT, label: 'fuzz' })]);
const ecKeyId = decodeTokenList(list.subarray(16)).find((t) => t.label === 'ec')!.keys[0].keyId;
await ask({ op: Op.LOGIN, label: 'ec', pin: Buffer.from('ec-pin') });
replies.push(['sign-ecdsa', await ask({ op: Op.SIGN, keyId: ecKeyId, scheme: SignScheme.ECDSA, hash: 0, mgfHash: 0, saltLength: 0, data: digest })]);
replies.push(['decrypt-ec-key', await ask({ op: Op.DECRYPT, keyId: ecKeyId, scheme: DecryptScheme.PKCS1, hash: 0, mgfHash: 0, oaepLabel: Buffer.alloc(0), data: Buffer.alloc(64) })]);
sock.destroy();
await fx.cleanup();

const corpus = path.join(PROJECT_ROOT, 'p11-module/fuzz/corpus');
for (const d of ['wire', 'module']) fs.mkdirSync(path.join(corpus, d), { recursive: true });
for (const [name, msg] of replies) fs.writeFileSync(path.join(corpus, 'wire', name), msg);

// Module seeds: a script (open a session on slot 1, log in with "1234", find the
// private key, sign) and replies as chunks that the fake enclave makes into
// answers to whatever the module asks.
const chunk = (msg: Buffer) => Buffer.concat([Buffer.from([3, msg.length >> 8, msg.length & 0xff]), msg]);
const le8 = (v: number) => { const b = Buffer.alloc(8); b.writeUInt32LE(v); return b; };
const script = Buffer.concat([
  Buffer.from([0, 2, 1, 0]), // C_OpenSession(slot 1) -> session 0
  Buffer.from([0, 3, 4]), Buffer.from('1234'), Buffer.from([1]), // C_Login(USER, "1234")
  Buffer.from([0, 4, 1, 0, 8]), le8(3), Buffer.from([0, 8]), // C_FindObjects(CKA_CLASS = CKO_PRIVATE_KEY)
  Buffer.from([0, 6, 32, 3, 0, 1, 16, 2, 0, 0]), // C_SignInit(SHA256_RSA_PKCS, key 1) + C_Sign
  Buffer.from([0, 0, 8, 0, 0]), // C_GetSlotList
]);
const seed = (name: string, msgs: Buffer[]) => {
  const head = Buffer.alloc(2);
  head.writeUInt16BE(script.length);
  fs.writeFileSync(path.join(corpus, 'module', name), Buffer.concat([head, script, ...msgs.map(chunk)]));
};
const r = Object.fromEntries(replies);
seed('flow', [r.list, r.login, r.ping, r['sign-pkcs1'], r.list]);
seed('flow-wrong-pin', [r.list, r['login-wrong'], r.ping, r['sign-unknown-key']]);
seed('flow-pss', [r.list, r.login, r.list, r['sign-pss'], r.ping, r['decrypt-oaep']]);
seed('flow-ecdsa', [r.list, r.login, r['sign-ecdsa'], r.list, r['decrypt-ec-key']]);
process.stderr.write(`fuzz seeds: ${replies.length} replies in ${corpus}/wire, 4 scripts in ${corpus}/module\n`);
