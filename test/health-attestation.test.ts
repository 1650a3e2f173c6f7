// Health checks that verify a fresh attestation (issue 16, part 1): the enclave
// app answers a health request carrying a nonce with an NSM document over it; the
// agent checks chain, time, nonce, debug mode and PCRs against the image's
// measurements, names the PCR and both values when one differs, shows it in
// status (exit 1), and provisions nothing into an enclave that fails.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { SimulatedNsm, simulatedNsmRoot, measureEnclaveApp } from '../enclave/nsm-simulated.ts';
import { checkAttestation, measurementsBeside, type ExpectedEnclave } from '../src/agent/attestation-check.ts';
import { NitroCliEnclaveController } from '../src/agent/enclave-controller.ts';
import { Agent } from '../src/agent/agent.ts';
import { parseConfig } from '../src/agent/config.ts';
import { statusExitCode, formatStatus } from '../src/commands/status.ts';
import { ProvisionClient, ProvisionError } from '../shared/provision-wire.ts';
import { parseAddress } from '../shared/address.ts';
import { log } from '../shared/log.ts';
import { tmpdir, ROOT, changedEnclaveApp } from './helpers/enclave.ts';
import { startTestCloud, type TestCloud } from './helpers/cloud.ts';
import { LocalEnclaveController } from '../src/local/local-enclave-controller.ts';

const dir = tmpdir('health-attestation');
fs.chmodSync(dir, 0o755);
let tc: TestCloud;
test.before(async () => { tc = await startTestCloud(path.join(dir, 'cloud')); });
test.after.always(async () => { await tc?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });

const pki = () => simulatedNsmRoot(path.join(dir, 'unit-nsm'));
function expectedOf(nsm: SimulatedNsm, root = pki().rootCert): ExpectedEnclave {
  return { pcrs: new Map([0, 1, 2].map((i) => [i, nsm.pcrs.get(i)!])), source: 'from the test', roots: [root], rootName: 'the test root' };
}

test('a document over the nonce sent, from the expected image, passes', (t) => {
  const nsm = new SimulatedNsm({ pki: pki() });
  const nonce = crypto.randomBytes(32);
  const c = checkAttestation(nsm.attestation({ nonce }).toString('base64'), nonce, expectedOf(nsm));
  t.deepEqual(c.failures, []);
  t.true(c.ok);
  t.is(c.pcrs!['0'], measureEnclaveApp().pcr0.toString('hex'));
});

