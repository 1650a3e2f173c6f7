// Test fixture: a temporary directory with a CA, token certificates and keys,
// and the enclave app started in local mode with those keys, on a unix socket.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import type { ChildProcess } from 'node:child_process';
import { createCA, issueServerCert, type CertAuthority, type LeafKeyType } from '../../src/local/pki.ts';
import { startLocalEnclave, type LocalEnclave } from '../../src/local/enclave-process.ts';

export { PROJECT_ROOT as ROOT } from '../../src/paths.ts';
import { PROJECT_ROOT } from '../../src/paths.ts';
export const MODULE_PATH = path.resolve(PROJECT_ROOT, process.env.NITRO_ACM_MODULE ?? 'p11-module/build/nitro-acm-p11.so');

export interface TokenSpec { label: string; pin: string; names: string[]; bits?: number; keyType?: LeafKeyType }
export interface TokenFiles extends TokenSpec { key: string; certificate: string; chain: string; fullchain: string; keyPem: string; certPem: string }

export interface EnclaveFixture {
  dir: string;
  ca: CertAuthority;
  caFile: string;
  tokens: TokenFiles[];
  socket: string;
  address: string;
  log: () => string;
  readonly proc: ChildProcess;
  start(): Promise<void>;
  stop(): Promise<void>;
  cleanup(): Promise<void>;
}

export function tmpdir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `nitro-acm-${prefix}-`));
}

let caCache: CertAuthority | undefined;

export async function startEnclave(specs: TokenSpec[], opts: { threads?: number; prefix?: string } = {}): Promise<EnclaveFixture> {
  const dir = tmpdir(opts.prefix ?? 'enclave');
  // Web-server workers run as another user and must reach the socket inside.
  fs.chmodSync(dir, 0o711);
  caCache ??= createCA('nitro-acm test CA');
  const ca = caCache;
  const caFile = path.join(dir, 'ca.pem');
  fs.writeFileSync(caFile, ca.certPem);
  const tokens: TokenFiles[] = specs.map((s) => {
    const leaf = issueServerCert(ca, s.names, { bits: s.bits, keyType: s.keyType });
    const base = path.join(dir, s.label);
    fs.writeFileSync(`${base}.key`, leaf.keyPem, { mode: 0o600 });
    fs.writeFileSync(`${base}.crt`, leaf.certPem);
    fs.writeFileSync(`${base}.chain.pem`, ca.certPem);
    fs.writeFileSync(`${base}.fullchain.pem`, leaf.certPem + ca.certPem);
    return { ...s, key: `${base}.key`, certificate: `${base}.crt`, chain: `${base}.chain.pem`, fullchain: `${base}.fullchain.pem`, keyPem: leaf.keyPem, certPem: leaf.certPem };
  });
  const tokenFile = path.join(dir, 'tokens.json');
  fs.writeFileSync(tokenFile, JSON.stringify({ tokens: tokens.map((t) => ({ label: t.label, pin: t.pin, key: t.key, certificate: t.certificate, chain: t.chain })) }), { mode: 0o600 });
  const socket = path.join(dir, 'keys.sock');
  let enclave: LocalEnclave | undefined;
  let earlier = '';
  const fx: EnclaveFixture = {
    dir, ca, caFile, tokens, socket, address: `unix:path=${socket}`,
    log: () => earlier + (enclave?.output() ?? ''),
    get proc() { return enclave!.proc; },
    async start() {
      if (enclave) earlier += enclave.output();
      enclave = await startLocalEnclave({ keyAddress: fx.address, plaintextKeys: tokenFile, threads: opts.threads ?? 2 });
      await waitForSocket(socket);
    },
    async stop() { await enclave?.stop('SIGKILL'); },
    async cleanup() {
      await fx.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  await fx.start();
  return fx;
}

export async function waitForSocket(p: string, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(p);
      s.once('connect', () => { s.destroy(); resolve(true); });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > end) throw new Error(`socket ${p} not accepting connections`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * A copy of the enclave app with one changed line (a different image: other
 * PCR0 and PCR2), under `dir`; returns its enclave/main.ts.
 */
export function changedEnclaveApp(dir: string): string {
  const copy = fs.mkdtempSync(path.join(dir, 'changed-'));
  for (const d of ['enclave', 'shared']) fs.cpSync(path.join(PROJECT_ROOT, d), path.join(copy, d), { recursive: true, filter: (s) => !s.includes('/build/') || s.endsWith('.node') || fs.statSync(s).isDirectory() });
  fs.copyFileSync(path.join(PROJECT_ROOT, 'package-lock.json'), path.join(copy, 'package-lock.json'));
  fs.copyFileSync(path.join(PROJECT_ROOT, 'package.json'), path.join(copy, 'package.json'));
  fs.symlinkSync(path.join(PROJECT_ROOT, 'node_modules'), path.join(copy, 'node_modules'));
  fs.appendFileSync(path.join(copy, 'enclave/rsa-ops.ts'), '\n// one changed line\n');
  return path.join(copy, 'enclave/main.ts');
}
