// The nitro-cli calls, against a stand-in that prints the documented output
// (there is no Nitro hardware here).
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { runEnclave, describeEnclaves, terminateEnclave, NitroCliError } from '../src/agent/nitro-cli.ts';
import { ROOT, tmpdir } from './helpers/enclave.ts';
import { NitroCliEnclaveController } from '../src/agent/enclave-controller.ts';
import { log } from '../shared/log.ts';

const dir = tmpdir('nitro-cli');
const logFile = path.join(dir, 'calls.log');
test.before(() => { process.env.NITRO_CLI = path.join(ROOT, 'test/fixtures/nitro-cli-standin'); process.env.NITRO_CLI_LOG = logFile; });
test.after.always(() => fs.rmSync(dir, { recursive: true, force: true }));

test.serial('run, describe and terminate: the right arguments, the CID and state read from the JSON', async (t) => {
  const e = await runEnclave({ eifPath: '/usr/share/nitro_enclaves/nitro-acm/nitro-acm.eif', cpuCount: 2, memoryMib: 512, cid: 16, name: 'nitro-acm' });
  t.is(e.EnclaveCID, 16);
  t.is(e.EnclaveID, 'i-05f6ed443aEXAMPLE-enc173dfe3eEXAMPLE');
  const all = await describeEnclaves();
  t.is(all[0].State, 'RUNNING');
  t.true(await terminateEnclave(e.EnclaveID));
  t.deepEqual(fs.readFileSync(logFile, 'utf8').trim().split('\n'), [
    'run-enclave --eif-path /usr/share/nitro_enclaves/nitro-acm/nitro-acm.eif --cpu-count 2 --memory 512 --enclave-cid 16 --enclave-name nitro-acm',
    'describe-enclaves',
    'terminate-enclave --enclave-id i-05f6ed443aEXAMPLE-enc173dfe3eEXAMPLE',
  ]);
});

test.serial('a failing nitro-cli: the error carries its exit status and message', async (t) => {
  process.env.NITRO_CLI_FAIL = '1';
  t.teardown(() => { delete process.env.NITRO_CLI_FAIL; });
  const e = await t.throwsAsync(runEnclave({ eifPath: '/x.eif', cpuCount: 2, memoryMib: 256 }), { instanceOf: NitroCliError });
  t.regex(e!.message, /nitro-cli run-enclave failed \(exit 1\): \[ E39 \] Enclave process connection failure/);
});

test.serial('no nitro-cli at all: a clear error, not a crash', async (t) => {
  process.env.NITRO_CLI = path.join(dir, 'absent-nitro-cli');
  t.teardown(() => { process.env.NITRO_CLI = path.join(ROOT, 'test/fixtures/nitro-cli-standin'); });
  await t.throwsAsync(describeEnclaves(), { instanceOf: NitroCliError, message: /nitro-cli describe-enclaves failed: .*ENOENT/ });
});

test.serial("the enclave starts with at least 4 times its image's size (nitro-cli's floor) when acm.yaml asks for less, saying so", async (t) => {
  fs.rmSync(logFile, { force: true });
  const eif = path.join(dir, 'nitro-acm.eif');
  fs.writeFileSync(eif, '');
  fs.truncateSync(eif, 110 * 1048576);
  const warned: string[] = [];
  const original = log.warn;
  log.warn = (m: string) => { warned.push(m); };
  t.teardown(() => { log.warn = original; });
  // AWS's example memory_mib. The stand-in's enclave does not answer on vsock: start() gives up after boot_timeout_ms.
  // (Another name than the one the stand-in lists as running, so that start() runs one.)
  const c = new NitroCliEnclaveController({ cpu_count: 2, memory_mib: 256, image_path: eif, boot_timeout_ms: 200, p11kit_port: 9999, rpc_port: 10000, attestation_retry_count: 5, attestation_check_every: 1 }, 'memory-test');
  await t.throwsAsync(c.start(), { message: /did not answer/ });
  t.true(fs.readFileSync(logFile, 'utf8').includes(`run-enclave --eif-path ${eif} --cpu-count 2 --memory 448 `));
  t.true(warned.some((m) => m.startsWith('starting the enclave with 448 MiB, not memory_mib 256')), warned.join('\n'));
  // Enough memory asked for: used as it is.
  fs.rmSync(logFile);
  await t.throwsAsync(new NitroCliEnclaveController({ cpu_count: 2, memory_mib: 512, image_path: eif, boot_timeout_ms: 200, p11kit_port: 9999, rpc_port: 10000, attestation_retry_count: 5, attestation_check_every: 1 }, 'memory-test').start());
  t.true(fs.readFileSync(logFile, 'utf8').includes('--memory 512 '));
});