test('each way it must fail names what failed', (t) => {
  const nsm = new SimulatedNsm({ pki: pki() });
  const nonce = crypto.randomBytes(32);
  const doc = nsm.attestation({ nonce }).toString('base64');
  // Another image than the one expected: the PCR and both values.
  const tampered = expectedOf(nsm);
  const want = Buffer.from(tampered.pcrs.get(0)!);
  want[0] ^= 1;
  tampered.pcrs.set(0, want);
  const pcr = checkAttestation(doc, nonce, tampered);
  t.false(pcr.ok);
  t.deepEqual(pcr.failures, [`PCR0 is ${nsm.pcrs.get(0)!.toString('hex')}, expected ${want.toString('hex')} (from the test)`]);
  // A replayed document: an earlier nonce.
  t.regex(checkAttestation(doc, crypto.randomBytes(32), expectedOf(nsm)).failures.join(), /the document's nonce is .*, not the .* the agent sent \(a replayed document\)/);
  // Not fresh: checked 10 minutes after it was made.
  t.regex(checkAttestation(doc, nonce, expectedOf(nsm), Date.now() + 600_000).failures.join(), /s before the agent's clock \(at most 300 s\)/);
  // Another root.
  const other = simulatedNsmRoot(path.join(dir, 'other-nsm'));
  t.regex(checkAttestation(doc, nonce, expectedOf(nsm, other.rootCert)).failures.join(), /does not verify against the test root: cabundle\[0\] .* is not a trusted root/);
  // A flipped byte of the signature.
  const raw = Buffer.from(doc, 'base64');
  raw[raw.length - 5] ^= 0xff;
  t.regex(checkAttestation(raw.toString('base64'), nonce, expectedOf(nsm)).failures.join(), /COSE signature does not verify/);
  // No document at all.
  t.regex(checkAttestation(undefined, nonce, expectedOf(nsm)).failures.join(), /without an attestation document/);
  // Debug mode: every PCR zero.
  const debug = new SimulatedNsm({ pki: pki(), debug: true });
  t.deepEqual(checkAttestation(debug.attestation({ nonce }).toString('base64'), nonce, expectedOf(nsm)).failures, ['the enclave runs in debug mode (PCR0, PCR1 and PCR2 are zero): its console is readable from the parent; run it without --debug-mode']);
});

test('production: the image measurements from image-measurements.json beside the EIF, else nitro-cli describe-eif; a bad file is named', async (t) => {
  process.env.NITRO_CLI = path.join(ROOT, 'test/fixtures/nitro-cli-standin');
  t.teardown(() => { delete process.env.NITRO_CLI; delete process.env.NITRO_CLI_FAIL; });
  const images = fs.mkdtempSync(path.join(dir, 'eif-'));
  const eif = path.join(images, 'nitro-acm.eif');
  fs.writeFileSync(eif, '');
  const c = new NitroCliEnclaveController({ ...parseConfig('tokens: []\n', 'acm.yaml').enclave, image_path: eif });
  const fromCli = await c.expected();
  t.is(fromCli.pcrs.get(0)!.toString('hex'), '0a5044e337c00068c2c033546641e37aa466b853ca486dd149f641f15071961db2a0827beccea9cade30a5044e3300aa');
  t.is(fromCli.source, `from nitro-cli describe-eif ${eif}`);
  t.is(fromCli.rootName, 'the AWS Nitro root G1');
  const m = { PCR0: 'aa'.repeat(48), PCR1: 'bb'.repeat(48), PCR2: 'cc'.repeat(48), PCR8: 'dd'.repeat(48) };
  fs.writeFileSync(path.join(images, 'image-measurements.json'), JSON.stringify({ Image: 'nitro-acm.eif', Measurements: { HashAlgorithm: 'Sha384 { ... }', ...m } }));
  const fromFile = await c.expected();
  t.deepEqual([...fromFile.pcrs].map(([i, v]) => [i, v.toString('hex')]), [[0, m.PCR0], [1, m.PCR1], [2, m.PCR2], [8, m.PCR8]]);
  t.is(fromFile.source, `from ${path.join(images, 'image-measurements.json')}`);
  fs.writeFileSync(path.join(images, 'image-measurements.json'), JSON.stringify({ Measurements: { PCR0: 'aa', PCR1: m.PCR1, PCR2: m.PCR2 } }));
  t.throws(() => measurementsBeside(eif), { message: `${path.join(images, 'image-measurements.json')}: Measurements.PCR0 is "aa", expected 96 hex digits` });
  fs.rmSync(path.join(images, 'image-measurements.json'));
  process.env.NITRO_CLI_FAIL = '1';
  await t.throwsAsync(c.expected(), { message: new RegExp(`^cannot tell what ${eif} measures: no image-measurements.json beside it and nitro-cli describe-eif failed \\(exit 1\\)`) });
});

test('the enclave app: health with a nonce returns a document over it; a bad nonce is refused by name', async (t) => {
  const c = tc.controller(path.join(dir, 'run-nonce'));
  const ep = await c.start();
  t.teardown(() => c.stop());
  const client = await ProvisionClient.connect(parseAddress(ep.provisionAddress));
  t.teardown(() => client.close());
  const nonce = crypto.randomBytes(32);
  const h = await client.op('health', { nonce: nonce.toString('base64') });
  const check = checkAttestation(h.attestation, nonce, await c.expected());
  t.true(check.ok, check.failures.join('; '));
  t.is((await client.op('health', {})).attestation, undefined, 'a plain health request stays cheap');
  for (const bad of ['', 'c2hvcnQ=', 'not base64!', 'A'.repeat(1024)]) {
    const e = await t.throwsAsync(client.op('health', { nonce: bad }), { instanceOf: ProvisionError });
    t.is(e!.message, '"nonce" must be base64 of 16..512 bytes');
  }
});

test('the agent: a changed enclave file fails the check naming PCR0 and both values; nothing is provisioned into it; status exits 1; the expected image passes and waiting tokens are tried again', async (t) => {
  const errors: string[] = [];
  const original = log.error;
  log.error = (m: string) => { errors.push(m); original(m); };
  t.teardown(() => { log.error = original; });
  await tc.publish(tc.cloud.bucket(), 'health/a.json', ['health.test']);
  const config = parseConfig(`tokens:\n  - label: health-token\n    source:\n      S3:\n        uri: "s3://${tc.cloud.bucket()}/health/a.json"\n`, 'acm.yaml');
  // The agent expects this checkout's enclave app; another build of it runs.
  const changedMain = changedEnclaveApp(dir);
  const changed = new LocalEnclaveController({ ...tc.controllerOptions(path.join(dir, 'run-changed')), entry: changedMain });
  const intended = measureEnclaveApp();
  const running = measureEnclaveApp(path.dirname(changedMain));
  const controller = { start: () => changed.start(), running: () => changed.running(), stop: () => changed.stop(), expected: async () => ({ ...(await changed.expected()), pcrs: new Map([[0, intended.pcr0], [1, intended.pcr1], [2, intended.pcr2]]), source: 'the intended image' }) };
  const agent = new Agent({ config, enclave: controller, endpoints: tc.endpoints, reload: async () => {} });
  t.teardown(() => agent.stop());
  await agent.start();
  const tok = agent.tokens.get('health-token')!;
  t.is(tok.state, 'failed');
  t.true(tok.error!.startsWith('the enclave failed its attestation check, so no key goes into it: '), tok.error);
  const line = `PCR0 is ${running.pcr0.toString('hex')}, expected ${intended.pcr0.toString('hex')} (the intended image)`;
  t.true(tok.error!.includes(line), tok.error);
  t.true(errors.some((e) => e.includes(line) && e.includes(`PCR2 is ${running.pcr2.toString('hex')}`)), errors.join('\n'));
  const st = await agent.status();
  t.is(st.enclave.attestation!.failed, 1);
  t.false(st.enclave.attestation!.last!.ok);
  t.false((st.tokens[0]).inEnclave, 'the key never went into the changed enclave');
  const report = { ...st, configFile: 'acm.yaml', socket: 'test' };
  t.is(statusExitCode(report), 1);
  t.regex(formatStatus(report), /attestation: FAILED .* no key goes into this enclave:\n {2}PCR0 is /);
  // The same agent, told the truth about the image (an operator who installed it): it passes, and the waiting token is provisioned.
  controller.expected = () => changed.expected();
  t.true(await agent.checkAttestation(), 'passes after failing');
  // The changed build's PCR0 is not in the KMS key policy: KMS refuses it, so the token stays failed, now for that reason.
  await agent.retryWaiting('test');
  t.regex(agent.tokens.get('health-token')!.error!, /KMS|not authorized/);
});
