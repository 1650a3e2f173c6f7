// What the agent writes for nginx and httpd: contents, owners, modes, atomic
// replacement, and the last good files kept when something is wrong.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { writeTarget, writeAtomic, rewriteHttpdConf, TargetError, companionFiles, readPinFile } from '../src/agent/targets.ts';
import { resolveOpenSsl } from '../src/agent/openssl-path.ts';
import { createCA, issueServerCert } from '../src/local/pki.ts';
import { tmpdir } from './helpers/enclave.ts';

const ca = createCA('targets CA');
const leaf = issueServerCert(ca, ['t.test']);
const tok = { label: 'www', source: 'Acm arn:aws:acm:us-east-1:123456789012:certificate/x', pin: 'p1n-1234', certificatePem: leaf.certPem, chainPem: ca.certPem };
const wwwData = Number(fs.readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.startsWith('www-data:'))!.split(':')[2]);

test('nginx stanza, chain and PIN file: content, owner, 0440/0400', (t) => {
  const dir = tmpdir('targets');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const files = writeTarget({ kind: 'NginxStanza', path: path.join(dir, 'nginx-acm.conf'), user: 'www-data' }, tok);
  const stanza = fs.readFileSync(files.config, 'utf8');
  t.regex(stanza, new RegExp(`ssl_certificate ${files.chain};`));
  t.regex(stanza, new RegExp(`ssl_certificate_key "engine:pkcs11:pkcs11:token=www;id=(%[0-9a-f]{2}){20};type=private\\?pin-source=file:${files.pin}";`));
  t.false(stanza.includes(tok.pin), 'no PIN in the stanza');
  t.is(fs.readFileSync(files.pin!, 'utf8'), tok.pin);
  t.is(fs.readFileSync(files.chain, 'utf8'), `${leaf.certPem.trimEnd()}\n${ca.certPem.trim()}\n`);
  for (const [f, mode] of [[files.config, 0o440], [files.chain, 0o440], [files.pin!, 0o400]] as const) {
    const st = fs.statSync(f);
    t.is(st.mode & 0o777, mode, f);
    t.is(st.uid, wwwData, f);
  }
  t.deepEqual(fs.readdirSync(dir).filter((f) => f.startsWith('.')), [], 'no temporary files left');
  const inline = writeTarget({ kind: 'NginxStanza', path: path.join(dir, 'inline.conf') }, { ...tok, pinInConfig: true });
  t.regex(fs.readFileSync(inline.config, 'utf8'), /pin-value=p1n-1234/);
  t.is(fs.statSync(inline.config).mode & 0o777, 0o400, 'a stanza with the PIN inside is 0400');
});

test('httpd: only the SSLCertificateKeyFile and SSLCertificateFile lines change', (t) => {
  const conf = ['<VirtualHost *:443>', '    ServerName t.test', '    SSLEngine on', '    SSLCertificateFile /old/cert.pem', '\tSSLCertificateKeyFile /old/key.pem', '    # a comment', '</VirtualHost>', ''].join('\n');
  const out = rewriteHttpdConf(conf, '/etc/acm/www.chain.pem', 'pkcs11:token=www;type=private?pin-source=file:/etc/acm/www.pin', 'x.conf').split('\n');
  t.is(out[3], '    SSLCertificateFile /etc/acm/www.chain.pem');
  t.is(out[4], '\tSSLCertificateKeyFile "pkcs11:token=www;type=private?pin-source=file:/etc/acm/www.pin"');
  t.deepEqual([out[0], out[1], out[2], out[5], out[6]], ['<VirtualHost *:443>', '    ServerName t.test', '    SSLEngine on', '    # a comment', '</VirtualHost>']);
  t.throws(() => rewriteHttpdConf('ServerName x\n', 'c', 'u', 'x.conf'), { instanceOf: TargetError, message: /x\.conf: no SSLCertificateKeyFile line/ });
});

