// nitro-acm doctor: checks what breaks installs in practice, each finding with its
// fix. It only reads: configuration files, `nginx -T`, `openssl engine`,
// `p11-kit list-modules`, file modes, /proc (for vsock-proxy), and the agent's
// control socket.
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { processStartedAt, listProcesses } from '../agent/process-start.ts';
import { loadConfig, ConfigError, DEFAULT_CONFIG, configWarnings, targetSpec, type AcmConfig, type TokenConfig } from '../agent/config.ts';
import { companionFiles, owner, targetDirProblem, type TargetSpec } from '../agent/targets.ts';
import { controlCall } from '../agent/control.ts';
import type { StatusReport } from './status.ts';
import { inspectOpenSsl, chooseOpenSslPath, type OpenSslPath } from '../agent/openssl-path.ts';

export type Verdict = 'ok' | 'warn' | 'fail';
export interface Finding { check: string; verdict: Verdict; detail: string; fix?: string }

export interface DoctorOptions {
  /** Where p11-kit's module files are (default P11KIT_MODULE_DIRS; tests give their own). */
  p11kitModuleDirs?: string[];
  /** acm.yaml (default: the one the running agent serves, else /etc/nitro_enclaves/acm.yaml). */
  configFile?: string;
  /** The agent's control socket. */
  socket: string;
  /** The web server's main configuration (default: the one the agent names, else the server's own). */
  webServerConf?: string;
  /** The OpenSSL configuration file (default: OPENSSL_CONF, else OPENSSLDIR/openssl.cnf). */
  opensslConf?: string;
  /** /etc/os-release, for the Amazon Linux 2023 rule. */
  osRelease?: string;
  /** Where to look for the vsock-proxy process (tests). */
  proc?: string;
}

function run(cmd: string, args: string[], timeoutMs = 15_000, env: NodeJS.ProcessEnv = {}): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => execFile(cmd, args, { timeout: timeoutMs, env: { ...process.env, NITRO_ACM_P11_QUIET: '1', ...env } }, (e, stdout, stderr) => {
    const code = e ? (typeof (e as { code?: unknown }).code === 'number' ? (e as { code: number }).code : 127) : 0;
    resolve({ code, out: `${stdout}${stderr}` });
  }));
}

/** The tokens whose target is of this kind, with their target. */
const withTarget = (c: AcmConfig, kind: TargetSpec['kind']) => c.tokens.flatMap((t) => { const s = targetSpec(t); return s?.kind === kind ? [{ t, s }] : []; });

