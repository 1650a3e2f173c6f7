// What the agent writes for a token (templates/): the certificate chain, the PIN
// file the web server's engine or provider reads, and either an nginx stanza (on
// the provider path with the key file it names, src/agent/openssl-path.ts) or the
// two key/certificate lines of an httpd configuration file. Every file is written to a
// temporary name in the same directory, owned and moded, then renamed over the old
// one, so a failure at any step leaves the last good files in place. Files are
// never deleted when the service stops.
import fs from 'node:fs';
import crypto from 'node:crypto';
import path from 'node:path';
import { render } from '../templates.ts';
import { ckaIdOf, uriId } from '../../shared/key-id.ts';
import type { TargetSpec } from './config.ts';
import { providerKeyPem, type OpenSslTarget } from './openssl-path.ts';

export type { TargetSpec };
/** ckaId: the key's CKA_ID (the URI's id=; default: the certificate's key's, shared/key-id.ts); certificatePem: its certificate, which a web server needs (a FileDb key may have none). */
export interface TokenOutput { label: string; source: string; pin: string; ckaId?: Buffer; certificatePem?: string; chainPem: string; pinInConfig?: boolean }
export interface WrittenFiles { config: string; chain: string; pin?: string; keyUri?: string }

export class TargetError extends Error {}

function lookup(file: string, name: string, what: string): number {
  if (/^\d+$/.test(name)) return Number(name);
  const line = fs.readFileSync(file, 'utf8').split('\n').find((l) => l.split(':')[0] === name);
  if (!line) throw new TargetError(`${what} "${name}" does not exist on this machine (${file})`);
  return Number(line.split(':')[2]);
}

/** uid and gid for a target's user/group (group defaults to the user's primary group). */
export function owner(t: TargetSpec): { uid: number; gid: number } | undefined {
  if (!t.user && !t.group) return undefined;
  const uid = t.user ? lookup('/etc/passwd', t.user, 'user') : process.getuid!();
  let gid: number;
  if (t.group) gid = lookup('/etc/group', t.group, 'group');
  else if (t.user && !/^\d+$/.test(t.user)) gid = Number(fs.readFileSync('/etc/passwd', 'utf8').split('\n').find((l) => l.split(':')[0] === t.user)!.split(':')[3]);
  else gid = process.getgid!();
  return { uid, gid };
}

/** A file written beside its destination, not yet in place: commit() renames it over, abort() removes it. */
export interface StagedFile { commit(): void; abort(): void }

/**
 * Why the agent must not write into a directory, or undefined: it writes files
 * the web server trusts and chowns them to the web server's user, so a directory
 * another user can write to would let that user swap names under it. Root-owned
 * (or owned by the agent's own user, when it does not run as root) and not
 * writable by group or others, as /etc/nginx/conf.d is.
 */
export function targetDirProblem(dir: string): string | undefined {
  let st: fs.Stats;
  try { st = fs.statSync(dir); } catch { return `directory ${dir} does not exist`; }
  if (!st.isDirectory()) return `${dir} is not a directory`;
  const me = process.getuid?.() ?? 0;
  if (st.uid !== 0 && st.uid !== me) return `directory ${dir} is owned by uid ${st.uid}, not root: its owner could replace what the agent writes there (fix: chown root ${dir}, or choose a root-owned directory)`;
  if (st.mode & 0o022) return `directory ${dir} is writable by ${st.mode & 0o002 ? 'everyone' : 'its group'} (mode ${(st.mode & 0o7777).toString(8)}): another user could replace what the agent writes there (fix: chmod go-w ${dir})`;
  return undefined;
}

export function stageFile(file: string, data: string, mode: number, own?: { uid: number; gid: number }): StagedFile {
  const dir = path.dirname(file);
  const problem = targetDirProblem(dir);
  if (problem) throw new TargetError(`${file}: ${problem}`);
  // A new name nobody can guess, created here and now (O_EXCL) and never through a symlink (O_NOFOLLOW).
  const tmp = path.join(dir, `.${path.basename(file)}.nitro-acm-${crypto.randomBytes(8).toString('hex')}`);
  let created = false;
  // Removes the temporary file this call created; never something else.
  const drop = () => { if (created) { created = false; try { fs.unlinkSync(tmp); } catch { /* gone already */ } } };
  try {
    const fd = fs.openSync(tmp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
    created = true;
    try {
      fs.writeFileSync(fd, data);
      if (own && process.getuid?.() === 0) fs.fchownSync(fd, own.uid, own.gid);
      fs.fchmodSync(fd, mode);
      fs.fsyncSync(fd);
    } finally { fs.closeSync(fd); }
  } catch (e) {
    drop();
    throw new TargetError(`${file}: ${(e as Error).message}`);
  }
  return {
    commit() {
      try { fs.renameSync(tmp, file); created = false; } catch (e) { drop(); throw new TargetError(`${file}: ${(e as Error).message}`); }
    },
    abort: drop,
  };
}

/**
 * Reads a PIN file the agent wrote, never through a symlink and only a small
 * regular file; undefined when there is none.
 */
export function readPinFile(file: string): string | undefined {
  let fd: number;
  try { fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK); } catch { return undefined; }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile() || st.size > 4096) return undefined;
    return fs.readFileSync(fd, 'utf8');
  } finally { fs.closeSync(fd); }
}

