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