/** Strips comments and quotes from `nginx -T` output and returns its directives with the block they sit in. */
export function nginxDirectives(dump: string): { name: string; args: string[]; blocks: string[] }[] {
  const out: { name: string; args: string[]; blocks: string[] }[] = [];
  const stack: string[] = [];
  // nginx -T prints each file after "# configuration file PATH:"; comments are dropped, quotes kept as tokens.
  const text = dump.split('\n').map((l) => l.replace(/(^|\s)#.*$/, '')).join('\n');
  const tokens = text.match(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[{};]|[^\s{};]+/g) ?? [];
  let words: string[] = [];
  for (const tok of tokens) {
    if (tok === ';') { if (words.length) out.push({ name: words[0], args: words.slice(1), blocks: [...stack] }); words = []; }
    else if (tok === '{') { stack.push(words[0] ?? ''); words = []; }
    else if (tok === '}') { stack.pop(); words = []; }
    else words.push(tok.replace(/^["']|["']$/g, ''));
  }
  return out;
}

async function nginxFindings(c: AcmConfig, o: DoctorOptions, running: StatusReport | Error, openssl: OpenSslPath): Promise<Finding[]> {
  const stanzas = withTarget(c, 'NginxStanza').map(({ t, s }) => ({ label: t.label, file: s.path }));
  const args = ['-T', ...(o.webServerConf ? ['-c', o.webServerConf] : [])];
  // On the provider path nginx loads keys only with the OpenSSL configuration that loads pkcs11-provider.
  const dump = await run('nginx', args, 15_000, openssl === 'provider' ? { OPENSSL_CONF: c.options.openssl_conf } : {});
  const where = o.webServerConf ?? 'nginx.conf';
  if (dump.code === 127 && /ENOENT|not found/i.test(dump.out)) return [{ check: 'nginx', verdict: 'fail', detail: 'nginx is not installed (options.service is nginx)', fix: 'dnf install nginx (Amazon Linux) or apt-get install nginx' }];
  const findings: Finding[] = [];
  if (dump.code !== 0) {
    findings.push({ check: 'nginx -t', verdict: 'fail', detail: `nginx -t fails: ${dump.out.trim().split('\n').filter((l) => /emerg|error/.test(l)).join('; ') || dump.out.trim().slice(0, 300)}`, fix: 'fix the error nginx names, then: systemctl reload nginx' });
  } else findings.push({ check: 'nginx -t', verdict: 'ok', detail: `${where}: syntax is ok` });
  const ds = nginxDirectives(dump.out);
  const engine = ds.find((d) => d.name === 'ssl_engine' && d.blocks.length === 0);
  if (openssl === 'provider') {
    // The master has OPENSSL_CONF from its environment (checked below); `env` keeps it for what nginx starts (a binary upgrade).
    const env = ds.some((d) => d.name === 'env' && d.blocks.length === 0 && /^OPENSSL_CONF(=|$)/.test(d.args[0] ?? ''));
    findings.push(env
      ? { check: 'env OPENSSL_CONF', verdict: 'ok', detail: `${where} keeps OPENSSL_CONF for the processes nginx starts` }
      : { check: 'env OPENSSL_CONF', verdict: 'warn', detail: `no top-level "env OPENSSL_CONF;" in ${where}: a binary upgrade (nginx -s USR2) would start without pkcs11-provider`, fix: `add "env OPENSSL_CONF;" at the top level of ${where}` });
  } else findings.push(engine?.args[0] === 'pkcs11'
    ? { check: 'ssl_engine', verdict: 'ok', detail: 'ssl_engine pkcs11; is set at the top level' }
    : { check: 'ssl_engine', verdict: 'fail', detail: engine ? `ssl_engine is "${engine.args[0]}", not pkcs11` : `no top-level "ssl_engine pkcs11;" in ${where}: nginx cannot load keys from the enclave`, fix: `add "ssl_engine pkcs11;" at the top level of ${where} (below the pid line), then: systemctl reload nginx` });
  // A token added after nginx's master started cannot be loaded by a reload (libp11 reads the token list once).
  const pidFile = ds.find((d) => d.name === 'pid' && d.blocks.length === 0)?.args[0] ?? '/run/nginx.pid';
  let master: { pid: number; startedAt: number } | undefined;
  try {
    const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
    const startedAt = processStartedAt(pid, o.proc);
    if (startedAt !== undefined) master = { pid, startedAt };
  } catch { /* nginx is not running */ }
  if (openssl === 'provider') findings.push(environmentFinding(c, master?.pid, o.proc));
  for (const s of stanzas) {
    const inc = ds.filter((d) => d.name === 'include' && d.args[0] === s.file);
    const inServer = inc.filter((d) => d.blocks.includes('server'));
    const addedAt = running instanceof Error ? undefined : running.tokens.find((x) => x.label === s.label)?.addedAt;
    if (inServer.length && master && addedAt && Date.parse(addedAt) > master.startedAt) {
      findings.push({ check: `stanza ${s.label}`, verdict: 'fail', detail: `token ${s.label} was added (${addedAt}) after the running nginx master (pid ${master.pid}) started (${new Date(master.startedAt).toISOString()}): a reload cannot load its key (the OpenSSL pkcs11 engine and pkcs11-provider read the token list once, when nginx starts)`, fix: `the agent upgrades nginx in place by itself (options.restart_for_new_tokens); by hand, without dropping a connection: kill -USR2 ${master.pid}, then kill -QUIT ${master.pid} once the new master runs; or systemctl restart nginx (once; renewals only need reloads)` });
    } else if (inServer.length) findings.push({ check: `stanza ${s.label}`, verdict: 'ok', detail: `${s.file} is included in a server block` });
    else findings.push({ check: `stanza ${s.label}`, verdict: 'fail', detail: inc.length ? `${s.file} is included outside any server block (in ${inc[0].blocks.join(' > ') || 'the top level'})` : `${s.file} is not included anywhere: nginx does not serve token ${s.label}`, fix: `add "include ${s.file};" inside the server { } block that should serve it (with "listen 443 ssl;"), then: systemctl reload nginx` });
  }
  return findings;
}

async function httpdFindings(c: AcmConfig, o: DoctorOptions, openssl: OpenSslPath): Promise<Finding[]> {
  const findings: Finding[] = [];
  for (const { t, s } of withTarget(c, 'Conf')) {
    const file = s.path;
    let text = '';
    try { text = fs.readFileSync(file, 'utf8'); } catch {
      findings.push({ check: `conf ${t.label}`, verdict: 'warn', detail: `${file} does not exist yet (the agent writes it when the token is provisioned)`, fix: 'start the agent: systemctl start nitro-enclaves-acm' });
      continue;
    }
    const wanted = openssl === 'engine' ? 'pkcs11:' : companionFiles(s).keyUri;
    findings.push(new RegExp(`^\\s*SSLCertificateKeyFile\\s+"?${wanted.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`, 'mi').test(text)
      ? { check: `conf ${t.label}`, verdict: 'ok', detail: `${file} points SSLCertificateKeyFile at the enclave token` }
      : { check: `conf ${t.label}`, verdict: 'fail', detail: `${file} has no SSLCertificateKeyFile line naming ${openssl === 'engine' ? 'a pkcs11: URI' : `the key-URI file ${wanted}`} (the ${openssl} path)`, fix: `make sure ${file} has SSLCertificateKeyFile and SSLCertificateFile lines (any value) inside its VirtualHost; the agent rewrites them` });
  }
  if (openssl === 'provider') return [...findings, environmentFinding(c, masterPid([...SERVER_PROGRAMS.httpd], o.proc), o.proc)];
  // SSLCryptoDevice pkcs11 somewhere in the server's configuration.
  const dirs = (o.webServerConf ? [path.dirname(o.webServerConf)] : ['/etc/httpd', '/etc/apache2']).filter((d) => fs.existsSync(d));
  const files = dirs.flatMap((d) => (fs.readdirSync(d, { recursive: true }) as string[]).map((f) => path.join(d, f)).filter((f) => f.endsWith('.conf')));
  const hit = files.find((f) => { try { return /^\s*SSLCryptoDevice\s+pkcs11\b/mi.test(fs.readFileSync(f, 'utf8')); } catch { return false; } });
  findings.push(hit
    ? { check: 'SSLCryptoDevice', verdict: 'ok', detail: `SSLCryptoDevice pkcs11 in ${hit}` }
    : { check: 'SSLCryptoDevice', verdict: 'fail', detail: `no "SSLCryptoDevice pkcs11" under ${dirs.join(' or ') || '/etc/httpd'}: httpd cannot load keys from the enclave`, fix: 'in /etc/httpd/conf.d/ssl.conf change "SSLCryptoDevice builtin" to "SSLCryptoDevice pkcs11", then: systemctl reload httpd' });
  return findings;
}

/** The OpenSSL configuration file nginx's and httpd's OpenSSL reads. */
async function opensslConfPath(o: DoctorOptions): Promise<string> {
  const version = (await run('openssl', ['version', '-d'])).out;
  return o.opensslConf ?? process.env.OPENSSL_CONF ?? path.join(/OPENSSLDIR: "([^"]+)"/.exec(version)?.[1] ?? '/etc/pki/tls', 'openssl.cnf');
}

/** The OpenSSL path acm.yaml asks for, as the agent resolves it on this machine. */
function opensslPathFinding(c: AcmConfig): { finding: Finding; path?: OpenSslPath } {
  try {
    const chosen = chooseOpenSslPath(c.options.openssl, inspectOpenSsl());
    return { path: chosen.path, finding: { check: 'openssl path', verdict: 'ok', detail: `keys through the ${chosen.path === 'engine' ? 'pkcs11 engine (libp11)' : 'pkcs11-provider'} (${chosen.why})` } };
  } catch (e) {
    return { finding: { check: 'openssl path', verdict: 'fail', detail: (e as Error).message, fix: 'install what it names, or set options.openssl to the path this machine has' } };
  }
}

/** The names a web server's processes run under (httpd is apache2 on Debian and Ubuntu). */
const SERVER_PROGRAMS = { nginx: ['nginx'], httpd: ['httpd', 'apache2'] } as const;

/** The master process of a web server (its parent is not one of its own), or undefined. */
function masterPid(names: string[], proc = '/proc'): number | undefined {
  const ps = listProcesses(proc);
  const named = new Set(ps.filter((p) => names.includes(p.comm)).map((p) => p.pid));
  return ps.filter((p) => named.has(p.pid) && !named.has(p.ppid)).sort((a, b) => a.pid - b.pid)[0]?.pid;
}

/** The provider path: pkcs11-provider loads from options.openssl_conf, and the running web server was started with it. */
async function providerFindings(c: AcmConfig, o: DoctorOptions): Promise<Finding[]> {
  const conf = c.options.openssl_conf;
  const findings: Finding[] = [];
  if (!fs.existsSync(conf)) {
    findings.push({ check: 'provider config', verdict: 'fail', detail: `${conf} (options.openssl_conf) does not exist`, fix: 'start the agent: it writes it when it starts (systemctl start nitro-enclaves-acm)' });
  } else {
    const listed = await run('openssl', ['list', '-providers'], 15_000, { OPENSSL_CONF: conf });
    findings.push(/^\s*pkcs11\s*$/m.test(listed.out) && /status: active/.test(listed.out)
      ? { check: 'provider config', verdict: 'ok', detail: `OPENSSL_CONF=${conf} openssl list -providers: pkcs11 is active` }
      : { check: 'provider config', verdict: 'fail', detail: `OPENSSL_CONF=${conf} openssl list -providers does not show pkcs11 active: ${listed.out.trim().split('\n').slice(0, 4).join('; ')}`, fix: 'install pkcs11-provider; restart the agent so that it writes the file again' });
  }
  return findings;
}

/**
 * On the provider path: did the running web server's OpenSSL load pkcs11-provider
 * (started with OPENSSL_CONF naming options.openssl_conf)? Asked of its memory
 * map: nginx overwrites its environment block with its process title.
 */
function environmentFinding(c: AcmConfig, pid: number | undefined, proc?: string): Finding {
  const conf = c.options.openssl_conf;
  const svc = c.options.service;
  if (!pid) return { check: 'web server provider', verdict: 'warn', detail: `${svc} is not running: cannot check that it starts with OPENSSL_CONF=${conf}` };
  let maps = '';
  try { maps = fs.readFileSync(path.join(proc ?? '/proc', String(pid), 'maps'), 'utf8'); } catch { /* not ours to read */ }
  const fix = svc === 'nginx'
    ? `systemctl edit nginx, add "[Service]" and "Environment=OPENSSL_CONF=${conf}", then: systemctl restart nginx`
    : `Debian/Ubuntu: add "export OPENSSL_CONF=${conf}" to /etc/apache2/envvars; Amazon Linux/RHEL: systemctl edit httpd, "[Service]" and "Environment=OPENSSL_CONF=${conf}"; then restart it`;
  return /ossl-modules\/pkcs11\.so/.test(maps)
    ? { check: 'web server provider', verdict: 'ok', detail: `${svc} (pid ${pid}) has pkcs11-provider loaded` }
    : { check: 'web server provider', verdict: 'fail', detail: `${svc} (pid ${pid}) has not loaded pkcs11-provider: it was not started with OPENSSL_CONF=${conf}, so it cannot load the enclave's keys`, fix };
}

async function opensslFindings(o: DoctorOptions): Promise<Finding[]> {
  const findings: Finding[] = [];
  const engine = await run('openssl', ['engine', '-t', 'pkcs11']);
  findings.push(/\[ available \]/.test(engine.out)
    ? { check: 'openssl engine', verdict: 'ok', detail: 'the OpenSSL pkcs11 engine loads' }
    : { check: 'openssl engine', verdict: 'fail', detail: `openssl cannot load the pkcs11 engine: ${engine.out.trim().split('\n')[0] ?? ''}`, fix: 'dnf install openssl-pkcs11 (Amazon Linux) or apt-get install libengine-pkcs11-openssl' });
  const conf = await opensslConfPath(o);
  let os = '';
  try { os = fs.readFileSync(o.osRelease ?? '/etc/os-release', 'utf8'); } catch { /* unknown */ }
  const al2023 = /^ID="?amzn"?$/m.test(os) && /^VERSION_ID="?2023/m.test(os);
  // Asked of OpenSSL itself: "openssl engine" lists the engines its configuration
  // loads at start, as nginx's OpenSSL loads them, with every .include followed
  // (Amazon Linux 2023.7 and later include /etc/pki/tls/openssl.d/, where AWS's
  // own set-up now puts the engine).
  const loaded = await run('openssl', ['engine'], 15_000, { OPENSSL_CONF: conf });
  if (/^\(pkcs11\)/m.test(loaded.out)) {
    findings.push({ check: 'openssl.cnf', verdict: 'ok', detail: `${conf} (with what it includes) loads the pkcs11 engine` });
    return findings;
  }
  let text = '';
  try { text = fs.readFileSync(conf, 'utf8'); } catch { /* absent */ }
  const includedDir = /^\s*\.include\s*=?\s*(\S+)\s*$/m.exec(text)?.[1];
  const where = includedDir && !/\.(cnf|conf)$/.test(includedDir) ? `a new file ${path.join(includedDir, 'nitro-acm.cnf')} (${conf} includes that directory)` : conf;
  const sections = '[openssl_init] "engines = engine_section"; [engine_section] "pkcs11 = pkcs11_section"; [pkcs11_section] "engine_id = pkcs11" and "init = 1"';
  findings.push(al2023
    ? { check: 'openssl.cnf', verdict: 'fail', detail: `${conf} (with what it includes) does not load the pkcs11 engine; on Amazon Linux 2023 (OpenSSL 3) nginx then cannot use the enclave's keys`, fix: `put in ${where}: ${sections}; check with: openssl engine (it lists "(pkcs11)")` }
    : { check: 'openssl.cnf', verdict: 'ok', detail: `${conf} does not load the pkcs11 engine (needed on Amazon Linux 2023 only)` });
  return findings;
}

async function p11kitFinding(): Promise<Finding> {
  const r = await run('p11-kit', ['list-modules']);
  if (r.code === 127 && !r.out) return { check: 'p11-kit', verdict: 'fail', detail: 'p11-kit is not installed', fix: 'dnf install p11-kit (Amazon Linux) or apt-get install p11-kit' };
  return /^nitro-acm:/m.test(r.out)
    ? { check: 'p11-kit', verdict: 'ok', detail: 'p11-kit lists the nitro-acm module' }
    : { check: 'p11-kit', verdict: 'fail', detail: 'p11-kit does not list a module named nitro-acm: the OpenSSL engine will not find the enclave tokens', fix: 'reinstall the package (it puts nitro-acm.module in /usr/share/p11-kit/modules), or copy templates/nitro-acm.module to /etc/pkcs11/modules/' };
}

/** Where p11-kit reads module files: the package's, then the system's, which overrides a file of the same name. */
export const P11KIT_MODULE_DIRS = ['/usr/share/p11-kit/modules', '/etc/pkcs11/modules'];

/**
 * The modules other than nitro-acm that p11-kit-proxy loads into a program of
 * one of these names: a module file's enable-in (if any) must name the program
 * or p11-kit-proxy, and its disable-in must name neither (pkcs11.conf(5)).
 */
export function otherP11kitModules(programs: string[], dirs = P11KIT_MODULE_DIRS): string[] {
  const files = new Map<string, string>();
  for (const d of dirs) {
    let names: string[] = [];
    try { names = fs.readdirSync(d); } catch { continue; }
    for (const n of names) if (n.endsWith('.module')) files.set(n.slice(0, -'.module'.length), path.join(d, n));
  }
  const loaded: string[] = [];
  for (const [name, file] of [...files].sort()) {
    let text = '';
    try { text = fs.readFileSync(file, 'utf8'); } catch { continue; }
    const field = (k: string) => { const m = new RegExp(`^\\s*${k}\\s*:(.*)$`, 'm').exec(text); return m ? m[1].trim().split(/[\s,]+/).filter(Boolean) : undefined; };
    const module = field('module');
    if (name === 'nitro-acm' || !module?.length || module.some((m) => /nitro-acm-p11\.so$/.test(m))) continue;
    const names = (list: string[]) => list.some((x) => x === 'p11-kit-proxy' || programs.includes(x));
    const enableIn = field('enable-in'), disableIn = field('disable-in');
    if (enableIn && !names(enableIn)) continue;
    if (disableIn && names(disableIn)) continue;
    loaded.push(name);
  }
  return loaded;
}

function otherModulesFinding(c: AcmConfig, dirs?: string[]): Finding {
  const programs = [...SERVER_PROGRAMS[c.options.service]];
  const others = otherP11kitModules(programs, dirs);
  if (!others.length) return { check: 'p11-kit modules', verdict: 'ok', detail: `p11-kit loads no module but nitro-acm into ${programs.join(' or ')}` };
  return {
    check: 'p11-kit modules', verdict: 'warn',
    detail: `p11-kit-proxy also loads ${others.join(', ')} into every ${programs.join(' or ')} process: their code runs in the web server beside nitro-acm's, and a fault in one takes the server down (SoftHSM 2.6 crashes nginx and httpd as they exit, with OpenSSL 3)`,
    fix: `for each, copy its .module file to /etc/pkcs11/modules/ and add the line "disable-in: ${programs.join(' ')}"`,
  };
}

function fileFindings(c: AcmConfig, openssl: OpenSslPath): Finding[] {
  const findings: Finding[] = [];
  for (const t of c.tokens) {
    const s = targetSpec(t);
    if (!s) continue; // no files of its own to check
    const own = (() => { try { return owner(s); } catch { return undefined; } })();
    const files = [s.path, companionFiles(s).chain, ...(c.options.pin_in_config ? [] : [companionFiles(s).pin]), ...(openssl === 'provider' ? [companionFiles(s).keyUri] : [])];
    const problems: string[] = [];
    const dirProblem = targetDirProblem(path.dirname(s.path));
    if (dirProblem) {
      findings.push({ check: `directory ${t.label}`, verdict: 'fail', detail: `the agent refuses to write token ${t.label}'s files: ${dirProblem.replace(/ \(fix: .*\)$/, '')}`, fix: /\(fix: (.*)\)$/.exec(dirProblem)?.[1] ?? `create ${path.dirname(s.path)} owned by root, mode 0755` });
    }
    for (const f of files) {
      let st: fs.Stats;
      try { st = fs.statSync(f); } catch { problems.push(`${f} is missing`); continue; }
      if (st.mode & 0o007) problems.push(`${f} is readable by everyone (mode ${(st.mode & 0o777).toString(8)})`);
      if (own && (st.uid !== own.uid || st.gid !== own.gid)) problems.push(`${f} is owned by ${st.uid}:${st.gid}, not ${s.user ?? ''}:${s.group ?? ''} (${own.uid}:${own.gid})`);
    }
    findings.push(problems.length
      ? { check: `files ${t.label}`, verdict: 'fail', detail: problems.join('; '), fix: problems.some((p) => p.endsWith('missing')) ? 'start the agent (systemctl start nitro-enclaves-acm); journalctl -u nitro-enclaves-acm says why a token is not written' : 'restart the agent: it writes the files with the owner and mode from acm.yaml (user/group)' }
      : { check: `files ${t.label}`, verdict: 'ok', detail: `${files.length} files present, owner and mode right` });
  }
  return findings;
}

/** The command lines of running processes named `name` (from /proc). */
function processesNamed(name: string, proc = '/proc'): string[] {
  return listProcesses(proc).filter((p) => p.comm === name).map((p) => p.cmdline);
}

/** The enclave reaches KMS only through the parent's vsock-proxy on port 8000 (nitro-enclaves-vsock-proxy.service). */
function kmsProxyFinding(running: StatusReport | Error, proc?: string): Finding {
  if (!(running instanceof Error) && running.enclave.health?.localMode) return { check: 'kms proxy', verdict: 'ok', detail: 'local mode: the local cloud stands in for the KMS proxy' };
  const proxies = processesNamed('vsock-proxy', proc);
  const kms = proxies.find((c) => /\b8000\b/.test(c) && /kms\.[a-z0-9-]+\.amazonaws\.com/.test(c));
  if (kms) return { check: 'kms proxy', verdict: 'ok', detail: `vsock-proxy forwards port 8000 to KMS (${kms})` };
  return {
    check: 'kms proxy',
    verdict: 'fail',
    detail: proxies.length ? `vsock-proxy runs, but not on port 8000 to kms.<region>.amazonaws.com (${proxies.join('; ')}): the enclave cannot decrypt keys` : 'no vsock-proxy is running: the enclave cannot reach KMS, so no key can be decrypted or refreshed',
    fix: 'systemctl enable --now nitro-enclaves-vsock-proxy.service (it forwards vsock port 8000 to this region\'s KMS; the allowlist in /etc/nitro_enclaves/vsock-proxy.yaml must list kms.<region>.amazonaws.com)',
  };
}

/**
 * Key URIs in the form AWS's agent wrote them
 * (pkcs11:model=p11ne-token;manufacturer=Amazon;token=L;id=%01;object=acm-key;type=private):
 * copied by migrating users into hand-written configurations, they match no
 * nitro-acm token (its tokens have their own model and manufacturer, and each key
 * its own id, so that a renewed key is never mistaken for the old one).
 */
const REFERENCE_URI = /pkcs11:[^\s"'<>]*?(?:model=p11ne-token|manufacturer=Amazon|object=(?:acm|s3)-key)[^\s"'<>]*/g;

/** nginx's main file and every file it includes (globs in the last part of a path), as nginx reads them when nginx -T cannot say. */
function nginxIncludes(main: string, seen = new Set<string>()): string[] {
  if (seen.has(main) || seen.size >= 500) return [];
  seen.add(main);
  let text: string;
  try { text = fs.readFileSync(main, 'utf8'); } catch { return []; }
  for (const m of text.replace(/(^|\s)#.*$/gm, '').matchAll(/(?:^|[;{}\s])include\s+["']?([^"';\s]+)["']?\s*;/g)) {
    const pattern = path.resolve(path.dirname(main), m[1]);
    const dir = path.dirname(pattern), base = path.basename(pattern);
    const glob = new RegExp(`^${base.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`);
    let names: string[] = [];
    try { names = /[*?]/.test(base) ? fs.readdirSync(dir).filter((n) => glob.test(n)).sort() : [base]; } catch { /* no such directory */ }
    for (const n of names) nginxIncludes(path.join(dir, n), seen);
  }
  return [...seen];
}

/** The files a web server and its OpenSSL read: nginx -T's dump split by file, httpd's .conf files, openssl.cnf and what it includes. */
async function configurationTexts(c: AcmConfig, o: DoctorOptions): Promise<{ file: string; text: string }[]> {
  const out: { file: string; text: string }[] = [];
  const read = (file: string) => { try { out.push({ file, text: fs.readFileSync(file, 'utf8') }); } catch { /* absent or unreadable */ } };
  if (c.options.service === 'nginx') {
    const dump = await run('nginx', ['-T', ...(o.webServerConf ? ['-c', o.webServerConf] : [])]);
    // nginx -T prints each file it reads after a "# configuration file PATH:" line.
    for (const line of dump.out.split('\n')) {
      const header = /^# configuration file (.+):$/.exec(line);
      if (header) out.push({ file: header[1], text: '' });
      else if (out.length) out[out.length - 1].text += `${line}\n`;
    }
    // It prints nothing when its test fails, as it does while a key URI matches no token: follow the includes here.
    if (!out.length) for (const f of nginxIncludes(o.webServerConf ?? '/etc/nginx/nginx.conf')) read(f);
  } else {
    const dirs = (o.webServerConf ? [path.dirname(o.webServerConf)] : ['/etc/httpd', '/etc/apache2']).filter((d) => fs.existsSync(d));
    for (const d of dirs) for (const f of fs.readdirSync(d, { recursive: true }) as string[]) if (f.endsWith('.conf')) read(path.join(d, f));
  }
  const conf = await opensslConfPath(o);
  read(conf);
  for (const inc of [...(out.find((x) => x.file === conf)?.text ?? '').matchAll(/^\s*\.include\s*=?\s*(\S+)\s*$/gm)].map((m) => m[1])) {
    if (fs.existsSync(inc) && fs.statSync(inc).isDirectory()) for (const f of fs.readdirSync(inc)) read(path.join(inc, f));
    else read(inc);
  }
  return out;
}

/** Every reference-style URI found, with its file and line, and the nitro-acm URI that replaces it. */
function referenceUriFindings(c: AcmConfig, texts: { file: string; text: string }[], running: StatusReport | Error): Finding[] {
  const findings: Finding[] = [];
  for (const { file, text } of texts) {
    text.split('\n').forEach((line, i) => {
      for (const m of line.matchAll(REFERENCE_URI)) {
        const uri = m[0].replace(/;+$/, '');
        const attrs = new Map(uri.slice('pkcs11:'.length).split('?')[0].split(';').map((a) => a.split('=') as [string, string]));
        const label = decodeURIComponent(attrs.get('token') ?? '');
        const served = running instanceof Error ? undefined : running.tokens.find((t) => t.label === label)?.uris;
        // A FileDb token keeps its entries' ids: the URI's own id picks among them.
        const id = attrs.get('id')?.toLowerCase();
        const replacement = served?.find((u) => id && u.toLowerCase().includes(`;id=${id};`)) ?? served?.[0];
        const known = c.tokens.some((t) => t.label === label);
        findings.push({
          check: 'reference URI',
          verdict: 'fail',
          detail: `${file}:${i + 1}: a key URI in the form AWS's agent wrote (${uri.replace(/pin-value=[^&]*/, 'pin-value=(hidden)')}) matches no nitro-acm token${known ? '' : `, and acm.yaml has no token "${label}"`}`,
          fix: replacement
            ? `replace it with ${replacement}${/pin-value=/.test(uri) ? ' (the PIN from its file, not in the configuration)' : ''}`
            : `replace it with pkcs11:token=${encodeURIComponent(label)};type=private and the PIN as before; nitro-acm status prints the token's full URI, with its key's id, once the agent serves it`,
        });
      }
    });
  }
  return findings;
}

function agentFindings(c: AcmConfig, running: StatusReport | Error): Finding[] {
  if (running instanceof Error) {
    return [{ check: 'agent', verdict: 'fail', detail: running.message, fix: 'systemctl start nitro-enclaves-acm; journalctl -u nitro-enclaves-acm shows why it stopped' }];
  }
  const st = running;
  const findings: Finding[] = [st.enclave.reachable
    ? { check: 'enclave', verdict: 'ok', detail: `the enclave answers (${st.enclave.health!.tokens} tokens${st.enclave.health!.localMode ? ', LOCAL MODE' : ''})` }
    : { check: 'enclave', verdict: 'fail', detail: `the agent cannot reach the enclave: ${st.enclave.error}`, fix: 'nitro-cli describe-enclaves; check the allocator (systemctl status nitro-enclaves-allocator) has the CPUs and memory acm.yaml asks for' }];
  const att = st.enclave.attestation?.last;
  if (att) {
    findings.push(att.ok
      ? { check: 'attestation', verdict: 'ok', detail: `the enclave proved its image ${Math.round((Date.now() - Date.parse(att.checkedAt)) / 1000)} s ago (fresh nonce, chain, PCR${Object.keys(att.pcrs ?? {}).join('/')})` }
      : { check: 'attestation', verdict: 'fail', detail: `the enclave failed its attestation check: ${att.failures.join('; ')}`, fix: 'the running enclave is not the image the agent expects: nitro-cli terminate-enclave --enclave-name nitro-acm (the agent starts its image), or install the image-measurements.json that belongs with the EIF' });
  }
  for (const t of c.tokens) {
    const s = st.tokens.find((x) => x.label === t.label);
    if (!s) findings.push({ check: `token ${t.label}`, verdict: 'warn', detail: 'the running agent does not have this token yet (acm.yaml changed since it read it?)', fix: 'the agent applies saved edits by itself; see journalctl -u nitro-enclaves-acm' });
    else if (s.state === 'serving' && s.inEnclave) findings.push({ check: `token ${t.label}`, verdict: 'ok', detail: s.subject ? `serving ${s.subject}, not after ${s.notAfter}` : `serving ${s.uris?.length ?? 0} key(s) without a certificate` });
    else findings.push({ check: `token ${t.label}`, verdict: 'fail', detail: `${s.state}${s.inEnclave ? '' : ', not in the enclave'}${s.error ? `: ${s.error}` : ''}`, fix: 'the error names the cause (IAM role, S3 object, KMS key policy); nitro-acm status shows it too' });
  }
  return findings;
}

export async function doctor(given: DoctorOptions): Promise<Finding[]> {
  // What the running agent serves is what matters (local mode runs from its own
  // directory, with its own web server configuration); flags override it.
  const running = await controlCall(given.socket, 'status', {}, 15_000).then((r): StatusReport => ({ ...r, socket: given.socket })).catch((e: Error) => e);
  const agent = running instanceof Error ? undefined : running;
  const o = { ...given, configFile: given.configFile ?? agent?.configFile ?? DEFAULT_CONFIG, webServerConf: given.webServerConf ?? agent?.webServer?.configFile };
  let c: AcmConfig;
  try { c = loadConfig(o.configFile); } catch (e) {
    const detail = e instanceof ConfigError ? e.message : `${o.configFile}: ${(e as Error).message}`;
    return [{ check: 'acm.yaml', verdict: 'fail', detail, fix: `nitro-acm agent --check --config ${o.configFile} shows every problem` }];
  }
  const findings: Finding[] = [{ check: 'acm.yaml', verdict: 'ok', detail: `${o.configFile}: ${c.tokens.length} token(s), service ${c.options.service}${agent && !given.configFile ? ' (the file the running agent serves)' : ''}` }];
  for (const w of configWarnings(c, o.configFile)) {
    const m = /^(.*?): (token "[^"]+": its pin is \d+ characters); (.*)$/.exec(w);
    findings.push(m ? { check: 'pin length', verdict: 'warn', detail: `${m[1]}: ${m[2]}`, fix: m[3] } : { check: 'acm.yaml', verdict: 'warn', detail: w });
  }
  const openssl = opensslPathFinding(c);
  findings.push(openssl.finding);
  const via = openssl.path ?? 'engine';
  findings.push(...(via === 'engine' ? await opensslFindings(o) : await providerFindings(c, o)), await p11kitFinding(), otherModulesFinding(c, given.p11kitModuleDirs));
  findings.push(...(c.options.service === 'nginx' ? await nginxFindings(c, o, running, via) : await httpdFindings(c, o, via)));
  findings.push(...referenceUriFindings(c, await configurationTexts(c, o), running));
  findings.push(...fileFindings(c, via), kmsProxyFinding(running, given.proc), ...agentFindings(c, running));
  return findings;
}

export function formatFindings(f: Finding[]): string {
  const lines = f.map((x) => `${x.verdict === 'ok' ? 'ok  ' : x.verdict === 'warn' ? 'WARN' : 'FAIL'}  ${x.check}: ${x.detail}${x.fix ? `\n      fix: ${x.fix}` : ''}`);
  const bad = f.filter((x) => x.verdict === 'fail').length;
  return `${lines.join('\n')}\n\n${bad ? `${bad} problem${bad === 1 ? '' : 's'} found` : 'no problems found'}\n`;
}
