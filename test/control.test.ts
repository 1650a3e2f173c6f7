// The agent's control socket speaks its own operations (ControlOps) over the
// framed JSON it shares with the provisioning channel: answers come back typed
// and without the frame's fields, an operation the agent does not serve, another
// version or a frame that is not JSON is refused with the channel's own error
// codes, and a second agent cannot take a live agent's socket.
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { startControlServer, controlCall, ControlError, CONTROL } from '../src/agent/control.ts';
import { jsonFrame } from '../shared/json-frames.ts';
import { FrameSplitter } from '../shared/framing.ts';

async function agentSocket(t: { teardown(f: () => unknown): void }) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nitro-acm-control-'));
  const socket = path.join(dir, 'agent.sock');
  const server = await startControlServer(socket, {
    status: async () => ({ configFile: '/etc/nitro_enclaves/acm.yaml', enclave: { reachable: false, error: 'not started' }, tokens: [] }),
    sync: async () => ({ renewed: ['t1'] }),
  });
  t.teardown(async () => { await server.close(); fs.rmSync(dir, { recursive: true, force: true }); });
  return socket;
}

/** One raw frame to the socket and the one reply. */
function raw(socket: string, frame: Buffer): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ path: socket });
    const split = new FrameSplitter(CONTROL.maxFrame, (f) => { resolve(JSON.parse(f.toString())); s.destroy(); });
    s.on('data', (d) => split.push(d));
    s.on('error', reject);
    s.write(frame);
  });
}

test('status and sync answer with their own fields only', async (t) => {
  const socket = await agentSocket(t);
  t.deepEqual(await controlCall(socket, 'status'), { configFile: '/etc/nitro_enclaves/acm.yaml', enclave: { reachable: false, error: 'not started' }, tokens: [] });
  t.deepEqual(await controlCall(socket, 'sync'), { renewed: ['t1'] });
  t.is(fs.statSync(socket).mode & 0o777, 0o600, 'root only');
});

test('an operation this agent does not serve is refused, naming those it does', async (t) => {
  const socket = await agentSocket(t);
  const e = await t.throwsAsync(controlCall(socket, 'renew', { label: 'localhost' }), { instanceOf: ControlError, message: 'unknown operation "renew" (expected status, sync)' });
  t.is((e as ControlError).code, 'BadRequest');
});

test('another version and a frame that is not JSON get the channel\'s errors', async (t) => {
  const socket = await agentSocket(t);
  const v2 = await raw(socket, jsonFrame({ v: 2, id: 7, op: 'status' }, CONTROL.maxFrame));
  t.like(v2, { v: 1, id: 7, ok: false, error: { code: 'UnsupportedVersion', message: 'control version 2; this agent speaks 1' } });
  const head = Buffer.alloc(4);
  head.writeUInt32BE(5);
  t.like(await raw(socket, Buffer.concat([head, Buffer.from('{nope')])), { ok: false, error: { code: 'BadRequest', message: 'frame is not JSON' } });
});

test('a handler\'s ControlError reaches the caller with its code', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nitro-acm-control-'));
  const socket = path.join(dir, 'agent.sock');
  const server = await startControlServer(socket, { renew: async ({ label }) => { throw new ControlError('NoSuchToken', `no token "${label}"`); } });
  t.teardown(async () => { await server.close(); fs.rmSync(dir, { recursive: true, force: true }); });
  const e = await t.throwsAsync(controlCall(socket, 'renew', { label: 'other' }), { instanceOf: ControlError, message: 'no token "other"' });
  t.is((e as ControlError).code, 'NoSuchToken');
});

test('a second agent does not take a live agent\'s socket', async (t) => {
  const socket = await agentSocket(t);
  await t.throwsAsync(startControlServer(socket, {}), { message: `another nitro-acm agent is running (it answers on ${socket})` });
  t.deepEqual(await controlCall(socket, 'sync'), { renewed: ['t1'] }, 'the first one still answers');
});

test('the status of 1,024 tokens (about 1.1 MiB of JSON) comes back whole', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nitro-acm-control-'));
  const socket = path.join(dir, 'agent.sock');
  const token = (i: number) => ({
    label: `token-${String(i).padStart(26, '0')}`, source: 'Acm arn:aws:acm:us-east-1:123456789012:certificate/d4c3b2a1-e5d0-4d51-95d9-1927fEXAMPLE', target: 'NginxStanza /etc/pki/nginx/www-example-com-acm-token.conf',
    state: 'serving' as const, subject: 'CN=www.example-company-name.com', sans: ['DNS:www.example-company-name.com', 'DNS:example-company-name.com', 'DNS:api.example-company-name.com'], notAfter: '2027-03-07T16:25:54.000Z', keyType: 'RSA-2048', fingerprint256: `${'AA:'.repeat(31)}AA`,
    addedAt: '2027-03-07T16:25:54.000Z', uris: [`pkcs11:token=token-${String(i).padStart(26, '0')};id=${'%aa'.repeat(20)};type=private?pin-source=file:/etc/pki/nginx/www-example-com-acm-token.pin`], lastSync: '2027-03-07T16:25:54.000Z', lastRefresh: '2027-03-07T16:25:54.000Z', inEnclave: true, enclaveRefreshedAt: '2027-03-07T16:25:54.000Z', retiredKeys: 0,
    operations: { sign: { ok: 123456789, failed: 12 }, decrypt: { ok: 0, failed: 0 }, latencyBuckets: [0, 0, 0, 12345, 123456, 1234, 12, 1, 0, 0, 0], latencySumSeconds: 123.456789 },
  });
  const tokens = Array.from({ length: 1024 }, (_, i) => token(i));
  t.true(JSON.stringify(tokens).length > 1024 * 1024, 'more than the 1 MiB frames this socket had');
  const server = await startControlServer(socket, { status: async () => ({ configFile: '/etc/nitro_enclaves/acm.yaml', enclave: { reachable: true }, tokens }) });
  t.teardown(async () => { await server.close(); fs.rmSync(dir, { recursive: true, force: true }); });
  const r = await controlCall(socket, 'status');
  t.is(r.tokens.length, 1024);
  t.deepEqual(r.tokens[1023], token(1023));
});

test('an answer over the frame size is an Internal error reply, and the agent serves on', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nitro-acm-control-'));
  const socket = path.join(dir, 'agent.sock');
  const huge = 'x'.repeat(CONTROL.maxFrame + 1);
  const server = await startControlServer(socket, {
    status: async () => ({ configFile: huge, enclave: { reachable: false }, tokens: [] }),
    sync: async () => ({ renewed: ['t1'] }),
  });
  t.teardown(async () => { await server.close(); fs.rmSync(dir, { recursive: true, force: true }); });
  const e = await t.throwsAsync(controlCall(socket, 'status'), { instanceOf: ControlError });
  t.is(e!.code, 'Internal');
  t.regex(e!.message, /^the answer to status is too large to send: message of \d+ bytes exceeds 16777216$/);
  t.deepEqual(await controlCall(socket, 'sync'), { renewed: ['t1'] }, 'the same server answers the next request');
});
