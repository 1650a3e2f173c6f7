// Real nginx and Apache httpd under a private prefix (local mode, tests and the
// benchmark), and a TLS client that reports which certificate a server presented.
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import crypto from 'node:crypto';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import type { OpenSslPath } from '../agent/openssl-path.ts';

/** Runs a command without blocking the event loop (tests may serve sockets from it meanwhile). */
export function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ status: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    let out = '';
    const p = spawn(cmd, args, { env });
    p.stdout.on('data', (d) => { out += d; });
    p.stderr.on('data', (d) => { out += d; });
    p.on('error', reject);
    // 'close', not 'exit': output can still be in flight when the process has exited.
    p.on('close', (status) => resolve({ status, out }));
  });
}

/**
 * A loopback port for a server this process is about to start. Test files run
 * in parallel processes, and a port that is free when asked can be taken before
 * the server binds it: by another process's freePort(), by any server binding
 * port 0, or as a connection's source port. So the port is picked below the
 * kernel's ephemeral range (which port 0 and source ports come from), and
 * claimed for this process's life by an abstract unix socket named after it,
 * which another process's freePort() cannot bind (the kernel drops the claim
 * when the process ends; no file is left).
 */
export async function freePort(): Promise<number> {
  const lowestEphemeral = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
  const first = 20000, span = lowestEphemeral - first;
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = span >= 1000 ? first + crypto.randomInt(span) : await kernelPort();
    if (await claimPort(port) && await canListen(port)) return port;
  }
  throw new Error('no free loopback port found in 100 tries');
}

/** Claims `port` for this process (see freePort); false if any process, this one included, claimed it already. */
export function claimPort(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const claim = net.createServer();
    claim.once('error', () => resolve(false));
    claim.listen(`\0nitro-acm-port-${port}`, () => { claim.unref(); resolve(true); });
  });
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

function kernelPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export interface SiteKey {
  serverName: string;
  certificateFile: string; // leaf + chain
  /** ssl_certificate_key value: a file path, or engine:pkcs11:<uri> */
  key: string;
}

export interface NginxOptions {
  dir: string;
  port: number;
  sites: SiteKey[];
  workers?: number;
  engine?: boolean;
  env?: Record<string, string>;
  user?: string;
  /** ssl_protocols value; default "TLSv1.2 TLSv1.3". */
  protocols?: string;
  /** CPU list for taskset (benchmarks); unset: any CPU. */
  cpus?: string;
}

export interface RunningServer {
  proc: ChildProcess;
  pid: number;
  dir: string;
  port: number;
  errorLog: () => string;
  reload(): void;
  stop(): Promise<void>;
}

/**
 * What an nginx main configuration needs for each OpenSSL path: the engine
 * path loads libp11's engine; the provider path needs nginx started with
 * OPENSSL_CONF, and `env` keeps it for the processes nginx starts.
 */
export function nginxMainLine(openssl: OpenSslPath): string {
  return openssl === 'engine' ? 'ssl_engine pkcs11;' : 'env OPENSSL_CONF;';
}

export function nginxConfig(o: NginxOptions): string {
  const servers = o.sites.map((s) => `
    server {
        listen 127.0.0.1:${o.port} ssl;
        server_name ${s.serverName};
        ssl_certificate ${s.certificateFile};
        ssl_certificate_key "${s.key}";
        ssl_protocols ${o.protocols ?? 'TLSv1.2 TLSv1.3'};
        ssl_session_cache off;
        ssl_session_tickets off;
        location / { return 200 "ok ${s.serverName}\\n"; }
    }`).join('\n');
  return `
daemon off;
master_process on;
worker_processes ${o.workers ?? 2};
user ${o.user ?? 'root root'};
error_log ${o.dir}/error.log info;
pid ${o.dir}/nginx.pid;
${o.engine === false ? '' : 'ssl_engine pkcs11;'}
${Object.keys(o.env ?? {}).map((k) => `env ${k};`).join('\n')}
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path ${o.dir}/tmp;
    proxy_temp_path ${o.dir}/tmp;
    fastcgi_temp_path ${o.dir}/tmp;
    uwsgi_temp_path ${o.dir}/tmp;
    scgi_temp_path ${o.dir}/tmp;
${servers}
}
`;
}

export async function startNginx(o: NginxOptions): Promise<RunningServer> {
  fs.mkdirSync(path.join(o.dir, 'tmp'), { recursive: true });
  const conf = path.join(o.dir, 'nginx.conf');
  fs.writeFileSync(conf, nginxConfig(o));
  return launchNginx({ prefix: o.dir, conf, port: o.port, env: o.env, cpus: o.cpus });
}