test('a bad target changes nothing: unknown user, missing directory; the last good files stay', (t) => {
  const dir = tmpdir('targets-bad');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const target = { kind: 'NginxStanza' as const, path: path.join(dir, 'acm.conf') };
  writeTarget(target, tok);
  const before = fs.readFileSync(target.path, 'utf8');
  t.throws(() => writeTarget({ ...target, user: 'no-such-user' }, { ...tok, pin: 'other-pin' }), { instanceOf: TargetError, message: /user "no-such-user" does not exist/ });
  t.is(fs.readFileSync(target.path, 'utf8'), before);
  t.is(fs.readFileSync(companionFiles(target).pin, 'utf8'), tok.pin);
  t.throws(() => writeTarget({ kind: 'NginxStanza', path: path.join(dir, 'missing/acm.conf') }, tok), { message: /directory .*missing does not exist/ });
});

test('disk full while writing: every previous file stays as it was, no temporary file is left, the error names the file', (t) => {
  const dir = tmpdir('targets-full');
  // A 64 KiB file system of its own, filled up after the first write.
  t.is(spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0755', 'tmpfs', dir]).status, 0, 'mount tmpfs (needs root)');
  t.teardown(() => { spawnSync('umount', [dir]); fs.rmSync(dir, { recursive: true, force: true }); });
  const spec = { kind: 'NginxStanza' as const, path: path.join(dir, 'www.conf') };
  const first = writeTarget(spec, tok);
  const before = Object.fromEntries([first.config, first.chain, first.pin!].map((f) => [f, fs.readFileSync(f, 'utf8')]));
  // Fill what is left, leaving less than a certificate chain needs.
  const filler = fs.openSync(path.join(dir, 'filler'), 'w');
  try { for (;;) fs.writeSync(filler, Buffer.alloc(1024)); } catch { /* ENOSPC */ } finally { fs.closeSync(filler); }
  fs.truncateSync(path.join(dir, 'filler'), fs.statSync(path.join(dir, 'filler')).size - 512);
  const renewed = issueServerCert(ca, ['t.test']);
  const e = t.throws(() => writeTarget(spec, { ...tok, certificatePem: renewed.certPem, pin: 'another-pin' }), { instanceOf: TargetError });
  t.regex(e!.message, /www\.(chain\.pem|pin|conf): ENOSPC/);
  for (const [f, content] of Object.entries(before)) t.is(fs.readFileSync(f, 'utf8'), content, `${f} is the last good one`);
  t.deepEqual(fs.readdirSync(dir).filter((f) => f.startsWith('.')), [], 'no temporary files left');
});

// Security finding 3 (issue 11): temporary files and the directories they are made in.

test('3. a target directory another user can write to is refused, naming it; the attacker\'s symlink trick changes nothing', (t) => {
  const dir = tmpdir('targets-hostile');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const victim = path.join(dir, 'victim');
  fs.mkdirSync(victim, { mode: 0o700 });
  fs.writeFileSync(path.join(victim, 'shadow'), 'root only\n', { mode: 0o600 });
  const shared = path.join(dir, 'shared');
  fs.mkdirSync(shared);
  fs.chmodSync(shared, 0o777);
  // What the attacker (any local user) did: a symlink at the name the agent used to write through.
  for (const name of ['.nginx-acm.conf.nitro-acm-' + process.pid, '.nginx-acm.chain.pem.nitro-acm-' + process.pid, '.nginx-acm.pin.nitro-acm-' + process.pid]) fs.symlinkSync(path.join(victim, 'shadow'), path.join(shared, name));
  const e = t.throws(() => writeTarget({ kind: 'NginxStanza', path: path.join(shared, 'nginx-acm.conf'), user: 'www-data' }, tok), { instanceOf: TargetError });
  t.regex(e!.message, new RegExp(`directory ${shared} is writable by everyone \\(mode 777\\).*fix: chmod go-w ${shared}`));
  const st = fs.statSync(path.join(victim, 'shadow'));
  t.is(st.uid, 0, 'the root-owned file is still root\'s');
  t.is(fs.readFileSync(path.join(victim, 'shadow'), 'utf8'), 'root only\n');
  const groupWritable = path.join(dir, 'group');
  fs.mkdirSync(groupWritable);
  fs.chmodSync(groupWritable, 0o775);
  t.throws(() => writeTarget({ kind: 'NginxStanza', path: path.join(groupWritable, 'a.conf') }, tok), { message: /writable by its group \(mode 775\)/ });
  const notRoot = path.join(dir, 'nobody');
  fs.mkdirSync(notRoot, { mode: 0o755 });
  fs.chownSync(notRoot, 65534, 65534);
  t.throws(() => writeTarget({ kind: 'NginxStanza', path: path.join(notRoot, 'a.conf') }, tok), { message: new RegExp(`directory ${notRoot} is owned by uid 65534, not root`) });
  t.deepEqual(fs.readdirSync(notRoot), [], 'nothing written there');
});

test('3. temporary names are random and created new (O_EXCL|O_NOFOLLOW): a symlink planted in a good directory is never written through', (t) => {
  const dir = tmpdir('targets-tmp');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.chmodSync(dir, 0o755);
  const shadow = path.join(dir, 'shadow');
  fs.writeFileSync(shadow, 'root only\n', { mode: 0o600 });
  fs.symlinkSync(shadow, path.join(dir, `.nginx-acm.conf.nitro-acm-${process.pid}`));
  const files = writeTarget({ kind: 'NginxStanza', path: path.join(dir, 'nginx-acm.conf'), user: 'www-data' }, tok);
  t.is(fs.statSync(shadow).uid, 0);
  t.is(fs.readFileSync(shadow, 'utf8'), 'root only\n', 'the symlink\'s target is untouched');
  t.is(fs.statSync(files.config).uid, wwwData);
  t.deepEqual(fs.readdirSync(dir).filter((f) => f.startsWith('.') && !fs.lstatSync(path.join(dir, f)).isSymbolicLink()), [], 'no temporary files left');
});

test('3. a PIN file is read only as a regular file, never through a symlink', (t) => {
  const dir = tmpdir('targets-pin');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'secret'), 'not a pin of ours');
  fs.symlinkSync(path.join(dir, 'secret'), path.join(dir, 'www.pin'));
  t.is(readPinFile(path.join(dir, 'www.pin')), undefined);
  fs.writeFileSync(path.join(dir, 'real.pin'), 'p1n-1234');
  t.is(readPinFile(path.join(dir, 'real.pin')), 'p1n-1234');
  t.is(readPinFile(path.join(dir, 'absent.pin')), undefined);
});

