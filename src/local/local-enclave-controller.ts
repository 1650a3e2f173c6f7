// The agent's enclave in local mode: the enclave app as a child process with a
// simulated NSM, on unix sockets, its KMS traffic through the local cloud's proxy.
import path from 'node:path';
import fs from 'node:fs';
import { startLocalEnclave, type LocalEnclave } from './enclave-process.ts';
import type { EnclaveController, EnclaveEndpoints } from '../agent/enclave-controller.ts';
import { ProvisionClient } from '../../shared/provision-wire.ts';
import { parseAddress } from '../../shared/address.ts';
import { log } from '../../shared/log.ts';
import { X509Certificate } from 'node:crypto';
import { measureEnclaveApp } from '../../enclave/nsm-simulated.ts';
import { ENCLAVE_MAIN } from './enclave-process.ts';
import type { ExpectedEnclave } from '../agent/attestation-check.ts';

async function answers(address: string): Promise<boolean> {
  try {
    const c = await ProvisionClient.connect(parseAddress(address), 1000);
    try { return (await c.op('health', {}, 2000)).ok; } finally { c.close(); }
  } catch { return false; }
}

export interface LocalEnclaveControllerOptions {
  runtimeDir: string;
  nsmDir: string;
  roleArn: string;
  instanceId: string;
  kmsProxySocket: string;
  kmsCaFile: string;
  /** Another build of the enclave app to run (the benchmark runs the image's bundle). */
  entry?: string;
  /** More enclave app options (tests: --nsm-sim-debug). */
  enclaveArgs?: string[];
}

export class LocalEnclaveController implements EnclaveController {
  private enclave?: LocalEnclave;
  /** Set when start() found an enclave app already serving (left by an agent that stopped or died). */
  private adopted?: string;
  /** Only the first start looks for an enclave app to adopt; a later one replaces a dead or hung one. */
  private firstStart = true;
  constructor(private readonly o: LocalEnclaveControllerOptions) {}

  get process(): LocalEnclave | undefined { return this.enclave; }

  async start(): Promise<EnclaveEndpoints> {
    fs.mkdirSync(this.o.runtimeDir, { recursive: true });
    const keyAddress = `unix:path=${path.join(this.o.runtimeDir, 'keys.sock')}`;
    const provisionAddress = `unix:path=${path.join(this.o.runtimeDir, 'provision.sock')}`;
    // As the nitro-cli controller finds a running enclave: an agent that restarts
    // keeps the enclave app that is serving, and provisions it again.
    const mayAdopt = this.firstStart;
    this.firstStart = false;
    if (mayAdopt && !this.enclave && await answers(provisionAddress)) {
      this.adopted = provisionAddress;
      log.info(`found the enclave app already serving on ${provisionAddress}`);
      return { keyAddress, provisionAddress };
    }
    this.adopted = undefined;
    this.enclave = await startLocalEnclave({
      keyAddress,
      entry: this.o.entry,
      args: ['--provision-address', provisionAddress, '--nsm-sim-dir', this.o.nsmDir, '--nsm-sim-role-arn', this.o.roleArn, '--nsm-sim-instance-id', this.o.instanceId,
        '--kms-proxy', `unix:path=${this.o.kmsProxySocket}`, '--kms-ca', this.o.kmsCaFile, ...(this.o.enclaveArgs ?? [])],
      // Its lines carry their own time and level; in production they are on the enclave's console.
      onLine: (line) => { process.stderr.write(`enclave: ${line}\n`); },
    });
    return { keyAddress, provisionAddress };
  }

  async running(): Promise<boolean> {
    if (this.adopted) return answers(this.adopted);
    return this.enclave !== undefined && this.enclave.proc.exitCode === null && this.enclave.proc.signalCode === null;
  }

  /** The simulated NSM measures the enclave app's own files (enclave/nsm-simulated.ts) and signs under local mode's root in nsmDir. */
  async expected(): Promise<ExpectedEnclave> {
    const m = measureEnclaveApp(path.dirname(this.o.entry ?? ENCLAVE_MAIN));
    const rootFile = path.join(this.o.nsmDir, 'nsm-root.pem');
    let root: X509Certificate;
    try { root = new X509Certificate(fs.readFileSync(rootFile)); } catch (e) { throw new Error(`local mode's simulated NSM root ${rootFile}: ${(e as Error).message}`); }
    return { pcrs: new Map([[0, m.pcr0], [1, m.pcr1], [2, m.pcr2]]), source: `local mode's measurement of ${path.dirname(this.o.entry ?? ENCLAVE_MAIN)}`, roots: [root], rootName: "local mode's simulated NSM root" };
  }

  /** Stops the enclave app this controller started (an adopted one is not its child: it is left alone). */
  async stop(opts: { force?: boolean } = {}): Promise<void> {
    this.adopted = undefined;
    await this.enclave?.stop(opts.force ? 'SIGKILL' : 'SIGTERM');
    this.enclave = undefined;
  }
}
