// npm run bench, second part: the agent's figures.
//  1. Renewal: from a new certificate put in S3 to the web server serving it
//     (nitro-acm local renew: the agent's sync is triggered at once, so the poll
//     interval is not counted), nginx and httpd, BENCH_RENEWALS each (default 5).
//  2. Provisioning BENCH_TOKENS tokens (default 1,100,1000) through the real path
//     (S3 fetch, KMS Decrypt with an attestation document, challenge signature
//     through PKCS#11, stanza files): time per token and the enclave app's memory;
//     then BENCH_RENEWALS renewals of one token among them, a random one each
//     time (a poll of every source; timed until the one that changed is rolled
//     out and the web-server reload called). S3 and KMS run in a child process;
//     BENCH_S3_DELAY_MS makes S3 answer after that long (default 0: at once), and
//     BENCH_SYNC_CONCURRENCY sets options.sync_concurrency (default: acm.yaml's).
//     The enclave app runs as the image has it (scripts/build-eif.ts's esbuild
//     bundle, plus local mode's simulated NSM), not from the TypeScript sources:
//     tsx in the main thread and in every key worker would double its memory.
//  3. The agent idle: CPU and memory of the agent alone, in a process of its own
//     (bench/agent-alone.mjs), and of its enclave app over BENCH_IDLE_SECONDS
//     (default 30), from the JavaScript the RPM installs (scripts/build-rpm.sh's
//     staged tree).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, execFileSync } from 'node:child_process';
import { runLocal } from '../src/local/local-mode.ts';
import { Agent } from '../src/agent/agent.ts';
import { parseConfig } from '../src/agent/config.ts';
import { freePort } from '../src/local/webservers.ts';
import { startTestCloud } from '../test/helpers/cloud.ts';
import { eachLimited } from '../src/agent/retry.ts';
import { issueServerCert } from '../src/local/pki.ts';
import { PROJECT_ROOT } from '../src/paths.ts';
import { configureLog } from '../shared/log.ts';
import { makeEnclaveContext } from '../scripts/build-eif.ts';
import { measureEnclaveApp } from '../enclave/nsm-simulated.ts';
import { LocalEnclaveController } from '../src/local/local-enclave-controller.ts';
import { atExit, killGroup } from './interrupted.ts';

const RENEWALS = Number(process.env.BENCH_RENEWALS ?? 5);
const TOKEN_COUNTS = (process.env.BENCH_TOKENS ?? '1,100,1000').split(',').map(Number);
const IDLE_SECONDS = Number(process.env.BENCH_IDLE_SECONDS ?? 30);
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());

function say(msg: string) { process.stderr.write(`bench: ${msg}\n`); }
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length - 1) * p))];
const statusMiB = (pid: number, field: 'VmRSS' | 'VmHWM') => Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;
const rssMiB = (pid: number) => statusMiB(pid, 'VmRSS');
const cpuTicks = (pid: number) => { const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' '); return Number(f[11]) + Number(f[12]); };

configureLog({ level: 'warn' });
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nitro-acm-bench-agent-'));
fs.chmodSync(dir, 0o755);
atExit(() => fs.rmSync(dir, { recursive: true, force: true }));
const out: string[] = [];

// 1. Renewal latency, nginx and httpd. One runtime directory: the challenge
// signature's PKCS#11 module is loaded once per process, for one enclave address.
for (const server of ['nginx', 'httpd'] as const) {
  const local = await runLocal({ port: await freePort(), stateDir: path.join(dir, 'local-state'), runtimeDir: path.join(dir, 'local-run'), server });
  const secs: number[] = [];
  try {
    for (let i = 0; i < RENEWALS; i++) secs.push((await local.renew('localhost')).seconds);
  } finally { await local.stop(); }
  const line = `renewal, ${server}: S3 put -> new certificate served: p50 ${pct(secs, 0.5).toFixed(2)} s, max ${Math.max(...secs).toFixed(2)} s (${RENEWALS} renewals)`;
  say(line);
  out.push(line);
}

