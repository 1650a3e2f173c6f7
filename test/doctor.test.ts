// nitro-acm doctor on installs broken the ways they break in practice: no
// "ssl_engine pkcs11;", a stanza included nowhere or outside a server block, the
// agent not running, files missing, Amazon Linux 2023 without the engine in
// openssl.cnf. Each finding names the problem and its fix; a good install is in
// test/local-mode.test.ts.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { doctor, nginxDirectives, otherP11kitModules } from '../src/commands/doctor.ts';
import { processStartedAt } from '../src/agent/process-start.ts';
import { startControlServer } from '../src/agent/control.ts';
import { launchNginx, freePort } from '../src/local/webservers.ts';
import { registerWithP11Kit, P11KIT_MODULE_FILE } from '../src/local/p11kit.ts';
import { providerConfig, inspectOpenSsl } from '../src/agent/openssl-path.ts';
import { cli } from './helpers/cli.ts';
import { tmpdir } from './helpers/enclave.ts';

const dir = tmpdir('doctor');
// No enclave here: p11-kit's module listing should fail fast, not wait out a vsock connect.
process.env.NITRO_ACM_KEY_ADDRESS = `unix:path=${path.join(dir, 'no-enclave.sock')}`;
// p11-kit must list the module (other tests write the same file; keep theirs).
test.before(() => { if (!fs.existsSync(P11KIT_MODULE_FILE)) registerWithP11Kit(); });
test.after.always(() => fs.rmSync(dir, { recursive: true, force: true }));

function nginxConf(name: string, body: { top?: string; http?: string; server?: string }): string {
  const prefix = path.join(dir, name);
  fs.mkdirSync(prefix, { recursive: true });
  const file = path.join(prefix, 'nginx.conf');
  fs.writeFileSync(file, `error_log ${prefix}/error.log;\npid ${prefix}/nginx.pid;\n${body.top ?? ''}\nevents {}\nhttp {\n  access_log off;\n  client_body_temp_path ${prefix};\n  proxy_temp_path ${prefix};\n  fastcgi_temp_path ${prefix};\n  uwsgi_temp_path ${prefix};\n  scgi_temp_path ${prefix};\n${body.http ?? ''}\n  server {\n    listen 127.0.0.1:1;\n${body.server ?? ''}\n  }\n}\n`);
  return file;
}

/** A /proc with the given processes (pid -> [comm, argv]). */
function fakeProc(ps: Record<string, [string, string[]]>): string {
  const root = fs.mkdtempSync(path.join(dir, 'proc-'));
  for (const [pid, [comm, argv]] of Object.entries(ps)) {
    fs.mkdirSync(path.join(root, pid));
    fs.writeFileSync(path.join(root, pid, 'comm'), `${comm}\n`);
    fs.writeFileSync(path.join(root, pid, 'cmdline'), argv.join('\0') + '\0');
  }
  return root;
}

