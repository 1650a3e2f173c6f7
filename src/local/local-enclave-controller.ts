// The agent's enclave in local mode: the enclave app as a child process with a
// simulated NSM, on unix sockets, its KMS traffic through the local cloud's proxy.
import path from 'node:path';
import fs from 'node:fs';
import { startLocalEnclave, type LocalEnclave } from './enclave-process.ts';
import type { EnclaveController, EnclaveEndpoints } from '../agent/agent.ts';

export interface LocalEnclaveControllerOptions {
  runtimeDir: string;
  nsmDir: string;
  roleArn: string;
  instanceId: string;
  kmsProxySocket: string;
  kmsCaFile: string;
}

export class LocalEnclaveController implements EnclaveController {
  private enclave?: LocalEnclave;
  constructor(private readonly o: LocalEnclaveControllerOptions) {}

  get process(): LocalEnclave | undefined { return this.enclave; }

  async start(): Promise<EnclaveEndpoints> {
    fs.mkdirSync(this.o.runtimeDir, { recursive: true });
    const keyAddress = `unix:path=${path.join(this.o.runtimeDir, 'keys.sock')}`;
    const provisionAddress = `unix:path=${path.join(this.o.runtimeDir, 'provision.sock')}`;
    this.enclave = await startLocalEnclave({
      keyAddress,
      args: ['--provision-address', provisionAddress, '--nsm-sim-dir', this.o.nsmDir, '--nsm-sim-role-arn', this.o.roleArn, '--nsm-sim-instance-id', this.o.instanceId,
        '--kms-proxy', `unix:path=${this.o.kmsProxySocket}`, '--kms-ca', this.o.kmsCaFile],
    });
    return { keyAddress, provisionAddress };
  }

  async running(): Promise<boolean> {
    return this.enclave !== undefined && this.enclave.proc.exitCode === null && this.enclave.proc.signalCode === null;
  }

  async stop(): Promise<void> { await this.enclave?.stop(); }
}