// 2. Provisioning N tokens through the real path. One sealed bundle serves every
// token, under a KMS key that only the bundled enclave app's PCR0 may decrypt with.
const image = path.join(dir, 'enclave-image');
await makeEnclaveContext(image, { withLocalMode: true });
fs.copyFileSync(path.join(PROJECT_ROOT, 'shared/native/build/Release/native.node'), path.join(image, 'app/native.node'));
const imageEntry = path.join(image, 'app/main.js');
// S3 and KMS in a process of their own, as they are elsewhere in production: the agent's
// figures are then the agent's work, not the local cloud's beside it.
const tc = await startTestCloud(path.join(dir, 'cloud'), { process: 'child' });
const imageKey = await tc.createKey(measureEnclaveApp(path.dirname(imageEntry)).pcr0.toString('hex'));
const leaf = issueServerCert(tc.ca, ['bench.test']);
await tc.put(tc.cloud.bucket(), 'bench/bundle.json', await tc.seal(leaf.certPem, leaf.keyPem, imageKey));
for (const n of TOKEN_COUNTS) {
  const etc = path.join(dir, `etc-${n}`);
  fs.mkdirSync(etc, { recursive: true });
  // Every token has an object of its own (the same sealed bundle in each), so any one can be renewed below among the others.
  const sealed = await tc.seal(leaf.certPem, leaf.keyPem, imageKey);
  await eachLimited(Array.from({ length: n }, (_, i) => i), 16, (i) => tc.put(tc.cloud.bucket(), `bench/t${i}.json`, sealed));
  const yaml = `${process.env.BENCH_SYNC_CONCURRENCY ? `options:\n  sync_concurrency: ${process.env.BENCH_SYNC_CONCURRENCY}\n` : ''}tokens:\n${Array.from({ length: n }, (_, i) => `  - label: t${i}\n    source:\n      S3:\n        uri: "s3://${tc.cloud.bucket()}/bench/t${i}.json"\n    target:\n      NginxStanza:\n        path: ${etc}/t${i}.conf\n`).join('')}`;
  const controller = new LocalEnclaveController({ ...tc.controllerOptions(path.join(dir, 'local-run')), entry: imageEntry });
  atExit(() => { const p = controller.process?.proc; if (p && p.exitCode === null && p.signalCode === null) killGroup(p.pid); });
  let enclaveReady = 0, emptyRss = 0;
  const timed = { start: async () => { const ep = await controller.start(); enclaveReady = performance.now(); emptyRss = rssMiB(controller.process!.proc.pid!); return ep; }, running: () => controller.running(), stop: () => controller.stop(), expected: () => controller.expected() };
  const agent = new Agent({ config: parseConfig(yaml, 'bench acm.yaml'), enclave: timed, endpoints: tc.endpoints, reload: async (cause) => { onReload?.(cause); } });
  let onReload: ((cause: string) => void) | undefined;
  const t0 = performance.now();
  await agent.start();
  const done = performance.now();
  const serving = [...agent.tokens.values()].filter((t) => t.state === 'serving').length;
  const enclavePid = controller.process!.proc.pid!;
  const rss = rssMiB(enclavePid);
  // The most the enclave app held at once (the kernel's high-water mark): what
  // memory_mib must cover. Then what it holds once provisioning is over and its
  // heaps are compacted (enclave/heap-compaction.ts, 2 s after the last change).
  const peak = statusMiB(enclavePid, 'VmHWM');
  await new Promise((r) => setTimeout(r, 4000));
  const settled = rssMiB(enclavePid);
  const heap = (await agent.status()).enclave.health?.memory?.heapUsedMiB;
  // A renewal of one token among the n, a different one each time (uniformly at
  // random: a renewal is as likely for any token): a new certificate in its S3
  // object, then one poll of every source (what the sync timer runs). Timed until
  // the agent has rolled it out and calls for the web-server reload; the whole
  // poll of every source is timed too.
  const renewals: number[] = [], polls: number[] = [];
  for (let i = 0; i < RENEWALS; i++) {
    const k = Math.floor(Math.random() * n);
    const next = issueServerCert(tc.ca, ['bench.test']);
    await tc.put(tc.cloud.bucket(), `bench/t${k}.json`, await tc.seal(next.certPem, next.keyPem, imageKey));
    const r0 = performance.now();
    onReload = (cause) => { if (cause.includes(`t${k}`)) renewals.push((performance.now() - r0) / 1000); };
    const renewed = await agent.sync();
    polls.push((performance.now() - r0) / 1000);
    if (renewed.join() !== `t${k}` || renewals.length !== i + 1) throw new Error(`renewal of t${k} among ${n}: renewed ${renewed.join(', ') || 'nothing'}`);
  }
  await agent.stop();
  const kib = (mib: number) => (((mib - emptyRss) * 1024) / n).toFixed(0);
  const line = `provisioning ${n} token${n === 1 ? '' : 's'}: ${serving} serving in ${((done - enclaveReady) / 1000).toFixed(1)} s after the enclave started (${((done - enclaveReady) / n).toFixed(0)} ms per token; enclave start ${((enclaveReady - t0) / 1000).toFixed(1)} s); enclave app RSS ${emptyRss.toFixed(0)} MiB empty -> ${rss.toFixed(0)} MiB when serving, ${settled.toFixed(0)} MiB settled (${kib(settled)} KiB per token; main thread's V8 heap in use ${heap} MiB), peak ${peak.toFixed(0)} MiB (${kib(peak)} KiB per token); renewing one of them (S3 put -> rolled out, reload called): p50 ${pct(renewals, 0.5).toFixed(2)} s, max ${Math.max(...renewals).toFixed(2)} s (${RENEWALS} renewals; the poll of every source: p50 ${pct(polls, 0.5).toFixed(2)} s)`;
  say(line);
  out.push(line);
}
// 3. Idle: the agent alone, in a process of its own, from the JavaScript the RPM
// installs (bench/agent-alone.mjs: the service `nitro-acm agent` runs, local mode's
// enclave controller in place of nitro-cli, the test cloud's process in place of
// AWS), sampled after it settles. The PKCS#11 module goes where a checkout has it
// (the package's own place, /usr/lib64/pkcs11, is not there on this machine).
const rpmDir = path.join(dir, 'rpm');
execFileSync('bash', [path.join(PROJECT_ROOT, 'scripts/build-rpm.sh')], { env: { ...process.env, NITRO_ACM_RPM_DIR: rpmDir, NITRO_ACM_EIF_DIR: path.join(dir, 'no-eif') }, stdio: ['ignore', 'ignore', 'ignore'] });
const installed = path.join(rpmDir, 'stage/usr/lib/nitro-acm');
fs.mkdirSync(path.join(installed, 'p11-module/build'), { recursive: true });
fs.copyFileSync(path.join(PROJECT_ROOT, 'p11-module/build/nitro-acm-p11.so'), path.join(installed, 'p11-module/build/nitro-acm-p11.so'));
const idleDir = path.join(dir, 'idle');
fs.mkdirSync(idleDir);
const idleConfig = path.join(idleDir, 'acm.yaml');
fs.writeFileSync(idleConfig, `tokens:\n  - label: idle\n    source:\n      S3:\n        uri: "s3://${tc.cloud.bucket()}/bench/bundle.json"\n    target:\n      NginxStanza:\n        path: ${idleDir}/idle.conf\n`);
// The environment the systemd unit gives the agent (config/nitro-enclaves-acm.service), so
// that what is measured is what the unit runs.
const unitEnv = Object.fromEntries(fs.readFileSync(path.join(PROJECT_ROOT, 'config/nitro-enclaves-acm.service'), 'utf8').split('\n')
  .flatMap((l) => { const m = /^Environment=([A-Z_][A-Z0-9_]*)=(\S*)$/.exec(l); return m ? [[m[1], m[2]]] : []; }));
