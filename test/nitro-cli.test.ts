// The nitro-cli calls, against a stand-in that prints the documented output
// (there is no Nitro hardware here).
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { runEnclave, describeEnclaves, terminateEnclave, NitroCliError } from '../src/agent/nitro-cli.ts';
import { ROOT, tmpdir } from './helpers/enclave.ts';

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