test('kms proxy: the stock vsock-proxy service passes; one to another host, or none, fails with the fix', async (t) => {
  const stanza = path.join(dir, 'stanza-kms.conf');
  fs.writeFileSync(stanza, '# written by nitro-acm\n');
  const check = async (ps: Record<string, [string, string[]]>) => (await doctor({ configFile: acmYaml([stanza]), socket: path.join(dir, 'no-agent.sock'), webServerConf: nginxConf('kms', {}), proc: fakeProc(ps) })).find((f) => f.check === 'kms proxy')!;
  const stock = await check({ 1: ['systemd', ['/sbin/init']], 812: ['vsock-proxy', ['/usr/bin/vsock-proxy', '8000', 'kms.eu-west-1.amazonaws.com', '443', '--config', '/etc/nitro_enclaves/vsock-proxy.yaml']] });
  t.is(stock.verdict, 'ok');
  t.regex(stock.detail, /port 8000 to KMS \(\/usr\/bin\/vsock-proxy 8000 kms\.eu-west-1\.amazonaws\.com 443/);
  const other = await check({ 812: ['vsock-proxy', ['/usr/bin/vsock-proxy', '8001', 'dynamodb.us-east-1.amazonaws.com', '443']] });
  t.is(other.verdict, 'fail');
  t.regex(other.detail, /not on port 8000 to kms\.<region>\.amazonaws\.com \(\/usr\/bin\/vsock-proxy 8001 dynamodb/);
  const none = await check({ 1: ['systemd', ['/sbin/init']] });
  t.is(none.verdict, 'fail');
  t.regex(none.detail, /no vsock-proxy is running: the enclave cannot reach KMS/);
});

/** A new acm.yaml with one token per stanza (a file of its own: the tests run at once). */
let acmFiles = 0;
function acmYaml(stanzas: string[]): string {
  const file = path.join(dir, `acm-${++acmFiles}.yaml`);
  fs.writeFileSync(file, `tokens:\n${stanzas.map((s, i) => `  - label: t${i}\n    source:\n      S3:\n        uri: "s3://bucket/t${i}.json"\n    target:\n      NginxStanza:\n        path: ${s}\n`).join('')}`);
  return file;
}

test('nginx -T parsing: directives with the blocks they sit in, comments and quotes handled', (t) => {
  const ds = nginxDirectives('# configuration file /etc/nginx/nginx.conf:\nssl_engine pkcs11; # the engine\nhttp {\n server {\n  include "/etc/pki/nginx/a b.conf";\n }\n include /x.conf;\n}\n');
  t.deepEqual(ds, [
    { name: 'ssl_engine', args: ['pkcs11'], blocks: [] },
    { name: 'include', args: ['/etc/pki/nginx/a b.conf'], blocks: ['http', 'server'] },
    { name: 'include', args: ['/x.conf'], blocks: ['http'] },
  ]);
});

test('a broken nginx install: every problem found, each with its fix; exit 1', async (t) => {
  const notIncluded = path.join(dir, 'stanza-a.conf');
  const outside = path.join(dir, 'stanza-b.conf');
  for (const f of [notIncluded, outside]) fs.writeFileSync(f, '# written by nitro-acm\n');
  const conf = nginxConf('broken', { http: `  include ${outside};` });
  const osRelease = path.join(dir, 'os-release');
  fs.writeFileSync(osRelease, 'NAME="Amazon Linux"\nVERSION="2023"\nID="amzn"\nVERSION_ID="2023"\n');
  const opensslConf = path.join(dir, 'openssl.cnf');
  fs.writeFileSync(opensslConf, '[openssl_init]\nproviders = provider_sect\n');
  const f = await doctor({ configFile: acmYaml([notIncluded, outside]), socket: path.join(dir, 'no-agent.sock'), webServerConf: conf, opensslConf, osRelease, proc: fakeProc({}) });
  const byCheck = Object.fromEntries(f.map((x) => [x.check, x]));
  t.is(byCheck['nginx -t'].verdict, 'ok');
  t.is(byCheck.ssl_engine.verdict, 'fail');
  t.regex(byCheck.ssl_engine.detail, /no top-level "ssl_engine pkcs11;"/);
  t.regex(byCheck.ssl_engine.fix!, /add "ssl_engine pkcs11;" at the top level of .*nginx\.conf/);
  t.is(byCheck['stanza t0'].verdict, 'fail');
  t.regex(byCheck['stanza t0'].detail, /stanza-a\.conf is not included anywhere/);
  t.regex(byCheck['stanza t0'].fix!, /inside the server \{ \} block/);
  t.regex(byCheck['stanza t1'].detail, /stanza-b\.conf is included outside any server block \(in http\)/);
  t.is(byCheck['openssl.cnf'].verdict, 'fail', 'Amazon Linux 2023 needs the engine in openssl.cnf');
  t.regex(byCheck['openssl.cnf'].fix!, /engine_id = pkcs11/);
  t.is(byCheck['files t0'].verdict, 'fail');
  t.regex(byCheck['files t0'].detail, /stanza-a\.chain\.pem is missing; .*stanza-a\.pin is missing/);
  t.is(byCheck['kms proxy'].verdict, 'fail', 'no vsock-proxy process in this (empty) /proc');
  t.regex(byCheck['kms proxy'].fix!, /systemctl enable --now nitro-enclaves-vsock-proxy\.service/);
  t.is(byCheck.agent.verdict, 'fail');
  t.regex(byCheck.agent.detail, /no-agent\.sock: no agent is running there/);
  t.regex(byCheck.agent.fix!, /systemctl start nitro-enclaves-acm/);

  // The same from the command line, as an operator runs it.
  const r = await cli(['doctor', '--config', acmYaml([notIncluded, outside]), '--socket', path.join(dir, 'no-agent.sock'), '--nginx-conf', conf]);
  t.is(r.status, 1);
  t.regex(r.stdout, /^FAIL {2}ssl_engine: .*\n {6}fix: add "ssl_engine pkcs11;"/m);
  t.regex(r.stdout, /\d+ problems found\n$/);
});

test('Amazon Linux 2023: the pkcs11 engine counts wherever OpenSSL loads it from, a directory openssl.cnf includes too', async (t) => {
  // AWS's own set-up now writes the engine into /etc/pki/tls/openssl.d/ (openssl.cnf
  // includes it from Amazon Linux 2023.7 on). The real openssl decides.
  const osRelease = path.join(dir, 'os-release-al2023');
  fs.writeFileSync(osRelease, 'NAME="Amazon Linux"\nVERSION="2023"\nID="amzn"\nVERSION_ID="2023"\n');
  const tls = path.join(dir, 'pki-tls');
  fs.mkdirSync(path.join(tls, 'openssl.d'), { recursive: true });
  const opensslConf = path.join(tls, 'openssl.cnf');
  fs.writeFileSync(opensslConf, `openssl_conf = openssl_init\n.include ${tls}/openssl.d\n\n[openssl_init]\nproviders = provider_sect\n\n[provider_sect]\ndefault = default_sect\n\n[default_sect]\nactivate = 1\n`);
  const finding = async () => (await doctor({ configFile: acmYaml([]), socket: path.join(dir, 'no-agent.sock'), opensslConf, osRelease, proc: fakeProc({}) })).find((x) => x.check === 'openssl.cnf')!;

  const missing = await finding();
  t.is(missing.verdict, 'fail');
  t.is(missing.fix, `put in a new file ${tls}/openssl.d/nitro-acm.cnf (${opensslConf} includes that directory): [openssl_init] "engines = engine_section"; [engine_section] "pkcs11 = pkcs11_section"; [pkcs11_section] "engine_id = pkcs11" and "init = 1"; check with: openssl engine (it lists "(pkcs11)")`);

  // Done as the fix says (and as AWS's set-up script does, in a file of its own name).
  fs.writeFileSync(path.join(tls, 'openssl.d', 'openssl-acm.cnf'), '[openssl_init]\nengines = engine_section\n\n[engine_section]\npkcs11 = pkcs11_section\n\n[pkcs11_section]\nengine_id = pkcs11\ninit = 1\n');
  const fixed = await finding();
  t.is(fixed.verdict, 'ok');
  t.regex(fixed.detail, /with what it includes\) loads the pkcs11 engine/);

  // A section that names the engine but is not reached from openssl_init loads nothing.
  fs.writeFileSync(path.join(tls, 'openssl.d', 'openssl-acm.cnf'), '[pkcs11_section]\nengine_id = pkcs11\ninit = 1\n');
  t.is((await finding()).verdict, 'fail', 'engine_id alone is not enough');
});

test('a correct nginx configuration passes the nginx checks; a broken acm.yaml is reported with its line', async (t) => {
  const stanza = path.join(dir, 'stanza-ok.conf');
  fs.writeFileSync(stanza, '# written by nitro-acm\n');
  const conf = nginxConf('good', { top: 'ssl_engine pkcs11;', server: `    include ${stanza};` });
  const f = await doctor({ configFile: acmYaml([stanza]), socket: path.join(dir, 'no-agent.sock'), webServerConf: conf });
  const byCheck = Object.fromEntries(f.map((x) => [x.check, x]));
  t.is(byCheck.ssl_engine.verdict, 'ok');
  t.is(byCheck['stanza t0'].verdict, 'ok');
  t.is(byCheck['openssl engine'].verdict, 'ok');
  t.is(byCheck['p11-kit'].verdict, 'ok');

  const bad = path.join(dir, 'bad.yaml');
  fs.writeFileSync(bad, 'tokens:\n  - label: x\n    pin: ""\n');
  const b = await doctor({ configFile: bad, socket: path.join(dir, 'no-agent.sock') });
  t.is(b.length, 1);
  t.is(b[0].verdict, 'fail');
  t.regex(b[0].detail, /bad\.yaml:3:\d+: /);
  t.regex(b[0].fix!, /nitro-acm agent --check --config .*bad\.yaml/);
});

test('a token added after the running nginx master started: a reload cannot load it, doctor says restart', async (t) => {
  const startedAt = processStartedAt(process.pid)!;
  t.true(Math.abs(startedAt - (Date.now() - process.uptime() * 1000)) < 2000, 'process start times read from /proc are right');
  const stanza = path.join(dir, 'stanza-added.conf');
  fs.writeFileSync(stanza, '# written by nitro-acm\n');
  const port = await freePort();
  const conf = nginxConf('added', { top: 'daemon off;', server: `    include ${stanza};` });
  fs.writeFileSync(conf, fs.readFileSync(conf, 'utf8').replace('listen 127.0.0.1:1;', `listen 127.0.0.1:${port};`));
  const nginx = await launchNginx({ prefix: path.dirname(conf), conf, port });
  t.teardown(() => nginx.stop());
  // An agent whose token t0 an acm.yaml edit added just now, after nginx started.
  await new Promise((r) => setTimeout(r, 50));
  let addedAt = new Date().toISOString();
  const socket = path.join(dir, 'added-agent.sock');
  const agent = await startControlServer(socket, { status: async () => ({ configFile: '', enclave: { reachable: true, health: { ok: true, version: 1, nsm: 'simulated', generation: 1, tokens: 1, localMode: true } }, tokens: [{ label: 't0', source: 'acm', target: 'nginx', state: 'serving', inEnclave: true, addedAt }] }) });
  t.teardown(() => agent.close());
  const finding = async () => (await doctor({ configFile: acmYaml([stanza]), socket, webServerConf: conf })).find((f) => f.check === 'stanza t0')!;
  const late = await finding();
  t.is(late.verdict, 'fail');
  t.regex(late.detail, new RegExp(`token t0 was added \\(${addedAt.replace(/\./g, '\\.')}\\) after the running nginx master \\(pid ${nginx.pid}\\) started`));
  t.regex(late.fix!, /systemctl restart nginx/);
  // Added before this nginx started (it was restarted since): fine.
  addedAt = new Date(Date.now() - 3600_000).toISOString();
  t.is((await finding()).verdict, 'ok');
});

test('a target directory other users can write to, and a short PIN: doctor says so, with the fix (security, issue 11)', async (t) => {
  const open = path.join(dir, 'world-writable');
  fs.mkdirSync(open, { recursive: true });
  fs.chmodSync(open, 0o777);
  const file = path.join(dir, `acm-${++acmFiles}.yaml`);
  fs.writeFileSync(file, `tokens:\n  - label: short\n    pin: "1234"\n    source:\n      S3:\n        uri: "s3://bucket/a.json"\n    target:\n      NginxStanza:\n        path: ${open}/a.conf\n`);
  const f = await doctor({ configFile: file, socket: path.join(dir, 'no-agent.sock'), webServerConf: nginxConf('dirs', {}) });
  const d = f.find((x) => x.check === 'directory short')!;
  t.is(d.verdict, 'fail');
  t.regex(d.detail, new RegExp(`refuses to write token short's files: directory ${open} is writable by everyone`));
  t.is(d.fix, `chmod go-w ${open}`);
  const p = f.find((x) => x.check === 'pin length')!;
  t.is(p.verdict, 'warn');
  t.regex(p.detail, /acm-\d+\.yaml:2: token "short": its pin is 4 characters/);
  t.regex(p.fix ?? '', /Leave pin out/);
  const check = await cli(["agent", "--check", "--config", file]);
  t.is(check.status, 0, 'still a valid file');
  t.regex(check.stderr, /warning: .*:2: token "short": its pin is 4 characters; under 16/);
});

// Issue 12: a migrating user's hand-written configurations keep the URIs AWS's
// agent wrote (model=p11ne-token;manufacturer=Amazon;...;id=%01;object=acm-key),
// which match no nitro-acm token. Doctor finds each, in nginx's files and in
// OpenSSL's, and prints the URI that replaces it, never the PIN it held.
test("key URIs in AWS's form are found with file and line, and their replacement printed", async (t) => {
  const stanza = path.join(dir, 'stanza-ref.conf');
  fs.writeFileSync(stanza, '# written by nitro-acm\n');
  const handWritten = path.join(dir, 'hand-written.conf');
  fs.writeFileSync(handWritten, '# kept from the AWS set-up\nssl_certificate /etc/pki/nginx/cert.pem;\nssl_certificate_key "engine:pkcs11:pkcs11:model=p11ne-token;manufacturer=Amazon;token=t0;id=%01;object=acm-key;type=private?pin-value=s3cret-PIN-1234";\n');
  const conf = nginxConf('reference', { top: 'ssl_engine pkcs11;', server: `    include ${stanza};\n    include ${handWritten};` });
  const opensslConf = path.join(dir, 'reference-openssl.cnf');
  fs.writeFileSync(opensslConf, '[req]\n# a script signs with the old key\nkey = pkcs11:model=p11ne-token;manufacturer=Amazon;token=other;id=%01;object=s3-key;type=private\n');
  const socket = path.join(dir, 'reference-agent.sock');
  const served = 'pkcs11:token=t0;id=%ab%cd;type=private?pin-source=file:/etc/pki/nginx/t0.pin';
  const agent = await startControlServer(socket, { status: async () => ({ configFile: '', enclave: { reachable: true, health: { ok: true, version: 1, nsm: 'simulated', generation: 1, tokens: 1, localMode: true } }, tokens: [{ label: 't0', source: 'acm', target: 'nginx', state: 'serving', inEnclave: true, uris: [served] }] }) });
  t.teardown(() => agent.close());
  const found = (await doctor({ configFile: acmYaml([stanza]), socket, webServerConf: conf, opensslConf, proc: fakeProc({}) })).filter((f) => f.check === 'reference URI');
  t.is(found.length, 2, JSON.stringify(found));
  t.true(found[0].detail.startsWith(`${handWritten}:3: a key URI in the form AWS's agent wrote`), found[0].detail);
  t.is(found[0].fix, `replace it with ${served} (the PIN from its file, not in the configuration)`);
  t.false(JSON.stringify(found).includes('s3cret-PIN-1234'), 'the PIN it held is never printed');
  t.true(found[1].detail.startsWith(`${opensslConf}:3: `), found[1].detail);
  t.regex(found[1].detail, /acm\.yaml has no token "other"/);
  t.regex(found[1].fix!, /^replace it with pkcs11:token=other;type=private and the PIN as before; nitro-acm status prints/);
});

test('the provider path: doctor checks pkcs11-provider loads from options.openssl_conf and that the running nginx loaded it, with the fix', async (t) => {
  const stanza = path.join(dir, 'stanza-provider.conf');
  fs.writeFileSync(stanza, '# written by nitro-acm\n');
  const opensslConf = path.join(dir, 'provider-openssl.cnf');
  fs.writeFileSync(opensslConf, providerConfig(opensslConf, inspectOpenSsl()));
  const acm = acmYaml([stanza]);
  fs.writeFileSync(acm, `options:\n  openssl: provider\n  openssl_conf: ${opensslConf}\n${fs.readFileSync(acm, 'utf8')}`);
  const port = await freePort();
  const conf = nginxConf('provider', { top: 'daemon off;\nenv OPENSSL_CONF;', server: `    include ${stanza};` });
  fs.writeFileSync(conf, fs.readFileSync(conf, 'utf8').replace('listen 127.0.0.1:1;', `listen 127.0.0.1:${port};`));
  const findings = async () => {
    const f = await doctor({ configFile: acm, socket: path.join(dir, 'no-agent.sock'), webServerConf: conf });
    return Object.fromEntries(f.filter((x) => ['openssl path', 'provider config', 'web server provider', 'env OPENSSL_CONF', 'ssl_engine', 'openssl engine'].includes(x.check)).map((x) => [x.check, x]));
  };
  // nginx started the way an operator forgets: without OPENSSL_CONF.
  let nginx = await launchNginx({ prefix: path.dirname(conf), conf, port });
  let f = await findings();
  t.is(f['openssl path'].verdict, 'ok');
  t.regex(f['openssl path'].detail, /pkcs11-provider \(options\.openssl: provider\)/);
  t.is(f['provider config'].verdict, 'ok', f['provider config'].detail);
  t.is(f['env OPENSSL_CONF'].verdict, 'ok');
  t.false('ssl_engine' in f || 'openssl engine' in f, 'the engine is not asked for on the provider path');
  t.is(f['web server provider'].verdict, 'fail');
  t.regex(f['web server provider'].detail, new RegExp(`nginx \\(pid ${nginx.pid}\\) has not loaded pkcs11-provider: it was not started with OPENSSL_CONF=${opensslConf.replace(/\./g, '\\.')}`));
  t.regex(f['web server provider'].fix!, /systemctl edit nginx.*Environment=OPENSSL_CONF=/);
  await nginx.stop();
  // Started with it: passes.
  nginx = await launchNginx({ prefix: path.dirname(conf), conf, port, env: { OPENSSL_CONF: opensslConf } });
  t.teardown(() => nginx.stop());
  f = await findings();
  t.is(f['web server provider'].verdict, 'ok', f['web server provider'].detail);
  // A configuration that does not load the provider is caught before nginx is.
  fs.writeFileSync(opensslConf, '# nothing\n');
  f = await findings();
  t.is(f['provider config'].verdict, 'fail');
  t.regex(f['provider config'].detail, /does not show pkcs11 active/);
});

// The tests' own machine had SoftHSM2 and OpenSC registered with p11-kit (Debian's
// packages do so), so p11-kit-proxy loaded both into every nginx and httpd, and
// SoftHSM crashed them as they exited (dmesg: segfault in libsofthsm2.so).
test('other PKCS#11 modules p11-kit loads into the web server are named, with how to keep them out', async (t) => {
  const pkg = path.join(dir, 'p11-pkg'), sys = path.join(dir, 'p11-sys');
  for (const [d, files] of [[pkg, {
    'nitro-acm.module': 'module: /usr/lib64/pkcs11/nitro-acm-p11.so\n',
    'softhsm2.module': '# a comment\nmodule: /usr/lib/softhsm/libsofthsm2.so\n',
    'p11-kit-trust.module': 'module: p11-kit-trust.so\ndisable-in: p11-kit-proxy\n',
    'desktop.module': 'module: desktop.so\nenable-in: gnome-shell seahorse\n',
    'opensc-pkcs11.module': 'module: opensc-pkcs11.so\n',
    'for-nginx.module': 'module: fn.so\nenable-in: nginx\n',
    'README': 'not a module file\n',
    // Hostile or broken files are skipped, never thrown on: no module line, an empty one, binary garbage.
    'empty.module': '',
    'blank.module': 'module:\n',
    'garbage.module': '\u0000\u00ff\ufffdmodule\u0000:\n'.repeat(1000),
  }], [sys, { 'opensc-pkcs11.module': 'module: opensc-pkcs11.so\ndisable-in: nginx apache2 httpd\n' }]] as const) {
    fs.mkdirSync(d, { recursive: true });
    for (const [n, text] of Object.entries(files)) fs.writeFileSync(path.join(d, n), text);
  }
  t.deepEqual(otherP11kitModules(['nginx'], [pkg, sys]), ['for-nginx', 'softhsm2'], 'the system directory\'s opensc file overrides the package\'s');
  t.deepEqual(otherP11kitModules(['httpd', 'apache2'], [pkg, sys]), ['softhsm2']);
  t.deepEqual(otherP11kitModules(['nginx'], [pkg]), ['for-nginx', 'opensc-pkcs11', 'softhsm2']);
  const f = (await doctor({ configFile: acmYaml([]), socket: path.join(dir, 'no-agent.sock'), webServerConf: nginxConf('modules', {}), p11kitModuleDirs: [pkg, sys] })).find((x) => x.check === 'p11-kit modules')!;
  t.is(f.verdict, 'warn');
  t.regex(f.detail, /^p11-kit-proxy also loads for-nginx, softhsm2 into every nginx process/);
  t.is(f.fix, 'for each, copy its .module file to /etc/pkcs11/modules/ and add the line "disable-in: nginx"');
  const clean = (await doctor({ configFile: acmYaml([]), socket: path.join(dir, 'no-agent.sock'), webServerConf: nginxConf('modules', {}), p11kitModuleDirs: [sys] })).find((x) => x.check === 'p11-kit modules')!;
  t.deepEqual([clean.verdict, clean.detail], ['ok', 'p11-kit loads no module but nitro-acm into nginx']);
});