const child = spawn(process.execPath, [path.join(PROJECT_ROOT, 'bench/agent-alone.mjs'), installed, JSON.stringify({
  configFile: idleConfig,
  endpoints: tc.endpoints,
  controller: { ...tc.controllerOptions(path.join(idleDir, 'run')), entry: imageEntry },
  controlSocket: path.join(idleDir, 'agent.sock'),
})], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...unitEnv } });
atExit(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });
const started = await new Promise<{ serving: number; enclavePid: number }>((resolve, reject) => {
  let text = '';
  const t = setTimeout(() => reject(new Error(`the agent did not start: ${text}`)), 60_000);
  child.stdout.on('data', (d: Buffer) => {
    text += d;
    const m = /serving (\d+) enclave (\d+)/.exec(text);
    if (m) { clearTimeout(t); resolve({ serving: Number(m[1]), enclavePid: Number(m[2]) }); }
  });
  child.stderr.on('data', (d: Buffer) => { text += d; });
  child.once('exit', (code) => { clearTimeout(t); reject(new Error(`the agent exited (${code}): ${text}`)); });
});
if (started.serving !== 1) throw new Error('the idle agent\'s token is not serving');
// Not this process's child (the agent's): dropped once the agent has stopped it.
const forgetEnclave = atExit(() => killGroup(started.enclavePid));
// Let start-up work (JIT, GC, the first health checks) settle before sampling.
await new Promise((r) => setTimeout(r, 10_000));
const agentPid = child.pid!, enclavePid = started.enclavePid;
const a0 = cpuTicks(agentPid), e0 = cpuTicks(enclavePid), s0 = performance.now();
await new Promise((r) => setTimeout(r, IDLE_SECONDS * 1000));
const elapsed = (performance.now() - s0) / 1000;
const cpu = (ticks: number) => `${((ticks / CLK_TCK / elapsed) * 100).toFixed(2)} % of a CPU`;
const agentRss = rssMiB(agentPid), enclaveRssIdle = rssMiB(enclavePid);
const agentCpu = cpu(cpuTicks(agentPid) - a0), enclaveCpu = cpu(cpuTicks(enclavePid) - e0);
// node itself, doing nothing: most of any node process's RSS is its own binary's pages.
const nodeAlone = await new Promise<number>((resolve, reject) => {
  const p = spawn(process.execPath, ['-e', 'setTimeout(() => { console.log(`RSS ${process.memoryUsage.rss() / 1048576}`); }, 5000);'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let text = '';
  p.stdout.on('data', (d) => { text += d; });
  p.once('exit', () => { const m = /RSS (\d+(?:\.\d+)?)/.exec(text); if (m) resolve(Number(m[1])); else reject(new Error(`no RSS from: ${text}`)); });
});
const line = `idle over ${IDLE_SECONDS} s (1 token, health check every 5 s): the agent alone (the installed JavaScript, a process of its own, the unit's environment: ${Object.entries(unitEnv).map(([k, v]) => `${k}=${v}`).join(' ') || 'none'}) ${agentCpu}, RSS ${agentRss.toFixed(0)} MiB (node alone ${nodeAlone.toFixed(0)} MiB); enclave app ${enclaveCpu}, RSS ${enclaveRssIdle.toFixed(0)} MiB`;
say(line);
out.push(line);
child.kill('SIGTERM');
await new Promise((r) => child.once('exit', r));
forgetEnclave();
await tc.stop();
fs.rmSync(dir, { recursive: true, force: true });

process.stdout.write(`\n## Agent (bench/agent.ts)\n\n${out.map((l) => `- ${l}`).join('\n')}\n`);