test('the provider path\'s OpenSSL configuration: refused in a directory others can write, and a symlink planted at its name is replaced, never followed', (t) => {
  const dir = tmpdir('targets-openssl');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const open = path.join(dir, 'open');
  fs.mkdirSync(open, { mode: 0o775 });
  fs.chmodSync(open, 0o775);
  const log: string[] = [];
  t.throws(() => resolveOpenSsl({ openssl: 'provider', openssl_conf: path.join(open, 'openssl.cnf') }, writeAtomic, (l) => log.push(l)), { instanceOf: TargetError, message: /open\/openssl\.cnf: directory .*open is writable by its group/ });
  t.false(fs.existsSync(path.join(open, 'openssl.cnf')));
  const safe = path.join(dir, 'safe');
  fs.mkdirSync(safe, { mode: 0o755 });
  fs.chmodSync(safe, 0o755);
  const victim = path.join(dir, 'victim');
  fs.writeFileSync(victim, 'not to be touched\n');
  fs.symlinkSync(victim, path.join(safe, 'openssl.cnf'));
  const r = resolveOpenSsl({ openssl: 'provider', openssl_conf: path.join(safe, 'openssl.cnf') }, writeAtomic, (l) => log.push(l));
  t.deepEqual(r, { path: 'provider', conf: path.join(safe, 'openssl.cnf') });
  t.false(fs.lstatSync(path.join(safe, 'openssl.cnf')).isSymbolicLink(), 'the symlink was replaced by the file');
  t.regex(fs.readFileSync(path.join(safe, 'openssl.cnf'), 'utf8'), /^pkcs11-module-path = /m);
  t.is(fs.readFileSync(victim, 'utf8'), 'not to be touched\n');
});