/** Replaces a file atomically (temporary file, fsync, rename): readers see the old or the new, never half. */
export function writeAtomic(file: string, data: string, mode: number, own?: { uid: number; gid: number }): void {
  stageFile(file, data, mode, own).commit();
}

/**
 * Writes several files as one change: all are written in full first (so a full
 * disk or any other error leaves every old file as it was), then renamed into
 * place in order.
 */
export function writeAllAtomic(files: { file: string; data: string; mode: number }[], own?: { uid: number; gid: number }): void {
  const staged: StagedFile[] = [];
  try {
    for (const f of files) staged.push(stageFile(f.file, f.data, f.mode, own));
  } catch (e) {
    for (const s of staged) s.abort();
    throw e;
  }
  for (const s of staged) s.commit();
}

/** Paths of the files that go with a target: <name>.chain.pem, <name>.pin and (on the provider path) <name>.key-uri.pem beside it. */
export function companionFiles(t: TargetSpec): { chain: string; pin: string; keyUri: string } {
  const base = t.path.replace(/\.conf$/, '');
  return { chain: `${base}.chain.pem`, pin: `${base}.pin`, keyUri: `${base}.key-uri.pem` };
}

/** A key's PKCS#11 URI (RFC 7512), with where its PIN comes from when given. */
export function keyUri(label: string, ckaId: Buffer, pin?: { file: string } | { value: string }): string {
  // The id pins this certificate's key: after a renewal the engine must not pick the old one it remembers.
  const token = `pkcs11:token=${encodeURIComponent(label)};id=${uriId(ckaId)};type=private`;
  if (!pin) return token;
  return 'value' in pin ? `${token}?pin-value=${encodeURIComponent(pin.value)}` : `${token}?pin-source=file:${pin.file}`;
}

/** Rewrites the SSLCertificateKeyFile / SSLCertificateFile lines, keeping indentation and every other line. */
export function rewriteHttpdConf(existing: string, chainFile: string, uri: string, file: string): string {
  let sawKey = false;
  const out = existing.split('\n').map((line) => {
    const m = /^(\s*)(SSLCertificateKeyFile|SSLCertificateFile)(\s+).*$/i.exec(line);
    if (!m) return line;
    if (m[2].toLowerCase() === 'sslcertificatekeyfile') { sawKey = true; return `${m[1]}SSLCertificateKeyFile${m[3]}"${uri}"`; }
    return `${m[1]}SSLCertificateFile${m[3]}${chainFile}`;
  });
  if (!sawKey) throw new TargetError(`${file}: no SSLCertificateKeyFile line to rewrite (nitro-acm changes those two lines of an existing file and nothing else)`);
  return out.join('\n');
}

export function writeTarget(t: TargetSpec, tok: TokenOutput, openssl: OpenSslTarget = { path: 'engine' }): WrittenFiles {
  if (!tok.certificatePem) throw new TargetError(`${t.path}: the token's first key has no certificate (its FileDb entry has no cert_pem), and the web server needs one: add cert_pem to the entry, or leave target out and configure the web server by hand (nitro-acm status shows the key's pkcs11: URI)`);
  const own = owner(t);
  const { chain, pin, keyUri: keyUriFile } = companionFiles(t);
  const uri = keyUri(tok.label, tok.ckaId ?? ckaIdOf(tok.certificatePem), tok.pinInConfig ? { value: tok.pin } : { file: pin });
  const configMode = tok.pinInConfig ? 0o400 : 0o440;
  // On the provider path the web server loads the key from a file that holds its URI: nginx before 1.29
  // loads keys only from files, and Debian's mod_ssl hands a pkcs11: URI to the ENGINE (libp11) whenever
  // OpenSSL has one, provider or not (and the engine cannot decrypt a TLS 1.2 RSA key exchange).
  const uriFile = openssl.path === 'provider';
  const keyLine = uriFile ? keyUriFile : uri;
  const config = t.kind === 'NginxStanza'
    ? uriFile
      ? render('nginx-stanza-provider.conf', { LABEL: tok.label, SOURCE: tok.source, CHAIN_FILE: chain, KEY_URI_FILE: keyUriFile, OPENSSL_CONF: openssl.conf ?? '(options.openssl_conf)' })
      : render('nginx-stanza.conf', { LABEL: tok.label, SOURCE: tok.source, CHAIN_FILE: chain, KEY_URI: uri })
    : fs.existsSync(t.path)
      ? rewriteHttpdConf(fs.readFileSync(t.path, 'utf8'), chain, keyLine, t.path)
      : render('httpd-acm.conf', { LABEL: tok.label, SOURCE: tok.source, CHAIN_FILE: chain, KEY_URI: keyLine });
  // All or nothing; renamed chain first, stanza last: a web server reloaded in
  // between still finds a consistent pair.
  writeAllAtomic([
    { file: chain, data: tok.certificatePem.trimEnd() + '\n' + tok.chainPem.trim() + '\n', mode: 0o440 },
    ...(tok.pinInConfig ? [] : [{ file: pin, data: tok.pin, mode: 0o400 }]),
    ...(uriFile ? [{ file: keyUriFile, data: providerKeyPem(uri), mode: configMode }] : []),
    { file: t.path, data: config, mode: configMode },
  ], own);
  return { config: t.path, chain, pin: tok.pinInConfig ? undefined : pin, keyUri: uriFile ? keyUriFile : undefined };
}
