// The enclave app's two servers against hostile peers: a flood of connections, a
// client that sends one byte at a time, and (provisioning channel) frames that are
// not JSON, too big, of another version or an unknown operation. Each server stays
// up, its memory stays bounded, and well-behaved clients keep being served.
import test from 'ava';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import crypto from 'node:crypto';
import { startLocalEnclave, type LocalEnclave } from '../src/local/enclave-process.ts';
import { simulatedNsmRoot } from '../enclave/nsm-simulated.ts';
import { KeyClient, ConnectionClosed } from './helpers/key-client.ts';
import { openFileLimit } from '../enclave/key-server.ts';
import { ProvisionClient, MAX_PROVISION_FRAME, PROVISION_VERSION } from '../shared/provision-wire.ts';
import { jsonFrame as frameOf } from '../shared/json-frames.ts';
import { Op, SignScheme, Hash, decodeTokenList, encodeRequest } from '../shared/key-wire.ts';
import { CKR } from '../shared/pkcs11-rv.ts';
import { createCA, issueServerCert } from '../src/local/pki.ts';
import { tmpdir } from './helpers/enclave.ts';
import { runAsNobody } from './helpers/unprivileged.ts';

const jsonFrame = (m: object) => frameOf(m, MAX_PROVISION_FRAME);

