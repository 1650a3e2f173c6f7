// Which way the web server's OpenSSL reaches the enclave's keys
// (options.openssl): the ENGINE API through libp11's pkcs11 engine (what AWS's
// agent configures: `ssl_engine pkcs11;`, `engine:pkcs11:` keys), or an OpenSSL 3
// provider, pkcs11-provider (the ENGINE API is deprecated since OpenSSL 3.0 and
// gone in 4.0). Both reach the tokens through p11-kit's proxy. For the provider
// the agent writes one OpenSSL configuration that loads it (the web server starts
// with OPENSSL_CONF naming it) and a key file per token that wraps the key's
// PKCS#11 URI in the PEM form pkcs11-provider decodes (targets.ts says why a file).
import fs from 'node:fs';
import { spawnSync } from 'node:child_process';
import { render } from '../templates.ts';
import { der } from '../../shared/ber.ts';

export type OpenSslPath = 'engine' | 'provider';
export type OpenSslSetting = OpenSslPath | 'auto';
export const OPENSSL_SETTINGS: readonly OpenSslSetting[] = ['auto', 'engine', 'provider'];

/** Where the agent writes the provider's OpenSSL configuration unless options.openssl_conf says otherwise. */
export const DEFAULT_OPENSSL_CONF = '/etc/nitro_enclaves/nitro-acm-openssl.cnf';

/** What the installed OpenSSL offers. */
export interface OpenSslInstall {
  version: string;
  major: number;
  /** libp11's pkcs11 engine, when installed and the OpenSSL still has engines. */
  engine?: string;
  /** pkcs11-provider's module, when installed. */
  provider?: string;
  /** p11-kit's proxy module, through which both reach the tokens. */
  p11kitProxy?: string;
}

const P11KIT_PROXY = ['/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so', '/usr/lib/aarch64-linux-gnu/p11-kit-proxy.so', '/usr/lib64/p11-kit-proxy.so', '/usr/lib/p11-kit-proxy.so'];

export function inspectOpenSsl(openssl = 'openssl'): OpenSslInstall {
  const r = spawnSync(openssl, ['version', '-v', '-e', '-m'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) throw new Error(`cannot run "${openssl} version": ${r.error?.message ?? r.stderr.trim()}`);
  const version = /^OpenSSL (\S+)/m.exec(r.stdout)?.[1] ?? 'unknown';
  const major = Number(version.split('.')[0]) || 0;
  const dir = (name: string) => new RegExp(`^${name}: "([^"]*)"`, 'm').exec(r.stdout)?.[1];
  const existing = (f: string | undefined) => (f && fs.existsSync(f) ? f : undefined);
  const enginesDir = dir('ENGINESDIR'), modulesDir = dir('MODULESDIR');
  return {
    version, major,
    engine: major < 4 && enginesDir ? existing(`${enginesDir}/pkcs11.so`) : undefined,
    provider: modulesDir ? existing(`${modulesDir}/pkcs11.so`) : undefined,
    p11kitProxy: P11KIT_PROXY.find((f) => fs.existsSync(f)),
  };
}

/**
 * options.openssl made concrete. `auto` takes the engine where it is installed
 * and OpenSSL still has engines, because that is what a machine moved from AWS's
 * agent has (its nginx.conf says `ssl_engine pkcs11;`), and the provider
 * otherwise (OpenSSL 4, or a machine with pkcs11-provider and no libp11 engine).
 */
export function chooseOpenSslPath(setting: OpenSslSetting, inst: OpenSslInstall): { path: OpenSslPath; why: string } {
  const engineMissing = inst.major >= 4 ? `OpenSSL ${inst.version} has no ENGINE API` : 'the OpenSSL pkcs11 engine (libp11: libengine-pkcs11-openssl, openssl-pkcs11) is not installed';
  const providerMissing = 'pkcs11-provider is not installed (Debian 12: from bookworm-backports; Debian 13, Ubuntu 24.04, Amazon Linux 2023: pkcs11-provider)';
  if (!inst.p11kitProxy) throw new Error('options.openssl: p11-kit-proxy.so is not installed (p11-kit, p11-kit-modules)');
  if (setting === 'engine') {
    if (!inst.engine) throw new Error(`options.openssl is engine, but ${engineMissing}`);
    return { path: 'engine', why: 'options.openssl: engine' };
  }
  if (setting === 'provider') {
    if (!inst.provider) throw new Error(`options.openssl is provider, but ${providerMissing}`);
    return { path: 'provider', why: 'options.openssl: provider' };
  }
  if (inst.engine) return { path: 'engine', why: `options.openssl: auto, and OpenSSL ${inst.version} has the pkcs11 engine` };
  if (inst.provider) return { path: 'provider', why: `options.openssl: auto, and ${engineMissing}, and pkcs11-provider is installed` };
  throw new Error(`options.openssl: auto, but neither way to the keys is installed: ${engineMissing}, and ${providerMissing}`);
}

/** The OpenSSL configuration that loads pkcs11-provider over p11-kit's proxy. */
export function providerConfig(file: string, inst: OpenSslInstall): string {
  if (!inst.provider || !inst.p11kitProxy) throw new Error('pkcs11-provider or p11-kit-proxy.so is not installed');
  return render('openssl-provider.cnf', { CONF_FILE: file, PROVIDER_MODULE: inst.provider, PROXY_MODULE: inst.p11kitProxy });
}

/**
 * A key's PKCS#11 URI as a PEM file, for programs that load keys from files
 * (nginx before 1.29): pkcs11-provider decodes "PKCS#11 PROVIDER URI" PEM,
 * SEQUENCE { VisibleString "PKCS#11 Provider URI v1.0", UTF8String uri }.
 */
export function providerKeyPem(uri: string): string {
  const body = der(0x30, der(0x1a, Buffer.from('PKCS#11 Provider URI v1.0', 'ascii')), der(0x0c, Buffer.from(uri, 'utf8')));
  const lines = body.toString('base64').match(/.{1,64}/g)!.join('\n');
  return `-----BEGIN PKCS#11 PROVIDER URI-----\n${lines}\n-----END PKCS#11 PROVIDER URI-----\n`;
}

/** The chosen path and, for the provider, the configuration file the web server must start with. */
export interface OpenSslTarget { path: OpenSslPath; conf?: string }

let resolved: { key: string; target: OpenSslTarget } | undefined;

/**
 * options.openssl resolved once per setting (and logged); on the provider path
 * the OpenSSL configuration is written to options.openssl_conf then, so that it
 * is in place before the first key file names it. `write` puts a file in place
 * atomically (the agent's own writer, which refuses directories others can write).
 */
export function resolveOpenSsl(options: { openssl: OpenSslSetting; openssl_conf: string }, write: (file: string, data: string, mode: number) => void, log: (line: string) => void): OpenSslTarget {
  const key = `${options.openssl} ${options.openssl_conf}`;
  if (resolved?.key === key) return resolved.target;
  const inst = inspectOpenSsl();
  const { path, why } = chooseOpenSslPath(options.openssl, inst);
  const target: OpenSslTarget = path === 'provider' ? { path, conf: options.openssl_conf } : { path };
  if (path === 'provider') write(options.openssl_conf, providerConfig(options.openssl_conf, inst), 0o644);
  log(`web server keys through the OpenSSL ${path === 'engine' ? 'pkcs11 engine' : `provider (pkcs11-provider, configuration ${options.openssl_conf}: start the web server with OPENSSL_CONF=${options.openssl_conf})`}: ${why}`);
  resolved = { key, target };
  return target;
}
