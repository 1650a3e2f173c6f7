// The attacks of the security review (issue 11), each done the way a local user of
// the parent instance did it, against a real enclave app; each must now fail.
// docs/RELIABILITY.md's "Security" table lists them with the test that proves each.
import test from 'ava';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import crypto from 'node:crypto';
import { startLocalEnclave, type LocalEnclave } from '../src/local/enclave-process.ts';
import { simulatedNsmRoot } from '../enclave/nsm-simulated.ts';
import { KeyClient } from './helpers/key-client.ts';
import { runAsNobody, SEND_AND_SEE } from './helpers/unprivileged.ts';
import { ProvisionClient, ProvisionError, PROVISION_VERSION, MAX_PROVISION_FRAME } from '../shared/provision-wire.ts';
import { jsonFrame as frameOf } from '../shared/json-frames.ts';
import { provisioningRefusal } from '../enclave/provision-server.ts';
import { Op, SignScheme, Hash, decodeTokenList, encodeRequest } from '../shared/key-wire.ts';
import { CKR } from '../shared/pkcs11-rv.ts';
import { kmsHost } from '../shared/aws-partition.ts';
import { PinThrottle, FREE_ATTEMPTS } from '../enclave/pin-throttle.ts';
import { createCA, issueServerCert } from '../src/local/pki.ts';
import { tmpdir } from './helpers/enclave.ts';

const jsonFrame = (m: object) => frameOf(m, MAX_PROVISION_FRAME);