const dir = tmpdir('hostile');
let enclave: LocalEnclave;
const keySock = path.join(dir, 'keys.sock');
const provSock = path.join(dir, 'provision.sock');
const rssMiB = () => Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${enclave.proc.pid}/status`, 'utf8'))![1]) / 1024;

test.before(async () => {
  const ca = createCA('hostile CA');
  const leaf = issueServerCert(ca, ['hostile.test']);
  fs.writeFileSync(path.join(dir, 'key.pem'), leaf.keyPem, { mode: 0o600 });
  fs.writeFileSync(path.join(dir, 'cert.pem'), leaf.certPem);
  fs.writeFileSync(path.join(dir, 'chain.pem'), ca.certPem);
  fs.writeFileSync(path.join(dir, 'tokens.json'), JSON.stringify({ tokens: [{ label: 'hostile', pin: '2468', key: 'key.pem', certificate: 'cert.pem', chain: 'chain.pem' }] }), { mode: 0o600 });
  simulatedNsmRoot(path.join(dir, 'nsm'));
  enclave = await startLocalEnclave({ keyAddress: `unix:path=${keySock}`, plaintextKeys: path.join(dir, 'tokens.json'), args: ['--provision-address', `unix:path=${provSock}`, '--nsm-sim-dir', path.join(dir, 'nsm')] });
});
test.after.always(async () => { await enclave?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });

/**
 * A well-behaved module: log in and sign; the signature must be a real one. Like
 * the PKCS#11 module, it connects again when the enclave closed its connection
 * (an enclave at its connection limit closes its idlest, or a new one at once).
 */
async function signs(at = keySock): Promise<boolean> {
  for (let attempt = 1; ; attempt++) {
    const c = await KeyClient.connect(at);
    try {
      const key = decodeTokenList((await c.call({ op: Op.LIST })).body)[0].keys[0];
      if ((await c.call({ op: Op.LOGIN, label: 'hostile', pin: Buffer.from('2468') })).rv !== CKR.OK) return false;
      const r = await c.call({ op: Op.SIGN, keyId: key.keyId, scheme: SignScheme.PKCS1, hash: Hash.SHA256, mgfHash: 0, saltLength: 0, data: crypto.createHash('sha256').update('x').digest() });
      return r.rv === CKR.OK && r.body.length === 256;
    } catch (e) {
      if (!(e instanceof ConnectionClosed) || attempt >= 5) throw e;
      await new Promise((r) => setTimeout(r, 200));
    } finally { c.close(); }
  }
}

const connectRaw = (p: string) => new Promise<net.Socket>((resolve, reject) => { const s = net.connect(p, () => resolve(s)); s.on('error', reject); });

/** Opens n connections one after another; half also send the start of a frame and stop. */
async function flood(at: string, n: number): Promise<{ sockets: net.Socket[]; closedByServer: () => number }> {
  const sockets: net.Socket[] = [];
  let closed = 0;
  for (let i = 0; i < n; i++) {
    const s = await connectRaw(at).catch(() => undefined);
    if (!s) break;
    s.on('error', () => {});
    s.on('close', () => { closed++; });
    if (i % 2) s.write(encodeRequest(i, { op: Op.LIST }).subarray(0, 5));
    sockets.push(s);
  }
  return { sockets, closedByServer: () => closed };
}

test.serial('key channel: a flood of up to 1000 connections held open; a well-behaved client still signs and memory stays bounded', async (t) => {
  // This process holds the flood's sockets too: where its own open-file limit is
  // 1024 (CI machines), it opens what fits beside its other descriptors.
  const n = Math.min(1000, openFileLimit() - 128);
  const before = rssMiB();
  const f = await flood(keySock, n);
  try {
    t.is(f.sockets.length, n, `${f.sockets.length} connections accepted`);
    t.true(await signs(), 'a well-behaved client signs during the flood');
    const during = rssMiB();
    t.log(`enclave app RSS ${before.toFixed(0)} MiB before, ${during.toFixed(0)} MiB with ${n} connections open (${f.closedByServer()} closed by the enclave app)`);
    t.true(during - before < 64, `memory bounded (+${(during - before).toFixed(0)} MiB)`);
  } finally { for (const s of f.sockets) s.destroy(); }
  await new Promise((r) => setTimeout(r, 500));
  t.true(await signs(), 'and after it');
});

test.serial('key channel at its open-file limit (256): a flood of 1000 is taken in by closing the idlest; the enclave app stays within its limit and a well-behaved client signs', async (t) => {
  const sock = path.join(dir, 'keys-limited.sock');
  const limited = await startLocalEnclave({ keyAddress: `unix:path=${sock}`, plaintextKeys: path.join(dir, 'tokens.json'), wrapper: ['prlimit', '--nofile=256:256'] });
  t.teardown(() => limited.stop());
  const max = Number(/at most (\d+) connections/.exec(limited.output())?.[1]);
  t.true(max > 0 && max <= 256 - 128, `the enclave app holds at most ${max} connections with 256 descriptors`);
  const early = await KeyClient.connect(sock); // quiet from here on: the first to go
  const fds = () => fs.readdirSync(`/proc/${limited.proc.pid}/fd`).length;
  let peakFds = 0;
  const f = await flood(sock, 1000);
  try {
    peakFds = fds();
    t.is(f.sockets.length, 1000, 'every connection attempt got through (none refused by a full backlog)');
    await new Promise((r) => setTimeout(r, 300));
    t.true(f.closedByServer() >= 1000 - max - 32, `${f.closedByServer()} idle connections closed by the enclave app`);
    await early.closed;
    t.pass('the connection quiet longest was among them');
    t.true(await signs(sock), 'a well-behaved client signs during the flood');
    t.true(peakFds < 256, `${peakFds} descriptors in use at the peak, under the limit of 256`);
    t.regex(limited.output(), /key channel: \d+ connections, at its limit of \d+: closing those idle longest/);
  } finally { for (const s of f.sockets) s.destroy(); }
  t.is(limited.proc.exitCode, null, 'the enclave app is still running');
});

test.serial('key channel: a client sending one byte every 20 ms does not hold up others, and gets its answer', async (t) => {
  const slow = await connectRaw(keySock);
  const frame = encodeRequest(1, { op: Op.PING });
  let answered = false;
  slow.on('data', () => { answered = true; });
  const dripping = (async () => { for (const b of frame) { slow.write(Buffer.from([b])); await new Promise((r) => setTimeout(r, 20)); } })();
  const started = Date.now();
  t.true(await signs());
  t.true(Date.now() - started < frame.length * 20, 'the well-behaved client finished before the slow one had sent its request');
  await dripping;
  await new Promise((r) => setTimeout(r, 200));
  t.true(answered, 'the slow client got its reply');
  slow.destroy();
});

async function provisionRaw(bytes: Buffer): Promise<{ reply?: Record<string, unknown>; closed: boolean }> {
  const s = await connectRaw(provSock);
  return new Promise((resolve) => {
    let buf = Buffer.alloc(0);
    const done = (closed: boolean) => { s.destroy(); resolve({ reply: buf.length >= 4 ? JSON.parse(buf.subarray(4, 4 + buf.readUInt32BE(0)).toString()) as Record<string, unknown> : undefined, closed }); };
    s.on('data', (d) => { buf = Buffer.concat([buf, d]); if (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) done(false); });
    s.on('close', () => done(true));
    s.on('error', () => {});
    setTimeout(() => done(false), 3000);
    s.write(bytes);
  });
}

for (const [name, bytes, expect] of [
  ['a frame that is not JSON', (() => { const b = Buffer.from('{not json'); const h = Buffer.alloc(4); h.writeUInt32BE(b.length); return Buffer.concat([h, b]); })(), /BadRequest: frame is not JSON/],
  ['another protocol version', jsonFrame({ v: 99, id: 1, op: 'health' }), /UnsupportedVersion: provisioning version 99; this enclave speaks 1/],
  ['an unknown operation', jsonFrame({ v: PROVISION_VERSION, id: 1, op: 'format-disk' }), /BadRequest: unknown operation "format-disk" \(expected health, describe, add, update, refresh, remove\)/],
  ['an add without a bundle', jsonFrame({ v: PROVISION_VERSION, id: 1, op: 'add', label: 'x', pin: '1234' }), /BadRequest: .*bundle/],
] as const) {
  test(`provisioning channel: ${name} gets a typed error naming it`, async (t) => {
    const r = await provisionRaw(bytes);
    const e = r.reply?.error as { code: string; message: string } | undefined;
    t.regex(`${e?.code}: ${e?.message}`, expect);
    t.true(await provisionHealthy());
  });
}

async function provisionHealthy(): Promise<boolean> {
  const c = await ProvisionClient.connect({ kind: 'unix', path: provSock });
  try { return (await c.call<{ ok: boolean }>('health', {}, 5000)).ok; } finally { c.close(); }
}

test('provisioning channel: a frame over 1 MiB is dropped without being read', async (t) => {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(MAX_PROVISION_FRAME + 1);
  const r = await provisionRaw(Buffer.concat([head, Buffer.alloc(1024)]));
  t.true(r.closed, 'the connection is closed');
  t.true(await provisionHealthy());
});

test.serial('provisioning channel: a flood of connections from an unprivileged user is refused before it counts, so the agent is never locked out', async (t) => {
  // The agent talks now and then during the flood; the flood comes from another user (nobody).
  fs.chmodSync(dir, 0o711);
  fs.chmodSync(provSock, 0o666);
  const agent = await ProvisionClient.connect({ kind: 'unix', path: provSock });
  let answered = 0;
  const flooding = runAsNobody<{ connected: number; closedByServer: number }>(`
    let connected = 0, closedByServer = 0;
    const sockets = [];
    for (let i = 0; i < 200; i++) {
      await new Promise((resolve) => {
        const s = net.connect(args.path, () => { connected++; resolve(); });
        s.on('error', () => resolve());
        s.on('close', () => { closedByServer++; });
        sockets.push(s);
      });
    }
    await new Promise((r) => setTimeout(r, 500));
    for (const s of sockets) s.destroy();
    return { connected, closedByServer };`, { path: provSock });
  for (let i = 0; i < 20; i++) {
    if ((await agent.call<{ ok: boolean }>('health', {}, 5000)).ok) answered++;
    await new Promise((r) => setTimeout(r, 20));
  }
  const f = await flooding;
  t.is(f.connected, 200, 'every connection attempt reached the server');
  t.is(f.closedByServer, 200, 'and each was closed by it at once');
  t.is(answered, 20, 'the agent, talking during the flood, was answered every time');
  t.false(agent.closed, 'and kept its connection');
  t.true(await provisionHealthy(), 'a new connection during the flood is answered');
  agent.close();
});
