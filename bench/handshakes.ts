// npm run bench: TLS handshakes per second against one nginx configuration with
// four ways to the key (a PEM file / the enclave app through our module, by the
// OpenSSL pkcs11 engine and by pkcs11-provider / SoftHSM2 through the same engine
// and p11-kit), TLS 1.2 and 1.3, a new
// connection per request; then sign latency through the module against a direct
// node:crypto sign, and the floor under any remote key (bench/round-trip.c: a bare
// request and reply between two processes), and in the nitro layout what a lean TLS
// client costs (bench/tls-client.c), which bounds the rate there. All variants in one run, interleaved,
// quoted as ratios to the key-in-a-file variant. BENCH_SECONDS sets each
// measurement's length (default 8).
// BENCH_BASELINE_MODULE=path/to/another/nitro-acm-p11.so adds that build's sign
// latency, measured in turns with this one's, to compare two builds of the module;
// BENCH_SIGN_ONLY=1 skips the handshakes (for such a comparison alone);
// BENCH_PROFILE_ONLY=1 runs only the CPU profile of a handshake (BENCH_PROFILE_LAYOUT=nitro
// profiles that layout instead of the shared one); BENCH_PROFILE=0 skips it.
// BENCH_LAYOUTS=nitro (or shared) and BENCH_VARIANTS=enclave,provider (the key in a
// file always runs: it is what the others are quoted against) narrow a run.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { spawnSync } from 'node:child_process';
import pkcs11js from 'pkcs11js';
import { startEnclave, MODULE_PATH } from '../test/helpers/enclave.ts';
import { registerWithP11Kit } from '../src/local/p11kit.ts';
import { startNginx, freePort, handshake, fingerprintOf, run } from '../src/local/webservers.ts';
import { providerConfig, providerKeyPem, inspectOpenSsl } from '../src/agent/openssl-path.ts';
import { atExit, killGroup } from './interrupted.ts';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);
const WORKERS = Number(process.env.BENCH_NGINX_WORKERS ?? os.availableParallelism());
const SOFTHSM_LIB = '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so';
const PIN = '12345678';