const dir = tmpdir('security');
fs.chmodSync(dir, 0o711); // as if the sockets were somewhere any local user can reach
const keySock = path.join(dir, 'keys.sock');
const provSock = path.join(dir, 'provision.sock');
const ca = createCA('security CA');
const leaf = issueServerCert(ca, ['victim.test']);
let enclave: LocalEnclave;
const rssMiB = () => Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${enclave.proc.pid}/status`, 'utf8'))![1]) / 1024;
const plaintextBundle = (key = leaf.keyPem) => ({ certificate: leaf.certPem, certificateChain: ca.certPem, encryptionMethod: 'plaintext', encryptedPrivateKey: Buffer.from(key).toString('base64') });
const digest = crypto.createHash('sha256').update('hello').digest();

test.before(async () => {
  fs.writeFileSync(path.join(dir, 'key.pem'), leaf.keyPem, { mode: 0o600 });
  fs.writeFileSync(path.join(dir, 'cert.pem'), leaf.certPem);
  fs.writeFileSync(path.join(dir, 'chain.pem'), ca.certPem);
  // "victim" is the token under attack; "bulk-*" make the token list (a LIST reply) large.
  const tokens = [{ label: 'victim', pin: '2468' }, { label: 'guessed', pin: '7531' }, ...Array.from({ length: 24 }, (_, i) => ({ label: `bulk-${i}`, pin: 'bulkbulk' }))]
    .map((t) => ({ ...t, key: 'key.pem', certificate: 'cert.pem', chain: 'chain.pem' }));
  fs.writeFileSync(path.join(dir, 'tokens.json'), JSON.stringify({ tokens }), { mode: 0o600 });
  simulatedNsmRoot(path.join(dir, 'nsm'));
  enclave = await startLocalEnclave({ keyAddress: `unix:path=${keySock}`, plaintextKeys: path.join(dir, 'tokens.json'), args: ['--provision-address', `unix:path=${provSock}`, '--nsm-sim-dir', path.join(dir, 'nsm')] });
  fs.chmodSync(provSock, 0o666); // so only the enclave app's own check stands between a local user and the channel
});
test.after.always(async () => { await enclave?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });

async function provision<T = Record<string, unknown>>(op: string, args: Record<string, unknown> = {}): Promise<T> {
  const c = await ProvisionClient.connect({ kind: 'unix', path: provSock });
  try { return await c.call<T>(op, args, 10_000); } finally { c.close(); }
}

async function login(c: KeyClient, label: string, pin: string): Promise<number> {
  return (await c.call({ op: Op.LOGIN, label, pin: Buffer.from(pin) })).rv;
}

async function keyIdOf(c: KeyClient, label: string): Promise<number> {
  return decodeTokenList((await c.call({ op: Op.LIST })).body).find((t) => t.label === label)!.keys[0].keyId;
}

const signWith = (c: KeyClient, keyId: number) => c.call({ op: Op.SIGN, keyId, scheme: SignScheme.PKCS1, hash: Hash.SHA256, mgfHash: 0, saltLength: 0, data: digest });

// Finding 1 --------------------------------------------------------------------

test.serial('1. an unprivileged local user cannot describe, add, update or remove tokens on the provisioning channel', async (t) => {
  const frames = [
    jsonFrame({ v: PROVISION_VERSION, id: 1, op: 'describe' }),
    jsonFrame({ v: PROVISION_VERSION, id: 2, op: 'add', label: 'mine', pin: '0000', bundle: plaintextBundle() }),
    jsonFrame({ v: PROVISION_VERSION, id: 3, op: 'update', label: 'victim', pin: '0000', bundle: plaintextBundle() }),
    jsonFrame({ v: PROVISION_VERSION, id: 4, op: 'remove', label: 'victim' }),
  ].map((f) => f.toString('base64'));
  const r = await runAsNobody<{ connected: boolean; reply: string; closedByServer: boolean }>(SEND_AND_SEE, { path: provSock, frames });
  t.true(r.connected, 'the socket itself is reachable (mode 0666): the refusal is the enclave app\'s');
  t.true(r.closedByServer, 'the enclave app closed the connection');
  t.is(r.reply, '', 'without answering anything');
  const labels = (await provision<{ tokens: { label: string }[] }>('describe')).tokens.map((x) => x.label);
  t.true(labels.includes('victim') && !labels.includes('mine'), 'nothing was added or removed');
  t.regex(enclave.output(), /provisioning channel: refused a connection: unix peer uid 65534 \(pid \d+\) is neither root nor uid 0/);
});

test('1. over vsock only a privileged (root-bound) source port may provision', (t) => {
  t.is(provisioningRefusal({ family: 'vsock', cid: 3, port: 1023 }), undefined);
  t.is(provisioningRefusal({ family: 'vsock', cid: 3, port: 512 }), undefined);
  t.regex(provisioningRefusal({ family: 'vsock', cid: 3, port: 1024 }) ?? '', /port 1024, not a privileged/);
  t.regex(provisioningRefusal({ family: 'vsock', cid: 3, port: 49152 }) ?? '', /not a privileged/);
  t.is(provisioningRefusal({ family: 'unix', uid: 0, gid: 0, pid: 1 }, 0), undefined);
  t.is(provisioningRefusal({ family: 'unix', uid: 990, gid: 990, pid: 1 }, 990), undefined, 'the enclave app\'s own user (a non-root local mode)');
  t.regex(provisioningRefusal({ family: 'unix', uid: 33, gid: 33, pid: 7 }, 0) ?? '', /uid 33/);
});

test.serial('1. update and refresh never change a token\'s PIN', async (t) => {
  for (const op of ['update', 'refresh']) {
    const e = await t.throwsAsync(provision(op, { label: 'victim', pin: '0000', bundle: plaintextBundle() }));
    t.true(e instanceof ProvisionError && e.code === 'PinChange', `${op}: ${e?.message}`);
    t.regex(e!.message, /cannot change a token's PIN; remove the token and add it again/);
  }
  const c = await KeyClient.connect(keySock);
  t.teardown(() => c.close());
  t.is(await login(c, 'victim', '0000'), CKR.PIN_INCORRECT, 'the attacker\'s PIN does not work');
  t.is(await login(c, 'victim', '2468'), CKR.OK, 'the real one still does');
});

// Finding 2 --------------------------------------------------------------------

test.serial('2. 32 clients that send LIST requests and never read keep the enclave app within 64 MiB of its baseline, and the memory comes back', async (t) => {
  const probe = await KeyClient.connect(keySock);
  const listBytes = (await probe.call({ op: Op.LIST })).body.length;
  probe.close();
  const before = rssMiB();
  // 4,000 requests of 8 bytes each: before the fix each was answered with the whole list.
  const burst = Buffer.concat(Array.from({ length: 4000 }, (_, i) => encodeRequest(i + 1, { op: Op.LIST })));
  const clients: net.Socket[] = [];
  for (let i = 0; i < 32; i++) {
    const s = net.connect(keySock);
    s.on('error', () => {});
    s.pause(); // never reads
    s.write(burst);
    clients.push(s);
  }
  await new Promise((r) => setTimeout(r, 2500));
  const during = rssMiB();
  const c = await KeyClient.connect(keySock);
  t.is(await login(c, 'victim', '2468'), CKR.OK);
  t.is((await signWith(c, await keyIdOf(c, 'victim'))).rv, CKR.OK, 'a well-behaved client signs meanwhile');
  c.close();
  for (const s of clients) s.destroy();
  await new Promise((r) => setTimeout(r, 2500));
  const after = rssMiB();
  t.log(`LIST reply ${Math.round(listBytes / 1024)} KiB (x 4,000 requests x 32 clients unanswered: ${Math.round(listBytes * 4000 * 32 / 1048576)} MiB asked for); RSS ${before.toFixed(0)} MiB before, ${during.toFixed(0)} during, ${after.toFixed(0)} after`);
  t.true(during - before < 64, `within 64 MiB of the baseline (+${(during - before).toFixed(0)} MiB)`);
  t.true(after - before < 32, `and back near it after they left (+${(after - before).toFixed(0)} MiB)`);
});

// Finding 5 --------------------------------------------------------------------

test.serial('5. guessing a PIN with a new connection every three guesses is throttled per token, across connections', async (t) => {
  const started = Date.now();
  let checked = 0, locked = 0;
  while (Date.now() - started < 3000) {
    const c = await KeyClient.connect(keySock);
    for (let i = 0; i < 3; i++) {
      const rv = await login(c, 'guessed', String(1000 + checked + locked).padStart(4, '0'));
      if (rv === CKR.PIN_INCORRECT) checked++;
      else if (rv === CKR.PIN_LOCKED) locked++;
      else t.fail(`unexpected rv ${rv}`);
    }
    c.close();
  }
  t.log(`in 3 s: ${checked} guesses checked, ${locked} refused unchecked (before the fix: about 2,138 per second checked)`);
  t.true(checked <= FREE_ATTEMPTS + 6, `at most a handful checked (${checked})`);
  t.regex(enclave.output(), /\[guessed\].*key channel: (wrong PIN|login refused unchecked).*logins to it are throttled/);
  // The web server, with the right PIN, gets in once the guessing stops (its turn comes within 5 s).
  const c = await KeyClient.connect(keySock);
  t.teardown(() => c.close());
  let rv = await login(c, 'guessed', '7531');
  for (let i = 0; i < 10 && rv === CKR.PIN_LOCKED; i++) { await new Promise((r) => setTimeout(r, 1000)); rv = await login(c, 'guessed', '7531'); }
  t.is(rv, CKR.OK);
  const other = await KeyClient.connect(keySock);
  t.is(await login(other, 'victim', '2468'), CKR.OK, 'another token was never slowed');
  other.close();
});

test('5. the throttle counts per token and per unix peer, shared memory for every worker', (t) => {
  const th = new PinThrottle();
  const again = new PinThrottle(th.shared); // what a second worker thread sees
  const now = 1_000_000;
  for (let i = 0; i < FREE_ATTEMPTS; i++) { t.deepEqual(th.admit(['token a'], now), { waitMs: 0 }); again.checked(['token a'], false, now); }
  const w1 = th.admit(['token a'], now);
  const w2 = again.admit(['token a'], now);
  t.true(w1 !== 'locked' && w2 !== 'locked' && w2.waitMs > w1.waitMs, 'the second worker\'s attempt waits behind the first one\'s');
  t.deepEqual(th.admit(['token b'], now), { waitMs: 0 }, 'another token is not throttled');
  for (let i = 0; i < 12; i++) th.checked(['token a'], false, now);
  let sawLocked = false;
  for (let i = 0; i < 5; i++) if (th.admit(['token a'], now) === 'locked') sawLocked = true;
  t.true(sawLocked, 'past a 5 s wait, attempts are refused unchecked');
  th.checked(['token a'], true, now);
  t.deepEqual(th.admit(['token a'], now), { waitMs: 0 }, 'the right PIN resets it');
});

// Finding 6 --------------------------------------------------------------------

test.serial('6. a login does not outlive its token: after remove and add with another PIN, an old connection is logged out', async (t) => {
  const old = await KeyClient.connect(keySock);
  t.teardown(() => old.close());
  t.is(await login(old, 'victim', '2468'), CKR.OK);
  t.is((await signWith(old, await keyIdOf(old, 'victim'))).rv, CKR.OK);
  await provision('remove', { label: 'victim' });
  await provision('add', { label: 'victim', pin: '97531', bundle: plaintextBundle() });
  const r = await signWith(old, await keyIdOf(old, 'victim'));
  t.is(r.rv, CKR.USER_NOT_LOGGED_IN, 'the old connection must log in again (before the fix: it signed with the new token)');
  t.is(await login(old, 'victim', '2468'), CKR.PIN_INCORRECT, 'and the old PIN is no longer it');
  t.is(await login(old, 'victim', '97531'), CKR.OK);
  t.is((await signWith(old, await keyIdOf(old, 'victim'))).rv, CKR.OK);
  // Put it back as it was for the other tests.
  await provision('remove', { label: 'victim' });
  await provision('add', { label: 'victim', pin: '2468', bundle: plaintextBundle() });
});

// Finding 12 -------------------------------------------------------------------

test('12. the KMS host is built only from a valid region of a known partition', (t) => {
  t.is(kmsHost('us-east-1'), 'kms.us-east-1.amazonaws.com');
  t.is(kmsHost('cn-north-1'), 'kms.cn-north-1.amazonaws.com.cn');
  t.is(kmsHost('us-gov-west-1'), 'kms.us-gov-west-1.amazonaws.com');
  t.is(kmsHost('eusc-de-east-1'), 'kms.eusc-de-east-1.amazonaws.eu');
  for (const bad of ['attacker.example#', 'us-east-1.evil.example', 'us-east-1/', '', 'US-EAST-1', 'us-east-1\n']) {
    t.throws(() => kmsHost(bad), { message: /is not an AWS region/ }, JSON.stringify(bad));
  }
});

test.serial('12. the enclave refuses a provisioning request whose region is not a region', async (t) => {
  const e = await t.throwsAsync(provision('add', { label: 'kms-token', pin: '1234', region: 'evil.example:443#', credentials: { accessKeyId: 'A', secretAccessKey: 'B' }, bundle: { ...plaintextBundle(), encryptionMethod: 'KMS' } }));
  t.regex(e!.message, /"region": region "evil.example:443#" is not an AWS region/);
});
