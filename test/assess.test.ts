// nitro-acm assess (issue 16 part 2), as an operator runs it against a running
// agent: with the set-up local mode makes (an attested key policy that the role
// may read) every finding passes and it exits 0; a key policy that lets the role
// decrypt without attestation is caught by the live probe (the parent's direct
// Decrypt is ALLOWED) and by the policy, a policy pinned to another image's PCR0
// and one the role may not read are named; a debug-mode enclave and a changed
// enclave file FAIL. Each line is checked as printed.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { startService, type RunningService } from '../src/agent/service.ts';
import { LocalEnclaveController } from '../src/local/local-enclave-controller.ts';
import { measureEnclaveApp } from '../enclave/nsm-simulated.ts';
import type { EnclaveController } from '../src/agent/enclave-controller.ts';
import type { Assessment } from '../src/agent/assess.ts';
import { cli } from './helpers/cli.ts';
import { tmpdir, changedEnclaveApp } from './helpers/enclave.ts';
import { startTestCloud, type TestCloud } from './helpers/cloud.ts';

const dir = tmpdir('assess');
fs.chmodSync(dir, 0o755);
let tc: TestCloud;
test.before(async () => { tc = await startTestCloud(dir); });
test.after.always(async () => { await tc?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });

const pcr0 = () => measureEnclaveApp().pcr0.toString('hex');
const token = (label: string, key: string) => `  - label: ${label}\n    source:\n      S3:\n        uri: "s3://${tc.cloud.bucket()}/${key}"\n`;

async function agentWith(name: string, tokens: string, controller: EnclaveController): Promise<{ service: RunningService; socket: string }> {
  const configFile = path.join(dir, `${name}.yaml`);
  fs.writeFileSync(configFile, `tokens:\n${tokens}`);
  const socket = path.join(dir, `${name}.sock`);
  const service = await startService({ configFile, controller: () => controller, endpoints: tc.endpoints, controlSocket: socket, reload: async () => {} });
  return { service, socket };
}

const lines = (out: string, level: string) => out.split('\n').filter((l) => l.startsWith(`[${level}]`));

