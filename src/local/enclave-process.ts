// The enclave app as a child process: local mode (development, tests, the
// benchmark). In production the enclave runs in a Nitro enclave started by
// nitro-cli and none of this is used.
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { PROJECT_ROOT } from '../paths.ts';
import { ENCLAVE_NODE_FLAGS } from '../../enclave/node-flags.ts';

export interface LocalEnclaveOptions {
  keyAddress: string;
  /** Local mode only: tokens from plaintext PEM files (see enclave/main.ts --help). */
  plaintextKeys?: string;
  threads?: number;
  env?: NodeJS.ProcessEnv;
  /** More enclave app options (provisioning address, simulated NSM, KMS proxy). */
  args?: string[];
  /** Another copy of enclave/main.ts to run (tests of changed enclave code). */
  entry?: string;
  /** A command that runs the enclave app, such as ["prlimit", "--nofile=256"] (tests). */
  wrapper?: string[];
  /** Each line the enclave app logs, as it logs it (the agent passes them on to its own log). */
  onLine?: (line: string) => void;
}

export interface LocalEnclave {
  proc: ChildProcess;
  /** What the enclave app wrote to stdout and stderr (the last MiB of it). */
  output(): string;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

// The TypeScript source in a checkout (run through tsx); the compiled JavaScript in a package.
const COMPILED = import.meta.url.endsWith('.js');
export const ENCLAVE_MAIN = path.join(PROJECT_ROOT, COMPILED ? 'enclave/main.js' : 'enclave/main.ts');
const OUTPUT_KEPT = 1024 * 1024;
// Resolved here, not by the child from its working directory.
const loaderArgs = (entry: string) => (entry.endsWith('.ts') ? ['--import', import.meta.resolve('tsx')] : []);

/** Starts the enclave app and resolves once its key channel listens (rejects with its output if it exits). */
export function startLocalEnclave(o: LocalEnclaveOptions): Promise<LocalEnclave> {
  const entry = o.entry ?? ENCLAVE_MAIN;
  const args = [...ENCLAVE_NODE_FLAGS, ...loaderArgs(entry), entry, '--local', '--key-address', o.keyAddress, ...(o.args ?? [])];
  if (o.plaintextKeys) args.push('--insecure-plaintext-keys', o.plaintextKeys);
  if (o.threads) args.push('--threads', String(o.threads));
  const command = [...(o.wrapper ?? []), process.execPath, ...args];
  const proc = spawn(command[0], command.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: o.env ?? process.env });
  let out = '';
  let listening = false;
  const enclave: LocalEnclave = {
    proc,
    output: () => out,
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode !== null || proc.signalCode) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill(signal);
      const force = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(force);
    },
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { proc.kill('SIGKILL'); reject(new Error(`enclave app did not start within 30 s:\n${out}`)); }, 30_000);
    const reader = () => {
      let partial = ''; // a line not yet ended, per stream
      return (d: Buffer) => {
        out += d;
        // Bounded: an enclave app serving for months keeps logging.
        if (out.length > 2 * OUTPUT_KEPT) out = out.slice(-OUTPUT_KEPT);
        if (o.onLine) {
          const lines = (partial + d).split('\n');
          partial = lines.pop()!;
          for (const l of lines) o.onLine(l);
        }
        if (!listening && out.includes('key channel listening')) { listening = true; clearTimeout(timer); resolve(enclave); }
      };
    };
    proc.stdout!.on('data', reader());
    proc.stderr!.on('data', reader());
    proc.once('exit', (code, sig) => { clearTimeout(timer); reject(new Error(`enclave app exited (${code ?? sig}):\n${out}`)); });
  });
}