function log(msg: string) { process.stderr.write(`bench: ${msg}\n`); }
function must(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env) {
  const r = spawnSync(cmd, args, { env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

registerWithP11Kit();
const fx = await startEnclave([{ label: 'bench', pin: PIN, names: ['bench.test'] }, { label: 'benchec', pin: PIN, names: ['bench.test'], keyType: 'ec-p256' }], { prefix: 'bench', threads: os.availableParallelism() });
// A run that fails (wrk, perf) or is interrupted must not leave the enclave app, an
// nginx or its files behind.
const liveNginx = new Set<number>();
atExit(() => fs.rmSync(fx.dir, { recursive: true, force: true }));
atExit(() => { if (fx.proc.exitCode === null && fx.proc.signalCode === null) fx.proc.kill('SIGKILL'); });
atExit(() => { for (const pid of liveNginx) killGroup(pid); });
const tok = fx.tokens[0];
const ecTok = fx.tokens[1];
const dir = fx.dir;

// SoftHSM2 holding the same key, in a token directory of its own.
const hsmDir = path.join(dir, 'softhsm');
fs.mkdirSync(path.join(hsmDir, 'tokens'), { recursive: true });
const hsmConf = path.join(hsmDir, 'softhsm2.conf');
fs.writeFileSync(hsmConf, `directories.tokendir = ${hsmDir}/tokens\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
const hsmEnv = { ...process.env, SOFTHSM2_CONF: hsmConf };
must('softhsm2-util', ['--init-token', '--free', '--label', 'softbench', '--pin', PIN, '--so-pin', '87654321'], hsmEnv);
const der = path.join(hsmDir, 'key.der');
fs.writeFileSync(der, crypto.createPrivateKey(tok.keyPem).export({ type: 'pkcs1', format: 'der' }));
must('pkcs11-tool', ['--module', SOFTHSM_LIB, '--token-label', 'softbench', '--login', '--pin', PIN, '--write-object', der, '--type', 'privkey', '--id', '01', '--label', 'softbench'], hsmEnv);
fs.rmSync(der);
fs.chmodSync(hsmDir, 0o755);
spawnSync('chmod', ['-R', 'a+rX', hsmDir]);

const pinFile = path.join(dir, 'bench.pin');
fs.writeFileSync(pinFile, PIN, { mode: 0o400 });
// The provider path as the agent writes it: an OpenSSL configuration loading pkcs11-provider, a key file holding the URI.
const providerConf = path.join(dir, 'openssl-provider.cnf');
fs.writeFileSync(providerConf, providerConfig(providerConf, inspectOpenSsl()));
const providerKeyFor = (label: string) => {
  const file = path.join(dir, `${label}.key-uri.pem`);
  fs.writeFileSync(file, providerKeyPem(`pkcs11:token=${label};type=private?pin-source=file:${pinFile}`), { mode: 0o644 });
  return file;
};
// RSA-2048 in four places; ECDSA P-256 in three (a file, the enclave by the engine, by the provider).
const variants = {
  file: { key: tok.key, tok },
  enclave: { key: `engine:pkcs11:pkcs11:token=bench;type=private?pin-source=file:${pinFile}`, tok },
  provider: { key: providerKeyFor('bench'), tok, provider: true },
  softhsm2: { key: `engine:pkcs11:pkcs11:token=softbench;type=private?pin-source=file:${pinFile}`, tok },
  ecFile: { key: ecTok.key, tok: ecTok },
  ecEnclave: { key: `engine:pkcs11:pkcs11:token=benchec;type=private?pin-source=file:${pinFile}`, tok: ecTok },
  ecProvider: { key: providerKeyFor('benchec'), tok: ecTok, provider: true },
} as const;
type Variant = keyof typeof variants;
const listed = (env: string | undefined, all: string[]) => {
  if (!env) return all;
  const xs = env.split(',').map((x) => x.trim()).filter(Boolean);
  for (const x of xs) if (!all.includes(x)) throw new Error(`unknown name ${x} in a BENCH_ setting (known: ${all.join(', ')})`);
  return xs;
};
const VARIANTS = [...new Set(['file', ...listed(process.env.BENCH_VARIANTS, Object.keys(variants))])] as Variant[];
if (VARIANTS.some((v) => v.startsWith('ec')) && !VARIANTS.includes('ecFile')) VARIANTS.push('ecFile');

// Layouts: "shared" lets every process use every CPU; "nitro" pins the enclave app
// to a CPU of its own, as an enclave's vCPUs are carved out of the instance, and
// nginx and the load generator to the others, for every variant alike.
const NCPU = os.availableParallelism();
const LAYOUTS = { shared: { enclave: `0-${NCPU - 1}`, rest: `0-${NCPU - 1}` }, nitro: { enclave: `${NCPU - 1}`, rest: `0-${Math.max(0, NCPU - 2)}` } } as const;
type Layout = keyof typeof LAYOUTS;
const RUN_LAYOUTS = listed(process.env.BENCH_LAYOUTS, Object.keys(LAYOUTS)) as Layout[];

// CPU time of the processes that serve a handshake (nginx's master and workers, and
// the enclave app: every thread of it), in seconds; wrk, the client, is left out.
// /proc/PID/task/TID/schedstat counts each thread's time on a CPU in nanoseconds,
// where /proc/PID/stat's utime and stime are sampled at the clock tick (100 Hz),
// which misplaces the time of processes that run in short bursts, as a worker
// waiting on each signature does.
const CLK_TCK = Number(must('getconf', ['CLK_TCK']).trim()) || 100;
function cpuSecondsOf(pid: number): number {
  let ns = 0;
  try {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      try { ns += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]); } catch { /* thread gone */ }
    }
  } catch { /* process gone */ }
  return ns / 1e9;
}
function withChildren(pid: number): number[] {
  const out = [pid];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try { const st = fs.readFileSync(`/proc/${d}/stat`, 'utf8'); if (Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1]) === pid) out.push(Number(d)); } catch { /* gone */ }
  }
  return out;
}

// Each CPU's time from /proc/stat (busy, idle, stolen by the hypervisor), in ticks:
// whether the CPUs nginx and wrk run on were saturated or waited.
function cpuStates(cpus: string): { busy: number; idle: number; steal: number } {
  const [lo, hi] = cpus.split('-').map(Number);
  const out = { busy: 0, idle: 0, steal: 0 };
  for (const line of fs.readFileSync('/proc/stat', 'utf8').split('\n')) {
    const m = /^cpu(\d+) (.*)$/.exec(line);
    if (!m || Number(m[1]) < lo || Number(m[1]) > (hi ?? lo)) continue;
    const [user, nice, system, idle, iowait, irq, softirq, steal] = m[2].split(' ').map(Number);
    out.busy += user + nice + system + irq + softirq; out.idle += idle + iowait; out.steal += steal;
  }
  return out;
}

interface Measured { rps: number; cpuUs: number; nginxUs: number; restUs: number }

// bench/tls-client.c: a TLS client doing nothing but handshakes, one at a time, by
// OpenSSL and by GnuTLS; what it costs bounds the nitro layout's rate (see the table).
const tlsClientBin = path.join(dir, 'tls-client');
const tlsClientBuilt = spawnSync('gcc', ['-O2', '-o', tlsClientBin, path.join(import.meta.dirname, 'tls-client.c'), '-lssl', '-lcrypto', '-lgnutls'], { stdio: 'inherit' }).status === 0;
if (!tlsClientBuilt) log('gcc could not build bench/tls-client.c: the lean clients are left out of the nitro layout\'s ceiling');
const leanClientUs: Partial<Record<'TLSv1.2' | 'TLSv1.3', { openssl: number[]; gnutls: number[] }>> = {};

async function measure(variant: Variant, protocol: 'TLSv1.2' | 'TLSv1.3', layout: Layout): Promise<Measured> {
  const cpus = LAYOUTS[layout];
  must('taskset', ['-a', '-p', '-c', cpus.enclave, String(fx.proc.pid)]);
  const prefix = fs.mkdtempSync(path.join(dir, `nginx-${variant}-`));
  fs.chmodSync(prefix, 0o755);
  const port = await freePort();
  const v = variants[variant];
  const provider = 'provider' in v;
  const env = { NITRO_ACM_KEY_ADDRESS: fx.address, SOFTHSM2_CONF: hsmConf, ...(provider ? { OPENSSL_CONF: providerConf } : {}) };
  const nginx = await startNginx({ dir: prefix, port, env, engine: !provider, workers: WORKERS, protocols: protocol, cpus: cpus.rest, sites: [{ serverName: 'bench.test', certificateFile: v.tok.fullchain, key: v.key }] });
  liveNginx.add(nginx.pid);
  const h = await handshake(port, { servername: 'bench.test', ca: fx.ca.certPem });
  if (h.fingerprint256 !== fingerprintOf(v.tok.certPem) || h.protocol !== protocol) throw new Error(`${variant}: wrong certificate or protocol ${h.protocol}`);
  const wrk = (secs: number) => run('taskset', ['-c', cpus.rest, 'wrk', '-t1', '-c16', `-d${secs}s`, '-H', 'Connection: close', `https://127.0.0.1:${port}/`]);
  await wrk(1); // warm-up
  const nginxPids = withChildren(nginx.pid);
  const secondsOf = (pids: number[]) => pids.reduce((n, p) => n + cpuSecondsOf(p), 0);
  const before = { nginx: secondsOf(nginxPids), enclave: cpuSecondsOf(fx.proc.pid!), cpus: cpuStates(cpus.rest) };
  const r = await wrk(SECONDS);
  const after = { nginx: secondsOf(nginxPids), enclave: cpuSecondsOf(fx.proc.pid!), cpus: cpuStates(cpus.rest) };
  const cpuSeconds = after.nginx - before.nginx + after.enclave - before.enclave;
  // In the nitro layout, what a lean client's handshake costs on the same CPU, against the same nginx.
  if (layout === 'nitro' && variant === 'file' && tlsClientBuilt) {
    for (const lib of ['openssl', 'gnutls'] as const) {
      const c = JSON.parse(must('taskset', ['-c', cpus.rest, tlsClientBin, lib, String(port), protocol.slice(4), '1000'])) as { cpuUs: number };
      ((leanClientUs[protocol] ??= { openssl: [], gnutls: [] })[lib]).push(c.cpuUs);
    }
  }
  await nginx.stop();
  liveNginx.delete(nginx.pid);
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(r.out)?.[1]);
  const requests = Number(/(\d+) requests in/.exec(r.out)?.[1]);
  const errors = /Socket errors: (.*)/.exec(r.out)?.[1];
  if (!rps || !requests) throw new Error(`${variant}: wrk output: ${r.out}`);
  const cpuUs = cpuSeconds * 1e6 / requests;
  const us = (t: number) => (t * 1e6 / requests).toFixed(0);
  const d = { busy: after.cpus.busy - before.cpus.busy, idle: after.cpus.idle - before.cpus.idle, steal: after.cpus.steal - before.cpus.steal };
  const total = d.busy + d.idle + d.steal || 1;
  const share = (t: number) => `${Math.round(100 * t / total)} %`;
  log(`${layout} ${protocol} ${variant}: ${rps.toFixed(0)} handshakes/s, ${cpuUs.toFixed(0)} µs of CPU each (nginx ${us(after.nginx - before.nginx)}, enclave app ${us(after.enclave - before.enclave)}); CPU ${cpus.rest} busy ${share(d.busy)}, idle ${share(d.idle)}, stolen ${share(d.steal)}${errors ? ` (socket errors: ${errors})` : ''}`);
  // What else ran on nginx's CPUs (wrk, mostly); in the nitro layout the enclave app is not among it.
  const restUs = Math.max(0, (d.busy / CLK_TCK - (after.nginx - before.nginx) - (layout === 'shared' ? after.enclave - before.enclave : 0)) * 1e6 / requests);
  return { rps, cpuUs, nginxUs: (after.nginx - before.nginx) * 1e6 / requests, restUs };
}

const results: Record<string, Record<Variant, number[]>> = {};
const cpuResults: Record<string, Record<Variant, number[]>> = {};
const nginxResults: Record<string, Record<Variant, number[]>> = {};
const restResults: Record<string, Record<Variant, number[]>> = {};
const none = (): Record<Variant, number[]> => ({ file: [], enclave: [], provider: [], softhsm2: [], ecFile: [], ecEnclave: [], ecProvider: [] });
for (const layout of process.env.BENCH_SIGN_ONLY === '1' || process.env.BENCH_PROFILE_ONLY === '1' ? [] : RUN_LAYOUTS) {
  for (const protocol of ['TLSv1.2', 'TLSv1.3'] as const) {
    const r = results[`${layout} ${protocol}`] = none();
    const c = cpuResults[`${layout} ${protocol}`] = none();
    const n = nginxResults[`${layout} ${protocol}`] = none();
    const o = restResults[`${layout} ${protocol}`] = none();
    for (let round = 0; round < ROUNDS; round++) {
      for (const v of VARIANTS) { const m = await measure(v, protocol, layout); r[v].push(m.rps); c[v].push(m.cpuUs); n[v].push(m.nginxUs); o[v].push(m.restUs); }
    }
  }
}
must('taskset', ['-a', '-p', '-c', LAYOUTS.shared.enclave, String(fx.proc.pid)]);

// Where the CPU of a handshake goes: perf samples every CPU (cpu-clock, the
// software clock: no hardware counters here) while wrk runs against one variant,
// and the samples of the serving processes are grouped by process and library.
// Skipped where perf is missing or BENCH_PROFILE=0.
const PERF_HZ = 1999;
const OPENSSL_SYMBOL = /^(BN_|bn_|__bn|RSA|rsa|EVP_|evp_|ossl_|OSSL_|ecp_|EC_|ec_|sha\d|SHA\d|CRYPTO_|OPENSSL_|ERR_|ASN1|asn1|x86_64_|mul4x|sqr|bn|BIO_|PKCS1|pkcs1|ossl|int_|engine_|RAND_|rand_|drbg|DRBG|aes|AES|gcm|HMAC|hmac|KECCAK|ecdsa|ECDSA|OBJ_|obj_|lh_|OPENSSL|CONF_|context_|bsaes|vpaes|poly1305|ChaCha)/;
const CLIENT = 'wrk (the load generator)';
const hasPerf = process.env.BENCH_PROFILE !== '0' && process.env.BENCH_SIGN_ONLY !== '1' && spawnSync('perf', ['--version']).status === 0;
async function profile(variant: Variant, protocol: 'TLSv1.2' | 'TLSv1.3', layout: Layout): Promise<{ requests: number; keyPath?: KeyPathInNginx; rows: { what: string; us: number }[] }> {
  const cpus = LAYOUTS[layout];
  must('taskset', ['-a', '-p', '-c', cpus.enclave, String(fx.proc.pid)]);
  const port = await freePort();
  const prefix = fs.mkdtempSync(path.join(dir, `perf-${variant}-`));
  fs.chmodSync(prefix, 0o755);
  const v = variants[variant];
  const provider = 'provider' in v;
  const env = { NITRO_ACM_KEY_ADDRESS: fx.address, SOFTHSM2_CONF: hsmConf, ...(provider ? { OPENSSL_CONF: providerConf } : {}) };
  const nginx = await startNginx({ dir: prefix, port, env, engine: !provider, workers: WORKERS, protocols: protocol, cpus: cpus.rest, sites: [{ serverName: 'bench.test', certificateFile: v.tok.fullchain, key: v.key }] });
  liveNginx.add(nginx.pid);
  const url = `https://127.0.0.1:${port}/`;
  const wrk = (secs: number) => run('taskset', ['-c', cpus.rest, 'wrk', '-t1', '-c16', `-d${secs}s`, '-H', 'Connection: close', url]);
  await wrk(1);
  const data = path.join(prefix, 'perf.data');
  const [rec, r] = await Promise.all([
    run('perf', ['record', '-q', '-e', 'cpu-clock', '-F', String(PERF_HZ), '-a', '-o', data, '--', 'sleep', String(SECONDS)]),
    wrk(SECONDS),
  ]);
  // With the key remote, a second, shorter run records nginx's call stacks, to tell
  // what its remote signature costs it: the library rows below are each library's
  // own time, where the module's socket calls and waits are the kernel's.
  const keyPath = variant === 'enclave' || variant === 'ecEnclave' ? await remoteSignInNginx(nginx.pid, wrk, prefix) : undefined;
  await nginx.stop();
  liveNginx.delete(nginx.pid);
  if (rec.status !== 0) throw new Error(`perf record: ${rec.out}`);
  const requests = Number(/(\d+) requests in/.exec(r.out)?.[1]);
  const rep = must('perf', ['report', '-i', data, '--stdio', '--sort', 'pid,dso,sym', '-F', 'sample,pid,dso,sym', '-q', '--no-children']);
  // perf names threads: the enclave app's key workers are threads of its process.
  const enclaveTids = new Set(fs.readdirSync(`/proc/${fx.proc.pid}/task`).map(Number));
  const nginxPids = new Set(withChildren(nginx.pid));
  const rows = new Map<string, number>();
  for (const line of rep.split('\n')) {
    const m = /^\s*(\d+)\s+(\d+):(\S+)\s+(\S+)\s+\[[.kHgu]\]\s+(.*?)\s*$/.exec(line);
    if (!m) continue;
    const pid = Number(m[2]);
    const who = enclaveTids.has(pid) ? 'enclave app' : nginxPids.has(pid) || m[3] === 'nginx' ? 'nginx' : m[3] === 'wrk' ? CLIENT : undefined;
    if (!who) continue; // perf, the rest of the machine
    // Node carries its own OpenSSL inside its binary: its symbols say which part is the signature itself.
    const dso = m[4] === 'node' || /^\[JIT\]/.test(m[4]) ? (OPENSSL_SYMBOL.test(m[5]) ? 'OpenSSL inside node (the signature)' : 'V8, libuv and Node (JavaScript and its event loop)')
      : m[4].replace(/^\[kernel\.kallsyms\]$/, 'kernel (sockets, scheduling, TCP)').replace(/^\[unknown\]$/, 'unknown').replace(/^.*\//, '');
    const key = `${who}: ${dso}`;
    rows.set(key, (rows.get(key) ?? 0) + Number(m[1]));
  }
  return { requests, keyPath, rows: [...rows].map(([what, samples]) => ({ what, us: samples / PERF_HZ * 1e6 / requests })).sort((a, b) => b.us - a.us) };
}

/**
 * nginx's CPU per handshake, and how much of it is spent under the PKCS#11 module's
 * frames (its socket calls, being put to sleep and woken included) and under the
 * engine's or provider's and p11-kit's frames outside the module, from call stacks
 * (perf --call-graph dwarf on nginx's processes alone, while wrk runs 3 s).
 */
interface KeyPathInNginx { nginx: number; module: number; moduleKernel: number; glue: number; requests: number }
async function remoteSignInNginx(nginxPid: number, wrk: (secs: number) => Promise<{ out: string }>, prefix: string): Promise<KeyPathInNginx> {
  const HZ = 999, SECS = 3;
  const data = path.join(prefix, 'perf-callgraph.data');
  const pids = withChildren(nginxPid).join(',');
  const [rec, r] = await Promise.all([
    run('perf', ['record', '-q', '-e', 'cpu-clock', '-F', String(HZ), '--call-graph', 'dwarf,16384', '-p', pids, '-o', data, '--', 'sleep', String(SECS)]),
    wrk(SECS),
  ]);
  if (rec.status !== 0) throw new Error(`perf record --call-graph: ${rec.out}`);
  const script = spawnSync('perf', ['script', '-i', data, '-F', 'ip,sym,dso'], { encoding: 'utf8', maxBuffer: 1 << 30 });
  if (script.status !== 0) throw new Error(`perf script: ${script.stderr}`);
  fs.rmSync(data);
  let samples = 0, module = 0, moduleKernel = 0, glue = 0;
  for (const stack of script.stdout.split(/\n\s*\n/)) {
    const frames = stack.split('\n').map((l) => /\((.*)\)\s*$/.exec(l)?.[1] ?? '').filter(Boolean);
    if (!frames.length) continue;
    samples++;
    if (frames.some((f) => f.endsWith('/nitro-acm-p11.so'))) {
      module++;
      if (frames[0].includes('kernel.kallsyms')) moduleKernel++;
    } else if (frames.some((f) => /\/(pkcs11\.so|libp11\.so[.\d]*|libp11-kit\.so[.\d]*|p11-kit-proxy\.so)$/.test(f))) {
      glue++;
    }
  }
  const requests = Number(/(\d+) requests in/.exec(r.out)?.[1]);
  const us = (n: number) => n / HZ * 1e6 / requests;
  return { nginx: us(samples), module: us(module), moduleKernel: us(moduleKernel), glue: us(glue), requests };
}
const profiles: { variant: Variant; protocol: string; requests: number; keyPath?: KeyPathInNginx; rows: { what: string; us: number }[] }[] = [];
// The layout profiled: shared by default; BENCH_PROFILE_LAYOUT=nitro shows what shares
// CPU 0 with nginx there.
const PROFILE_LAYOUT = listed(process.env.BENCH_PROFILE_LAYOUT ?? 'shared', Object.keys(LAYOUTS))[0] as Layout;
if (hasPerf) {
  for (const variant of (['file', 'enclave', 'ecFile', 'ecEnclave'] as const).filter((v) => VARIANTS.includes(v))) {
    const p = await profile(variant, 'TLSv1.3', PROFILE_LAYOUT);
    profiles.push({ variant, protocol: 'TLSv1.3', ...p });
    log(`profile ${variant}: ${p.rows.slice(0, 4).map((x) => `${x.what} ${x.us.toFixed(0)} µs`).join(', ')}`);
  }
  must('taskset', ['-a', '-p', '-c', LAYOUTS.shared.enclave, String(fx.proc.pid)]);
}
const median = (xs: number[]) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };

// Sign latency: RSA-2048 PSS over a SHA-256 digest (what a TLS 1.3 handshake asks for).
// The CPU time the signing process spends per signature, beside each latency: for a
// remote key, a web-server worker's cost of one (the module, the socket calls, being
// put to sleep and woken), where the signature's own CPU is the enclave app's, given
// beside it: the two together against signing in-process are what a remote key costs.
const callerCpuUs = new WeakMap<number[], number>();
const signerCpuUs = new WeakMap<number[], number>();
function latencies(fn: () => void, n: number, signerCpuSeconds?: () => number): number[] {
  for (let i = 0; i < 50; i++) fn();
  const out: number[] = [];
  const cpu0 = process.cpuUsage();
  const signer0 = signerCpuSeconds?.() ?? 0;
  for (let i = 0; i < n; i++) { const t0 = process.hrtime.bigint(); fn(); out.push(Number(process.hrtime.bigint() - t0) / 1e3); }
  const cpu = process.cpuUsage(cpu0);
  if (signerCpuSeconds) signerCpuUs.set(out, ((signerCpuSeconds() - signer0) * 1e6) / n);
  out.sort((a, b) => a - b);
  callerCpuUs.set(out, (cpu.user + cpu.system) / n);
  return out;
}
const pct = (xs: number[], p: number) => xs[Math.min(xs.length - 1, Math.floor(xs.length * p))];
const digest = crypto.createHash('sha256').update('bench').digest();
const key = crypto.createPrivateKey(tok.keyPem);
const N = Number(process.env.BENCH_SIGNS ?? 2000);
const direct = latencies(() => { crypto.sign('sha256', Buffer.from('bench'), { key, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 }); }, N);
function p11Latency(lib: string, label: string, env: Record<string, string>, signerCpuSeconds?: () => number): number[] {
  Object.assign(process.env, env);
  const p = new pkcs11js.PKCS11();
  p.load(lib);
  p.C_Initialize();
  const slot = p.C_GetSlotList(true).find((s) => p.C_GetTokenInfo(s).label.trim() === label)!;
  const s = p.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
  p.C_Login(s, pkcs11js.CKU_USER, PIN);
  p.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }]);
  const [h] = p.C_FindObjects(s, 1);
  p.C_FindObjectsFinal(s);
  const mech = { mechanism: pkcs11js.CKM_RSA_PKCS_PSS, parameter: { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, saltLen: 32 } } as pkcs11js.Mechanism;
  const out = latencies(() => { p.C_SignInit(s, mech, h); p.C_Sign(s, digest, Buffer.alloc(256)); }, N, signerCpuSeconds);
  p.C_Finalize();
  return out;
}
const viaModule = p11Latency(MODULE_PATH, 'bench', { NITRO_ACM_KEY_ADDRESS: fx.address }, () => cpuSecondsOf(fx.proc.pid!));
// The floor under any remote key here: two processes that only exchange a request and
// a reply of a signature's sizes (a PSS request, a 256-byte signature) over a unix
// socket, the way the module and a key worker do, with no work between. The scheduler
// places both; then both on one CPU; then one on each CPU, as a Nitro enclave's
// vCPUs are apart from the instance's.
interface RoundTrip { p50: number; p99: number; callerCpu: number; calleeCpu: number }
const roundTrips: { where: string; r: RoundTrip }[] = [];
const roundTripBin = path.join(dir, 'round-trip');
if (spawnSync('gcc', ['-O2', '-o', roundTripBin, path.join(import.meta.dirname, 'round-trip.c')], { stdio: 'inherit' }).status !== 0) log('gcc could not build bench/round-trip.c: the round-trip floor is left out');
else {
  for (const [where, cpus] of [['placed by the scheduler', []], ['both on CPU 0', ['0', '0']], ['CPU 0 calls CPU 1', ['0', String(NCPU - 1)]]] as const) {
    roundTrips.push({ where, r: JSON.parse(must(roundTripBin, [String(N * 5), '64', '272', ...cpus])) as RoundTrip });
  }
}
// Another build of the module, in turns with this one (A B B A A B B A: a drift of the machine favours neither), so that both see the same machine.
const BASELINE = process.env.BENCH_BASELINE_MODULE;
const ORDER = [0, 1, 1, 0, 0, 1, 1, 0];
const turns = BASELINE ? ORDER.map((b) => p11Latency(b ? BASELINE : MODULE_PATH, 'bench', { NITRO_ACM_KEY_ADDRESS: fx.address }, () => cpuSecondsOf(fx.proc.pid!))) : [];
const viaSoftHsm = p11Latency(SOFTHSM_LIB, 'softbench', { SOFTHSM2_CONF: hsmConf });
const enclaveRss = Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${fx.proc.pid}/status`, 'utf8'))?.[1]) / 1024;
await fx.cleanup();

const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
const lines = [
  `Machine: ${os.availableParallelism()} CPUs (${cpu}), ${Math.round(os.totalmem() / 2 ** 30)} GiB, ${os.type()} ${os.release()}, Node ${process.version}, nginx ${/nginx\/(\S+)/.exec(must('nginx', ['-v']) + spawnSync('nginx', ['-v'], { encoding: 'utf8' }).stderr)?.[1]}.`,
  `Load: wrk -t1 -c16 -d${SECONDS}s -H "Connection: close" (a full handshake per request; session cache and tickets off), nginx worker_processes ${WORKERS}, RSA-2048, median of ${ROUNDS} interleaved rounds, all on this one machine.`,
  '',
  'Layouts: "shared" = every process on every CPU; "nitro" = the enclave app alone on CPU ' + LAYOUTS.nitro.enclave + ' (as an enclave\'s own vCPUs), nginx and wrk on CPU ' + LAYOUTS.nitro.rest + ', for every variant.',
];
// BENCH_SIGN_ONLY and BENCH_PROFILE_ONLY runs measure no handshake rates: no empty tables for them.
const ranHandshakes = Object.keys(results).length > 0;
if (ranHandshakes) lines.push('', '| layout, protocol | key in a file | key in the enclave app (nitro-acm module, pkcs11 engine) | key in the enclave app (nitro-acm module, pkcs11-provider) | key in SoftHSM2 (pkcs11 engine) |', '|---|---|---|---|---|');
for (const name of Object.keys(results)) {
  const r = results[name];
  const protocol = name;
  const f = median(r.file);
  const c = cpuResults[name];
  const us = (v: Variant) => `${median(c[v]).toFixed(0)} µs`;
  const cell = (v: Variant) => !r[v].length ? '—' : `${median(r[v]).toFixed(0)}/s (${(median(r[v]) / f).toFixed(2)}), ${us(v)}`;
  lines.push(`| ${protocol} | ${f.toFixed(0)}/s (1.00), ${us('file')} | ${cell('enclave')} | ${cell('provider')} | ${cell('softhsm2')} |`);
}
if (ranHandshakes) lines.push('', 'Each cell: handshakes per second (ratio to the key in a file), and the CPU time one handshake costs nginx and the enclave app together (each thread\'s time on a CPU, from /proc/PID/task/TID/schedstat; wrk left out).');
// In the nitro layout wrk shares nginx's CPU, and a TLS client's handshake costs about as
// much CPU as the server's: the rate ratio is bounded by it. On an instance the clients are
// elsewhere, so what the parent's CPUs can serve is set by nginx's CPU per handshake alone.
const nitroRows = Object.keys(results).filter((name) => name.startsWith('nitro'));
if (nitroRows.length) {
  lines.push('', 'The nitro layout by nginx\'s CPU alone (µs of nginx CPU per handshake; in brackets, what that CPU can serve against the key in a file, the clients being elsewhere on an instance), and what else ran on that CPU per handshake (wrk):', '', '| layout, protocol | key in a file | nitro-acm, engine | nitro-acm, provider | SoftHSM2, engine | wrk and the rest |', '|---|---|---|---|---|---|');
  for (const name of nitroRows) {
    const n = nginxResults[name];
    const f = median(n.file);
    const cell = (v: Variant) => !n[v].length ? '—' : `${median(n[v]).toFixed(0)} µs (${(f / median(n[v])).toFixed(2)})`;
    lines.push(`| ${name} | ${f.toFixed(0)} µs (1.00) | ${cell('enclave')} | ${cell('provider')} | ${cell('softhsm2')} | ${median(restResults[name].file).toFixed(0)} µs |`);
  }
  // The most any remote key can reach in this layout: nginx's CPU without the signature, and the client's beside it.
  const sign = callerCpuUs.get(direct)!;
  lines.push('', `The nitro layout's ceiling: the rate ratio a remote key would reach there if its signature cost nginx nothing at all, (F + C) / (F - S + C), with F nginx's CPU per handshake with the key in a file, S one RSA-2048 signature's CPU (${sign.toFixed(0)} µs, node:crypto in-process, from the sign latency table below) and C the client's CPU per handshake on the same CPU: wrk as measured, or a lean client (bench/tls-client.c, one connection at a time, against the same nginx on the same CPU):`, '', '| layout, protocol | wrk | OpenSSL client | GnuTLS client | no client | nitro-acm, best measured |', '|---|---|---|---|---|---|');
  for (const name of nitroRows) {
    const f = median(nginxResults[name].file);
    const ceiling = (c: number) => `${c.toFixed(0)} µs: ${((f + c) / (f - sign + c)).toFixed(2)}`;
    const lean = leanClientUs[name.slice('nitro '.length) as 'TLSv1.2' | 'TLSv1.3'];
    const best = Math.max(...(['enclave', 'provider'] as const).filter((v) => results[name][v].length).map((v) => median(results[name][v]) / median(results[name].file)));
    lines.push(`| ${name} | ${ceiling(median(restResults[name].file))} | ${lean ? ceiling(median(lean.openssl)) : '—'} | ${lean ? ceiling(median(lean.gnutls)) : '—'} | ${(f / (f - sign)).toFixed(2)} | ${Number.isFinite(best) ? best.toFixed(2) : '—'} |`);
  }
}
if (ranHandshakes && VARIANTS.includes('ecFile')) {
  lines.push('', 'ECDSA P-256, the same way (ratios to the P-256 key in a file; in brackets, to the RSA-2048 key in a file):', '', '| layout, protocol | P-256 key in a file | P-256 key in the enclave app (pkcs11 engine) | P-256 key in the enclave app (pkcs11-provider) |', '|---|---|---|---|');
  for (const name of Object.keys(results)) {
    const r = results[name];
    const f = median(r.ecFile), rsaFile = median(r.file);
    const cell = (v: Variant) => !r[v].length ? '—' : `${median(r[v]).toFixed(0)}/s (${(median(r[v]) / f).toFixed(2)}) [${(median(r[v]) / rsaFile).toFixed(2)}], ${median(cpuResults[name][v]).toFixed(0)} µs`;
    lines.push(`| ${name} | ${cell('ecFile')} | ${cell('ecEnclave')} | ${cell('ecProvider')} |`);
  }
}
if (profiles.length) {
  lines.push('', `Where one TLS 1.3 handshake's CPU goes (perf record -e cpu-clock -F ${PERF_HZ} -a while wrk runs, ${PROFILE_LAYOUT} layout; µs per handshake by process and library, rows under 3 µs left out; wrk, the load generator, shown apart and left out of the total):`, '');
  for (const p of profiles) {
    const total = p.rows.filter((x) => !x.what.startsWith(CLIENT)).reduce((n, x) => n + x.us, 0);
    lines.push(`${p.variant} (${p.requests} handshakes, ${total.toFixed(0)} µs each in nginx and the enclave app):`, '', '| process: library | µs per handshake |', '|---|---|');
    for (const x of p.rows.filter((x) => x.us >= 3)) lines.push(`| ${x.what} | ${x.us.toFixed(0)} |`);
    lines.push('');
    const k = p.keyPath;
    if (k) lines.push(`The remote signature in nginx, from call stacks (${k.requests} handshakes, nginx ${k.nginx.toFixed(0)} µs each): ${k.module.toFixed(1)} µs a handshake under the nitro-acm module's frames, ${k.moduleKernel.toFixed(1)} µs of it in the kernel (its socket calls, being put to sleep and woken); ${k.glue.toFixed(1)} µs in the engine or provider and p11-kit outside the module.`, '');
  }
}
lines.push('', `Sign latency, RSA-2048 PSS/SHA-256, ${N} sequential signs from one thread, the CPU time the calling process spent on each, and for the remote key the enclave app's (every thread's, from schedstat):`, '', '| path | p50 | p99 | CPU of the caller | CPU of the enclave app |', '|---|---|---|---|---|');
for (const [name, xs] of [['node:crypto sign in-process (no PKCS#11)', direct], ['nitro-acm module -> enclave app (unix socket)', viaModule], ['SoftHSM2 (in-process PKCS#11)', viaSoftHsm]] as const) {
  const signer = signerCpuUs.get(xs);
  lines.push(`| ${name} | ${pct(xs, 0.5).toFixed(0)} µs | ${pct(xs, 0.99).toFixed(0)} µs | ${callerCpuUs.get(xs)!.toFixed(0)} µs | ${signer === undefined ? '—' : `${signer.toFixed(0)} µs`} |`);
}
if (BASELINE) {
  const of = (b: number) => turns.filter((_, i) => ORDER[i] === b);
  const mean = (xs: number[]) => xs.reduce((a, x) => a + x, 0) / xs.length;
  const row = (xs: number[][]) => [mean(xs.map((x) => pct(x, 0.5))), mean(xs.map((x) => pct(x, 0.99))), mean(xs.map((x) => callerCpuUs.get(x)!)), mean(xs.map((x) => signerCpuUs.get(x)!))];
  const [mine, mine99, mineCpu, mineSigner] = row(of(0)), [base, base99, baseCpu, baseSigner] = row(of(1));
  lines.push(`| this build, in turns with the baseline (mean of ${of(0).length} runs) | ${mine.toFixed(0)} µs | ${mine99.toFixed(0)} µs | ${mineCpu.toFixed(1)} µs | ${mineSigner.toFixed(0)} µs |`);
  lines.push(`| baseline ${BASELINE} (mean of ${of(1).length} runs) | ${base.toFixed(0)} µs | ${base99.toFixed(0)} µs | ${baseCpu.toFixed(1)} µs | ${baseSigner.toFixed(0)} µs |`);
  lines.push('', `This build's p50 over the baseline's: ${(mine / base).toFixed(3)} (p99: ${(mine99 / base99).toFixed(3)}).`);
}
if (roundTrips.length) {
  lines.push('', `The floor under any remote key on this machine: ${N * 5} round trips of a 64-byte request and a 272-byte reply (a SIGN's sizes) between two C processes over a unix socket, doing nothing else (bench/round-trip.c: send, poll and recv on one side, as the module did before it waited in recv alone; epoll_wait, read and send on the other):`, '', '| placement | p50 | p99 | CPU of the caller | CPU of the callee | both |', '|---|---|---|---|---|---|');
  for (const { where, r } of roundTrips) lines.push(`| ${where} | ${r.p50.toFixed(0)} µs | ${r.p99.toFixed(0)} µs | ${r.callerCpu.toFixed(1)} µs | ${r.calleeCpu.toFixed(1)} µs | ${(r.callerCpu + r.calleeCpu).toFixed(1)} µs |`);
}
lines.push('', `Enclave app resident memory after the run: ${enclaveRss.toFixed(0)} MiB (1 token, ${os.availableParallelism()} crypto threads).`);
process.stdout.write(lines.join('\n') + '\n');
process.exit(0);
