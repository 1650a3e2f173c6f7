// Every call nitro-acm makes to nitro-cli, in one place: start, describe and stop
// the enclave, read an image's measurements. The binary is `nitro-cli` on the PATH, or NITRO_CLI (tests use a
// stand-in that prints the documented output). nitro-cli mixes progress lines
// ("Start allocating memory...") with its JSON on stdout; only the JSON is read.
import { execFile } from 'node:child_process';

export interface RunEnclaveOptions { eifPath: string; cpuCount: number; memoryMib: number; cid?: number; debugMode?: boolean; name?: string }
export interface EnclaveInfo { EnclaveName?: string; EnclaveID: string; ProcessID: number; EnclaveCID: number; NumberOfCPUs: number; CPUIDs: number[]; MemoryMiB: number; State?: string; Flags?: string }

export class NitroCliError extends Error {
  constructor(readonly args: string[], readonly status: number | null, readonly output: string) {
    super(`nitro-cli ${args[0]} failed${status !== null ? ` (exit ${status})` : ''}: ${output.trim().split('\n').filter(Boolean).slice(-3).join(' | ') || 'no output'}`);
  }
}

function binary(): string { return process.env.NITRO_CLI || 'nitro-cli'; }

function call(args: string[], timeoutMs = 120_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    execFile(binary(), args, { timeout: timeoutMs, maxBuffer: 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) { reject(new NitroCliError(args, typeof err.code === 'number' ? err.code : null, `${stderr}${stdout}` || err.message)); return; }
      const start = stdout.search(/^[[{]/m);
      if (start < 0) { reject(new NitroCliError(args, 0, `no JSON in the output: ${stdout}`)); return; }
      try { resolve(JSON.parse(stdout.slice(start))); } catch (e) { reject(new NitroCliError(args, 0, `unreadable JSON (${(e as Error).message}): ${stdout}`)); }
    });
  });
}

function checkInfo(v: unknown, what: string): EnclaveInfo {
  const e = v as Partial<EnclaveInfo>;
  if (typeof e?.EnclaveID !== 'string' || typeof e.EnclaveCID !== 'number') throw new Error(`nitro-cli ${what}: output without EnclaveID/EnclaveCID: ${JSON.stringify(v)}`);
  return e as EnclaveInfo;
}

export async function runEnclave(o: RunEnclaveOptions): Promise<EnclaveInfo> {
  const args = ['run-enclave', '--eif-path', o.eifPath, '--cpu-count', String(o.cpuCount), '--memory', String(o.memoryMib)];
  if (o.cid !== undefined) args.push('--enclave-cid', String(o.cid));
  if (o.name) args.push('--enclave-name', o.name);
  if (o.debugMode) args.push('--debug-mode');
  return checkInfo(await call(args), 'run-enclave');
}

export async function describeEnclaves(): Promise<EnclaveInfo[]> {
  const v = await call(['describe-enclaves'], 30_000);
  return (Array.isArray(v) ? v : [v]).map((e) => checkInfo(e, 'describe-enclaves'));
}

export async function terminateEnclave(id: string): Promise<boolean> {
  const v = (await call(['terminate-enclave', '--enclave-id', id], 60_000)) as { Terminated?: boolean };
  return v.Terminated === true;
}

/** nitro-cli describe-eif: the image's Measurements (PCR0/1/2, PCR8 when signed), unchecked. */
export async function describeEif(eifPath: string): Promise<unknown> {
  const v = (await call(['describe-eif', '--eif-path', eifPath], 60_000)) as { Measurements?: unknown };
  return v?.Measurements;
}

export interface BuildEnclaveOptions { dockerUri: string; outputFile: string; privateKey?: string; signingCertificate?: string }
/** PCR0/1/2 (and PCR8 when signed) as nitro-cli build-enclave prints them. */
export interface ImageMeasurements { HashAlgorithm: string; PCR0: string; PCR1: string; PCR2: string; PCR8?: string }

export async function buildEnclave(o: BuildEnclaveOptions): Promise<ImageMeasurements> {
  if (Boolean(o.privateKey) !== Boolean(o.signingCertificate)) throw new Error('build-enclave: --private-key and --signing-certificate go together (they give PCR8)');
  const args = ['build-enclave', '--docker-uri', o.dockerUri, '--output-file', o.outputFile];
  if (o.privateKey) args.push('--private-key', o.privateKey, '--signing-certificate', o.signingCertificate!);
  const v = (await call(args, 30 * 60_000)) as { Measurements?: Partial<ImageMeasurements> };
  const m = v?.Measurements;
  for (const k of ['PCR0', 'PCR1', 'PCR2'] as const) {
    if (typeof m?.[k] !== 'string' || !/^[0-9a-f]{96}$/.test(m[k]!)) throw new Error(`nitro-cli build-enclave: output without a valid ${k}: ${JSON.stringify(v)}`);
  }
  return m as ImageMeasurements;
}
