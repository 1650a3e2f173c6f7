// Secrets stay put. The agent runs in a process of its own with two tokens; both
// are renewed twice, the enclave app is killed (the agent brings up another), the
// agent itself is SIGKILLed and started again. Then every file under the test's
// directory (what the agent, the enclave app and the local cloud wrote), the
// agent's and the enclave app's logs, and the running agent's memory (what a core dump of it holds) are
// searched for every private key that was served (PEM, PKCS#1 and PKCS#8 DER, the
// raw bytes of d, p, q, dp, dq, qi); the files and logs also for the PINs outside
// their PIN files. Nothing may be found; PIN files are 0400, stanzas and chains 0440.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { controlCall } from '../src/agent/control.ts';
import { issueServerCert } from '../src/local/pki.ts';
import type { AgentStatusReport } from '../src/agent/control.ts';
import { keyNeedles, findSecrets, findSecretsInMemory } from './helpers/secrets.ts';
import { tmpdir, ROOT } from './helpers/enclave.ts';
import { startTestCloud, type TestCloud } from './helpers/cloud.ts';

const dir = tmpdir('secrets');
fs.chmodSync(dir, 0o755);
let tc: TestCloud;
test.before(async () => { tc = await startTestCloud(dir); });
test.after.always(async () => { await tc?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });

interface Agent { proc: ChildProcess; output: () => string }
function startAgent(args: object): Promise<Agent> {
  const proc = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'test/fixtures/agent-process.ts'), JSON.stringify(args)], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`agent did not start: ${out}`)), 60_000);
    proc.stdout!.on('data', (d) => { out += d; if (out.includes('agent ready')) { clearTimeout(timer); resolve({ proc, output: () => out }); } });
    proc.stderr!.on('data', (d) => { out += d; });
    proc.once('exit', (c) => { clearTimeout(timer); reject(new Error(`agent exited (${c}): ${out}`)); });
  });
}

async function allServing(socket: string, timeoutMs = 30_000): Promise<AgentStatusReport> {
  for (const until = Date.now() + timeoutMs; ;) {
    const st = await controlCall(socket, 'status').catch(() => undefined);
    if (st && st.enclave.reachable && st.tokens.every((x) => x.state === 'serving' && x.inEnclave)) return st;
    if (Date.now() > until) throw new Error(`not serving: ${JSON.stringify(st)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

test('after renewals, an enclave restart and an agent restart: no private key in any file, log or the agent\'s memory; no PIN outside its file', async (t) => {
  const etc = path.join(dir, 'etc');
  fs.mkdirSync(etc);
  const keys: string[] = [];
  const publish = async (n: string) => {
    const leaf = issueServerCert(tc.ca, [`${n}.test`]);
    keys.push(leaf.keyPem); // in this test's memory only, never written
    await tc.put(tc.cloud.bucket(), `secrets/${n}.json`, await tc.seal(leaf.certPem, leaf.keyPem));
  };
  for (const n of ['s1', 's2']) await publish(n);
  const configFile = path.join(dir, 'acm.yaml');
  fs.writeFileSync(configFile, `tokens:\n${['s1', 's2'].map((n) => `  - label: ${n}\n    source:\n      S3:\n        uri: "s3://${tc.cloud.bucket()}/secrets/${n}.json"\n    target:\n      NginxStanza:\n        path: ${etc}/${n}.conf\n`).join('')}`);
  const socket = path.join(dir, 'agent.sock');
  const args = { configFile, controlSocket: socket, endpoints: tc.endpoints, controller: tc.controllerOptions() };
  let agent = await startAgent(args);
  const logs: string[] = [];
  t.teardown(() => { agent.proc.kill('SIGKILL'); spawnSync('pkill', ['-KILL', '-f', path.join(dir, 'run', 'keys.sock')]); });
  await allServing(socket);

  // Two renewals of both tokens.
  for (let i = 0; i < 2; i++) {
    for (const n of ['s1', 's2']) await publish(n);
    t.deepEqual((await controlCall(socket, 'sync', {}, 60_000)).renewed.sort(), ['s1', 's2']);
  }
  // The enclave app dies; the agent starts another and provisions both again.
  t.is(spawnSync('pkill', ['-KILL', '-f', path.join(dir, 'run', 'keys.sock')]).status, 0);
  await new Promise((r) => setTimeout(r, 1000));
  await allServing(socket);
  // The agent dies (SIGKILL) and starts again; it finds the enclave app serving.
  logs.push(agent.output());
  agent.proc.kill('SIGKILL');
  await new Promise((r) => agent.proc.once('exit', r));
  fs.rmSync(socket, { force: true });
  agent = await startAgent(args);
  await allServing(socket);

  const needles = keys.flatMap((k, i) => keyNeedles(k).map((n) => ({ ...n, name: `key ${i}: ${n.name}` })));
  // The scanners find what they look for (else this test could not fail): a key
  // in a buffer, and the served certificate (which the agent does hold) in its memory.
  t.deepEqual(findSecrets(Buffer.concat([Buffer.from('x'), Buffer.from(keys[0])]), needles.slice(0, 1)), [needles[0].name]);
  const certBody = fs.readFileSync(path.join(etc, 's1.chain.pem'), 'utf8').split('\n')[1];
  const control = { name: 'certificate', bytes: Buffer.from(certBody) };

  // The running agent's memory, as a core dump of it would hold it.
  const inMemory = findSecretsInMemory(agent.proc.pid!, [...needles, control]);
  logs.push(agent.output());
  const mib = (inMemory.searched / 1048576).toFixed(0);
  t.deepEqual(inMemory.found.filter((n) => n === control.name), [control.name], `the memory scan finds the certificate the agent holds (${mib} MiB searched)`);
  t.deepEqual(inMemory.found.filter((n) => n !== control.name), [], `no private key in the agent's memory (${mib} MiB searched)`);
  const logText = Buffer.from(logs.join('\n'));
  t.deepEqual(findSecrets(logText, needles), [], 'no private key in the logs');

  const pinFiles = ['s1', 's2'].map((n) => path.join(etc, `${n}.pin`));
  const pins = pinFiles.map((f) => ({ name: `PIN ${f}`, bytes: fs.readFileSync(f) }));
  t.deepEqual(findSecrets(logText, pins), [], 'no PIN in the logs');
  const files = (fs.readdirSync(dir, { recursive: true, withFileTypes: true }) as fs.Dirent[]).filter((e) => e.isFile()).map((e) => path.join(e.parentPath ?? e.path, e.name));
  t.true(files.length > 10, `${files.length} files scanned`);
  for (const f of files) {
    const bytes = fs.readFileSync(f);
    t.deepEqual(findSecrets(bytes, needles), [], `no private key in ${path.relative(dir, f)}`);
    if (!pinFiles.includes(f)) t.deepEqual(findSecrets(bytes, pins), [], `no PIN in ${path.relative(dir, f)}`);
  }
  for (const n of ['s1', 's2']) {
    t.is(fs.statSync(path.join(etc, `${n}.pin`)).mode & 0o777, 0o400);
    t.is(fs.statSync(path.join(etc, `${n}.conf`)).mode & 0o777, 0o440);
    t.is(fs.statSync(path.join(etc, `${n}.chain.pem`)).mode & 0o777, 0o440);
  }
  t.log(`${keys.length} private keys, ${pins.length} PINs; ${files.length} files, ${(logText.length / 1024).toFixed(0)} KiB of logs and ${mib} MiB of the agent's memory searched: nothing found`);
});