/** Checks an nginx configuration with nginx -t, starts nginx on it and waits until it listens. */
export async function launchNginx(o: { prefix: string; conf: string; port: number; env?: Record<string, string>; cpus?: string }): Promise<RunningServer> {
  const env = { ...process.env, ...o.env };
  const args = ['-p', o.prefix, '-c', o.conf, '-e', path.join(o.prefix, 'error.log')];
  const check = await run('nginx', ['-t', ...args], env);
  if (check.status !== 0) throw new Error(`nginx -t failed: ${check.out}`);
  const cmd = o.cpus ? ['taskset', '-c', o.cpus, 'nginx', ...args] : ['nginx', ...args];
  return supervise(cmd, env, o.prefix, o.port, { reload: 'SIGHUP', stop: 'SIGQUIT' });
}

/** Runs a server in the foreground, waits for its port, and knows how to reload and stop it. */
async function supervise(cmd: string[], env: NodeJS.ProcessEnv, dir: string, port: number, signals: { reload: NodeJS.Signals; stop: NodeJS.Signals }): Promise<RunningServer> {
  // A process group of its own, so a stop can take every worker along even if one hangs.
  const proc = spawn(cmd[0], cmd.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let out = '';
  proc.stdout!.on('data', (d) => { out += d; });
  proc.stderr!.on('data', (d) => { out += d; });
  const errorLog = () => { try { return out + fs.readFileSync(path.join(dir, 'error.log'), 'utf8'); } catch { return out; } };
  const group = (sig: NodeJS.Signals) => { try { process.kill(-proc.pid!, sig); } catch { /* gone */ } };
  await waitForPort(port, proc, errorLog).catch((e: Error) => {
    group('SIGKILL'); // a server that never served is not left behind
    throw e;
  });
  return {
    proc, pid: proc.pid!, dir, port, errorLog,
    reload() { process.kill(proc.pid!, signals.reload); },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = new Promise((r) => proc.once('exit', r));
        proc.kill(signals.stop);
        const t = setTimeout(() => {
          process.stderr.write(`warning: ${cmd[0]} (pid ${proc.pid}) did not stop within 5 s of ${signals.stop}; killing its process group\n`);
          group('SIGKILL');
        }, 5000);
        await exited;
        clearTimeout(t);
      }
      group('SIGKILL'); // workers left behind by a master that exited
    },
  };
}

function tryConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

/**
 * Waits until the port answers. Given the server's process, the listening socket
 * must be that process's own: a port another process holds answers too, while
 * the server fails to bind it (nginx retries for 2.5 s before it exits), so that
 * fails at once, naming the holder. A server that exits first fails it too.
 */
export async function waitForPort(port: number, proc?: ChildProcess, log: () => string = () => ''): Promise<void> {
  const end = Date.now() + 20_000;
  for (;;) {
    if (proc && proc.exitCode !== null) throw new Error(`server exited (${proc.exitCode}): ${log()}`);
    if (await tryConnect(port)) {
      if (!proc) return;
      const holders = listenerHolders(port);
      if (holders.some((h) => h.pid === proc.pid)) return;
      if (!holders.length) return; // not visible here (another user's, or no /proc): nothing to check
      if (proc.exitCode !== null) continue;
      const others = holders.map((h) => `pid ${h.pid} (${h.command})`).join(', ');
      throw new Error(`port ${port} is already held by another process: ${others}`);
    }
    if (Date.now() > end) throw new Error(`server did not listen on ${port}: ${log()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The processes holding a socket that listens on this TCP port (from /proc; those this user may see). */
export function listenerHolders(port: number): { pid: number; command: string }[] {
  const inodes = new Set<string>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try { text = fs.readFileSync(table, 'utf8'); } catch { continue; }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      // local_address is ADDR:PORT in hex; state 0A is LISTEN; field 9 is the inode.
      if (f.length > 9 && f[3] === '0A' && parseInt(f[1].split(':')[1], 16) === port) inodes.add(f[9]);
    }
  }
  const holders: { pid: number; command: string }[] = [];
  if (!inodes.size) return holders;
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    let fds: string[];
    try { fds = fs.readdirSync(`/proc/${d}/fd`); } catch { continue; }
    const holds = fds.some((fd) => {
      try { const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${d}/fd/${fd}`)); return !!m && inodes.has(m[1]); } catch { return false; }
    });
    if (holds) {
      let command = '?';
      try { command = fs.readFileSync(`/proc/${d}/comm`, 'utf8').trim(); } catch { /* gone */ }
      holders.push({ pid: Number(d), command });
    }
  }
  return holders;
}

/** A virtual host whose certificate lines live in a file of their own (an agent's Conf target). */
export interface IncludedSite { serverName: string; include: string }

export interface HttpdOptions {
  dir: string;
  port: number;
  sites: (SiteKey | IncludedSite)[];
  env?: Record<string, string>;
  /** What GET / answers (default "ok"). */
  body?: string;
  /** The engine path (default) needs SSLCryptoDevice; the provider path needs OPENSSL_CONF in env instead. */
  openssl?: OpenSslPath;
}

const HTTPD_MODULES = '/usr/lib/apache2/modules';