test.serial('assess: an attested key policy the role may read, a healthy enclave: every finding passes, exit 0; --markdown and --json', async (t) => {
  await tc.publish(tc.cloud.bucket(), 'assess/good.json', ['good.test']);
  const { service, socket } = await agentWith('good', token('good', 'assess/good.json'), tc.controller());
  t.teardown(async () => { await service.stop(); await service.agent.stop(); });
  const r = await cli(['assess', '--socket', socket]);
  t.is(r.status, 0, r.stdout + r.stderr);
  t.deepEqual(lines(r.stdout, 'FAIL'), []);
  t.deepEqual(lines(r.stdout, 'WARN'), []);
  const pass = lines(r.stdout, 'PASS');
  for (const want of ['[PASS] good: direct decrypt from the parent is BLOCKED (attestation required)', '[PASS] good: decrypt from the verified enclave is ALLOWED (the token serves)', '[PASS] good: the key policy binds PCR0 to this image',
    '[PASS] debug mode is off', '[PASS] vsock is the only channel to a real enclave; local mode stands in unix sockets', '[PASS] attestation document nonce verification', "[PASS] the certificate chain validates to local mode's simulated NSM root", '[PASS] the health check verifies a fresh attestation']) {
    t.true(pass.some((l) => l.startsWith(want)), `${want}\n${r.stdout}`);
  }
  t.regex(r.stdout, /^\[INFO\] good: the key policy binds PCR0 \(the image is not signed/m, 'PCR8 advice, as information for an unsigned image');
  t.regex(r.stdout, new RegExp(`^ {2}PCR0 \\(image\\) +${pcr0().slice(0, 16)}\\.\\.\\. +Yes$`, 'm'));
  t.regex(r.stdout, /^ {2}PCR1 \(kernel\) +\S+ +No$/m);
  t.regex(r.stdout, / {4}direct decrypt {3}BLOCKED: KMS refused the parent/);
  t.regex(r.stdout, /^\d+ PASS, 0 WARN, 0 FAIL$/m);

  const md = await cli(['assess', '--socket', socket, '--markdown']);
  t.is(md.status, 0);
  t.regex(md.stdout, /^## Nitro Enclave Security Assessment$/m);
  t.regex(md.stdout, new RegExp(`^\\| PCR0 \\(image\\) \\| ${pcr0().slice(0, 16)}\\.\\.\\. \\| Yes \\|$`, 'm'));
  t.regex(md.stdout, /^ {2}- Direct decrypt from parent: BLOCKED \(attestation required\)$/m);
  t.regex(md.stdout, /^- \[PASS\] debug mode is off/m);

  const js = await cli(['assess', '--socket', socket, '--json']);
  const a = JSON.parse(js.stdout) as Assessment;
  t.deepEqual([a.localMode, a.keys.length, a.keys[0].directDecrypt, a.keys[0].policy, a.keys[0].bound.PCR0], [true, 1, 'BLOCKED', 'read', 'yes']);
  t.true(a.keys[0].keyArn!.startsWith('arn:aws:kms:'), 'the probe named the key');
  t.false(js.stdout.includes('PRIVATE KEY'), 'no key material in the report');
  t.is((await cli(['assess', '--socket', socket, '--json', '--markdown'])).status, 2);
});

test.serial('assess: a policy without attestation FAILs twice (the probe decrypted; the statement); another image\'s PCR0 and an unreadable policy are named', async (t) => {
  const open = await tc.createKeyWithRoleStatements([{ Action: ['kms:Decrypt', 'kms:GetKeyPolicy'] }]);
  const otherImage = await tc.createKeyWithRoleStatements([{ Action: 'kms:GetKeyPolicy' }, { Action: 'kms:Decrypt', Condition: { StringEqualsIgnoreCase: { 'kms:RecipientAttestation:ImageSha384': 'ab'.repeat(48) } } }]);
  const unreadable = await tc.createKeyWithRoleStatements([{ Action: 'kms:Decrypt', Condition: { StringEqualsIgnoreCase: { 'kms:RecipientAttestation:PCR0': pcr0() } } }]);
  await tc.publish(tc.cloud.bucket(), 'assess/open.json', ['open.test'], open);
  await tc.publish(tc.cloud.bucket(), 'assess/other.json', ['other.test'], otherImage);
  await tc.publish(tc.cloud.bucket(), 'assess/hidden.json', ['hidden.test'], unreadable);
  const { service, socket } = await agentWith('bad', token('open', 'assess/open.json') + token('other', 'assess/other.json') + token('hidden', 'assess/hidden.json'), tc.controller());
  t.teardown(async () => { await service.stop(); await service.agent.stop(); });
  const r = await cli(['assess', '--socket', socket]);
  t.is(r.status, 1, r.stdout + r.stderr);
  const fail = lines(r.stdout, 'FAIL');
  t.true(fail.some((l) => l.startsWith(`[FAIL] open: the parent instance can decrypt this private key directly (${open})`)), r.stdout);
  t.true(fail.some((l) => l.startsWith('[FAIL] open: the key policy lets arn:aws:iam::') && l.endsWith('decrypt without any kms:RecipientAttestation condition')), r.stdout);
  t.true(fail.some((l) => l.startsWith('[FAIL] other: the key policy binds PCR0 to another value than this image measures')), r.stdout);
  t.regex(r.stdout, new RegExp(`^ {2}fix: put PCR0 = ${pcr0()} in the key policy of ${otherImage.replace(/[/:]/g, '\\$&')}$`, 'm'));
  t.true(lines(r.stdout, 'PASS').some((l) => l.startsWith('[PASS] other: direct decrypt from the parent is BLOCKED')), 'the probe is refused for the pinned key');
  t.true(lines(r.stdout, 'WARN').some((l) => l.startsWith(`[WARN] hidden: the key policy of ${unreadable} cannot be read (AccessDeniedException), so the PCRs it binds are unknown`)), r.stdout);
  t.regex(r.stdout, / {4}direct decrypt {3}ALLOWED: KMS decrypted the sealed private key for the parent/);
  t.false(r.stdout.includes('PRIVATE KEY') || r.stdout.includes('MII'), 'the decrypted key is never shown');
});

test.serial('assess: a debug-mode enclave and a changed enclave file FAIL', async (t) => {
  await tc.publish(tc.cloud.bucket(), 'assess/debug.json', ['debug.test']);
  const debug = new LocalEnclaveController({ ...tc.controllerOptions(), enclaveArgs: ['--nsm-sim-debug'] });
  const d = await agentWith('debug', token('debug', 'assess/debug.json'), debug);
  const r = await cli(['assess', '--socket', d.socket]);
  await d.service.stop(); await d.service.agent.stop();
  t.is(r.status, 1);
  t.true(lines(r.stdout, 'FAIL').some((l) => l.startsWith('[FAIL] the enclave runs in debug mode: its console is readable from the parent and its PCRs are zero')), r.stdout);
  t.regex(r.stdout, /^\[WARN\] debug: no sealed key to probe|^\[(PASS|FAIL)\] debug: /m);

  const changedMain = changedEnclaveApp(dir);
  const changed = new LocalEnclaveController({ ...tc.controllerOptions(path.join(dir, 'run-changed')), entry: changedMain });
  const intended = measureEnclaveApp();
  const controller: EnclaveController = { start: () => changed.start(), running: () => changed.running(), stop: (o) => changed.stop(o), expected: async () => ({ ...(await changed.expected()), pcrs: new Map([[0, intended.pcr0], [1, intended.pcr1], [2, intended.pcr2]]), source: 'the intended image' }) };
  const c = await agentWith('changed', token('debug', 'assess/debug.json'), controller);
  t.teardown(async () => { await c.service.stop(); await c.service.agent.stop(); });
  const r2 = await cli(['assess', '--socket', c.socket]);
  t.is(r2.status, 1);
  const running = measureEnclaveApp(path.dirname(changedMain));
  t.true(lines(r2.stdout, 'FAIL').some((l) => l.startsWith("[FAIL] the enclave's last attestation check failed: ") && l.includes(`PCR0 is ${running.pcr0.toString('hex')}, expected ${intended.pcr0.toString('hex')} (the intended image)`)), r2.stdout);
});

test('assess: key policies of any shape are read without throwing: odd statements are skipped, only Allow + Decrypt counts', async (t) => {
  const { decryptStatements } = await import('../src/agent/assess.ts');
  const odd = JSON.stringify({ Statement: [null, 7, 'text', { Effect: 'Deny', Action: 'kms:Decrypt' }, { Effect: 'Allow', Action: 'kms:Encrypt', Principal: '*' },
    { Effect: 'Allow', Action: ['kms:Decrypt'], Principal: { AWS: 123 }, Condition: 'not a map' },
    { Effect: 'Allow', Action: 'kms:*', Principal: '*', Condition: { StringLike: { 'kms:RecipientAttestation:PCR0': 'ab*' }, StringEquals: { 'kms:RecipientAttestation:ImageSha384': ['AA', 'BB'], 'kms:RecipientAttestation:PCR8': 'cc', 'aws:SourceIp': '1.2.3.4' } } }] });
  const sts = decryptStatements(odd);
  t.is(sts.length, 2);
  t.deepEqual(sts[0], { principals: ['123'], attestation: new Map() });
  t.deepEqual(sts[1].principals, ['*']);
  t.deepEqual([...sts[1].attestation], [[0, ['aa', 'bb']], [8, ['cc']]], 'ImageSha384 is PCR0; the equality wins over a pattern listed before it');
  t.deepEqual(decryptStatements('{}'), []);
  t.deepEqual(decryptStatements(JSON.stringify({ Statement: { Effect: 'Allow', Action: 'kms:Decrypt', Principal: { AWS: ['a', 'b'] } } })).map((s) => s.principals), [['a', 'b']], 'a single statement, not a list');
  t.throws(() => decryptStatements('not json'));
});
