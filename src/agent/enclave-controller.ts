// The enclave as the agent sees it: where its two channels are, and a controller
// that starts, watches and stops it. Production's runs the image under nitro-cli
// (src/agent/nitro-cli.ts, the one place nitro-cli is called); local mode's
// (src/local/local-enclave-controller.ts) runs the enclave app as a child process.
import { log } from '../../shared/log.ts';
import { parseAddress, ENCLAVE_CID } from '../../shared/address.ts';
import { ProvisionClient } from '../../shared/provision-wire.ts';
import { runEnclave, describeEnclaves, describeEif, terminateEnclave } from './nitro-cli.ts';
import { awsNitroRoot } from '../../shared/attestation.ts';
import { measurementsBeside, pcrsFromMeasurements, MEASUREMENTS_FILE, type ExpectedEnclave } from './attestation-check.ts';
import type { AcmConfig } from './config.ts';
import { memoryToStart, EIF_MEMORY_RATIO } from './enclave-memory.ts';

export interface EnclaveEndpoints { keyAddress: string; provisionAddress: string }

/** Starts and watches the enclave: nitro-cli in production, a child process in local mode. */
export interface EnclaveController {
  start(): Promise<EnclaveEndpoints>;
  /** True while the enclave is there (the process or the nitro-cli enclave). */
  running(): Promise<boolean>;
  /** Stops the enclave; `force`: it is hung or gone, do not wait for it to stop by itself. */
  stop(opts?: { force?: boolean }): Promise<void>;
  /** What the enclave must attest to (its image's PCRs, the root its documents chain to); throws saying why when that cannot be known. */
  expected(): Promise<ExpectedEnclave>;
}

/** Production: the enclave image under nitro-cli, reused if it is already running. */
export class NitroCliEnclaveController implements EnclaveController {
  private id?: string;
  constructor(private readonly c: AcmConfig['enclave'], private readonly name = 'nitro-acm') {}

  async start(): Promise<EnclaveEndpoints> {
    const running = (await describeEnclaves().catch(() => [])).find((e) => e.EnclaveName === this.name && e.State === 'RUNNING');
    let info = running;
    if (!info) {
      const memoryMib = memoryToStart(this.c.memory_mib, this.c.image_path);
      if (memoryMib !== this.c.memory_mib) log.warn(`starting the enclave with ${memoryMib} MiB, not memory_mib ${this.c.memory_mib}: ${this.c.image_path} needs at least ${EIF_MEMORY_RATIO} times its size (nitro-cli error E26 otherwise); set memory_mib: ${memoryMib} in acm.yaml and at least as much in allocator.yaml`);
      info = await runEnclave({ eifPath: this.c.image_path, cpuCount: this.c.cpu_count, memoryMib, name: this.name, cid: ENCLAVE_CID });
    }
    this.id = info.EnclaveID;
    log.info(`${running ? 'found' : 'started'} enclave ${info.EnclaveID} (CID ${info.EnclaveCID})`);
    const ep = { keyAddress: `vsock:cid=${info.EnclaveCID};port=${this.c.p11kit_port}`, provisionAddress: `vsock:cid=${info.EnclaveCID};port=${this.c.rpc_port}` };
    // Booting takes a moment: wait for the provisioning channel, up to boot_timeout_ms.
    const deadline = Date.now() + this.c.boot_timeout_ms;
    for (;;) {
      try { (await ProvisionClient.connect(parseAddress(ep.provisionAddress), 1000)).close(); return ep; } catch (e) {
        if (Date.now() > deadline) throw new Error(`enclave ${info.EnclaveID} did not answer on ${ep.provisionAddress} within ${this.c.boot_timeout_ms} ms: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  async running(): Promise<boolean> {
    const all = await describeEnclaves().catch(() => []);
    return all.some((e) => e.EnclaveID === this.id && e.State === 'RUNNING');
  }

  /**
   * The image's measurements: image-measurements.json beside the EIF (npm run
   * build:eif writes it, the RPM installs it), else nitro-cli describe-eif on the
   * EIF itself. The documents must chain to the AWS Nitro root G1.
   */
  async expected(): Promise<ExpectedEnclave> {
    const roots = [awsNitroRoot()];
    const rootName = 'the AWS Nitro root G1';
    const beside = measurementsBeside(this.c.image_path);
    if (beside) return { pcrs: beside.pcrs, source: `from ${beside.file}`, roots, rootName };
    try {
      return { pcrs: pcrsFromMeasurements(await describeEif(this.c.image_path), `nitro-cli describe-eif ${this.c.image_path}`), source: `from nitro-cli describe-eif ${this.c.image_path}`, roots, rootName };
    } catch (e) {
      throw new Error(`cannot tell what ${this.c.image_path} measures: no ${MEASUREMENTS_FILE} beside it and ${(e as Error).message}`);
    }
  }

  async stop(): Promise<void> {
    if (this.id) await terminateEnclave(this.id).catch((e) => log.warn(`terminate-enclave: ${(e as Error).message}`));
  }
}