export function httpdConfig(o: HttpdOptions): string {
  const vhosts = o.sites.map((s) => `
<VirtualHost 127.0.0.1:${o.port}>
    ServerName ${s.serverName}
    SSLEngine on
${'include' in s ? `    Include ${s.include}` : `    SSLCertificateFile ${s.certificateFile}\n    SSLCertificateKeyFile "${s.key}"`}
</VirtualHost>`).join('\n');
  return `
ServerRoot "${o.dir}"
DefaultRuntimeDir "${o.dir}"
PidFile "${o.dir}/httpd.pid"
ErrorLog "${o.dir}/error.log"
LogLevel warn
Listen 127.0.0.1:${o.port}
User www-data
Group www-data
ServerName localhost
LoadModule mpm_event_module ${HTTPD_MODULES}/mod_mpm_event.so
LoadModule authz_core_module ${HTTPD_MODULES}/mod_authz_core.so
LoadModule ssl_module ${HTTPD_MODULES}/mod_ssl.so
LoadModule env_module ${HTTPD_MODULES}/mod_env.so
LoadModule dir_module ${HTTPD_MODULES}/mod_dir.so
DirectoryIndex index.html
StartServers 2
ServerLimit 4
ThreadsPerChild 16
MaxRequestWorkers 64
${(o.openssl ?? 'engine') === 'engine' ? 'SSLCryptoDevice pkcs11\n' : ''}SSLProtocol -all +TLSv1.2 +TLSv1.3
SSLSessionCache none
SSLSessionTickets off
SSLRandomSeed startup builtin
SSLRandomSeed connect builtin
DocumentRoot "${o.dir}/htdocs"
${vhosts}
`;
}

export async function startHttpd(o: HttpdOptions): Promise<RunningServer> {
  fs.mkdirSync(path.join(o.dir, 'htdocs'), { recursive: true });
  fs.writeFileSync(path.join(o.dir, 'htdocs/index.html'), o.body ?? 'ok\n');
  fs.chmodSync(o.dir, 0o755);
  const conf = path.join(o.dir, 'httpd.conf');
  fs.writeFileSync(conf, httpdConfig(o));
  return supervise(['/usr/sbin/apache2', '-f', conf, '-DFOREGROUND'], { ...process.env, ...o.env }, o.dir, o.port, { reload: 'SIGUSR1', stop: 'SIGTERM' });
}

export interface Handshake { ok: true; fingerprint256: string; subjectCN: string; protocol: string; body: string }
export interface TlsProbeOptions { servername: string; ca: string; minVersion?: tls.SecureVersion; maxVersion?: tls.SecureVersion; sigalgs?: string; ciphers?: string; timeoutMs?: number }

/** One full handshake (new connection, no resumption) + a GET; rejects if the chain does not verify. */
export function handshake(port: number, o: TlsProbeOptions): Promise<Handshake> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: '127.0.0.1', port, servername: o.servername, ca: o.ca, minVersion: o.minVersion, maxVersion: o.maxVersion, sigalgs: o.sigalgs, ciphers: o.ciphers, rejectUnauthorized: true, session: undefined });
    const timer = setTimeout(() => { s.destroy(); reject(new Error('handshake timed out')); }, o.timeoutMs ?? 10_000);
    let body = '';
    s.once('secureConnect', () => {
      const cert = s.getPeerCertificate();
      const protocol = s.getProtocol() ?? '';
      s.write(`GET / HTTP/1.0\r\nHost: ${o.servername}\r\n\r\n`);
      s.on('data', (d) => { body += d; });
      s.once('end', () => {
        clearTimeout(timer);
        resolve({ ok: true, fingerprint256: cert.fingerprint256, subjectCN: String(cert.subject?.CN ?? ''), protocol, body });
      });
    });
    s.once('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

/**
 * Handshakes until the certificate with `fingerprint` has been presented every
 * time for `steadyMs` (and at least 3 times), or `timeoutMs` passes; returns what
 * the last handshake presented (or its error), for the caller to assert on. One
 * match is not enough after a graceful reload: nginx starts the new workers, waits
 * 100 ms, then tells the old ones to stop, and until then either may accept a
 * connection, the old ones with the previous certificate (httpd's graceful
 * restart overlaps likewise).
 */
export async function servedSteadily(port: number, o: TlsProbeOptions, fingerprint: string, { steadyMs = 1000, timeoutMs = 15_000 } = {}): Promise<string> {
  let last = '';
  for (let since = 0, streak = 0, end = Date.now() + timeoutMs; Date.now() < end;) {
    last = await handshake(port, o).then((h) => h.fingerprint256, (e: Error) => `handshake failed: ${e.message}`);
    if (last !== fingerprint) { streak = 0; await new Promise((r) => setTimeout(r, 100)); continue; }
    if (streak++ === 0) since = Date.now();
    if (streak >= 3 && Date.now() - since >= steadyMs) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return last;
}

export function fingerprintOf(certPem: string): string {
  return new crypto.X509Certificate(certPem).fingerprint256;
}
