// Stopping the service while one of its enclave probes is under way: the probe
// then finds the enclave gone (it was stopped on purpose) and must not start a
// new one. It used to: in CI an enclave app started this way, after its test
// had ended, kept listening on the socket path the next test's enclave used.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { startService } from '../src/agent/service.ts';
import type { EnclaveController } from '../src/agent/enclave-controller.ts';
import { tmpdir } from './helpers/enclave.ts';
import { startTestCloud, type TestCloud } from './helpers/cloud.ts';

const dir = tmpdir('service-stop');
let tc: TestCloud;
test.before(async () => { tc = await startTestCloud(dir); });
test.after.always(async () => { await tc?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('a probe under way when the service stops does not start an enclave after the stop', async (t) => {
  await tc.publish(tc.cloud.bucket(), 'stop/a.json', ['stop.test']);
  const configFile = path.join(dir, 'acm.yaml');
  fs.writeFileSync(configFile, `tokens:\n  - label: stop-token\n    source:\n      S3:\n        uri: "s3://${tc.cloud.bucket()}/stop/a.json"\n`);
  const real = tc.controller();
  let starts = 0;
  let hold: Promise<void> | undefined;
  let release!: () => void;
  const controller: EnclaveController = {
    start: async () => { starts++; return real.start(); },
    running: async () => { if (hold) await hold; return real.running(); },
    stop: (o) => real.stop(o),
    expected: () => real.expected(),
  };
  const service = await startService({ configFile, controller: () => controller, endpoints: tc.endpoints, controlSocket: false, healthIntervalMs: 100, reload: async () => {} });
  t.teardown(() => real.stop());
  t.is(service.agent.tokens.get('stop-token')!.state, 'serving');
  t.is(starts, 1);
  hold = new Promise((r) => { release = r; });
  await sleep(300); // the next probe now waits in running()
  await service.stop();
  await service.agent.stop(); // the enclave stops, as at a service stop
  release();
  await sleep(2000);
  t.is(starts, 1, 'no enclave was started after the service stopped');
  t.false(await real.running());
});
