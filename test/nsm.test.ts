// The simulated NSM (local mode) and the real NSM driver's failure when there is
// no /dev/nsm. Documents from the simulated NSM verify with its root, only with it,
// and carry PCRs that follow the enclave app's files, role ARN and instance id.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { DeviceNsm } from '../enclave/nsm.ts';
import { SimulatedNsm, simulatedNsmRoot, measureEnclaveApp } from '../enclave/nsm-simulated.ts';
import { verifyAttestation, awsNitroRoot } from '../shared/attestation.ts';
import { pcrOf } from '../shared/pcr.ts';
import { tmpdir } from './helpers/enclave.ts';

const dir = tmpdir('nsm');
test.after.always(() => fs.rmSync(dir, { recursive: true, force: true }));

test('simulated NSM: documents verify against its root and carry the request and the measured PCRs', (t) => {
  const pki = simulatedNsmRoot(dir);
  const roleArn = 'arn:aws:iam::123456789012:role/web/acm-role';
  const nsm = new SimulatedNsm({ pki, roleArn, instanceId: 'i-0123456789abcdef0' });
  const { publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const nonce = crypto.randomBytes(32);
  const doc = verifyAttestation(nsm.attestation({ publicKey: spki, nonce }), { roots: [pki.rootCert], at: new Date() });
  t.deepEqual(doc.publicKey, spki);
  t.deepEqual(doc.nonce, nonce);
  t.is(doc.userData, null);
  t.is(doc.cabundle.length, 2);
  t.regex(doc.moduleId, /^i-0123456789abcdef0-enc[0-9a-f]{16}$/);
  const m = measureEnclaveApp();
  t.deepEqual(doc.pcrs.get(0), m.pcr0);
  t.deepEqual(doc.pcrs.get(3), pcrOf(roleArn));
  t.deepEqual(doc.pcrs.get(4), pcrOf('i-0123456789abcdef0'));
  t.deepEqual(nsm.describePcr(0).data, m.pcr0);
  t.throws(() => verifyAttestation(nsm.attestation({}), { roots: [awsNitroRoot()] }), { message: /not a trusted root/ });
  t.throws(() => nsm.attestation({ userData: Buffer.alloc(1025) }), { message: /at most 1024/ });
});

test('PCR3/PCR4 follow the user guide: SHA-384 over 48 zero bytes and the string', (t) => {
  // The guide's printed example outputs are cut short by a character or two; the first 90 hex digits agree.
  t.true(pcrOf('arn:aws:iam::123456789012:role/Webserver').toString('hex').startsWith('78fce75db17cd4e0a3fb8dad3ad128ca5e77edbb2b2c7f75329dccd99aa5f6ef4fc1f1a452e315b9e98f9e312e6'.slice(0, 90)));
  t.true(pcrOf('i-1234567890abcdef0').toString('hex').startsWith('08f996b5d43e047a9eb51e7f548bfee7e164fd7dc8f65541f2ac09d6545ac812719327281c401a67a10fcba87ae79'.slice(0, 90)));
  const arn = 'arn:aws:iam::123456789012:role/acm';
  t.is(pcrOf(arn).toString('hex'), crypto.createHash('sha384').update(Buffer.concat([Buffer.alloc(48), Buffer.from(arn)])).digest('hex'));
});

test('simulated NSM: debug mode has all PCRs zero, as on Nitro', (t) => {
  const nsm = new SimulatedNsm({ pki: simulatedNsmRoot(dir), roleArn: 'arn:aws:iam::1:role/x', instanceId: 'i-1', debug: true });
  const doc = verifyAttestation(nsm.attestation({}), { roots: [simulatedNsmRoot(dir).rootCert] });
  for (const [i, v] of doc.pcrs) t.true(v.equals(Buffer.alloc(48)), `PCR${i}`);
});

test('the real NSM driver says clearly when there is no /dev/nsm', (t) => {
  t.false(fs.existsSync('/dev/nsm'));
  t.throws(() => DeviceNsm.open(), { message: /cannot open \/dev\/nsm \(ENOENT\): not running in a Nitro enclave/ });
  // A file that is not the NSM device: the ioctl is refused and the error names it.
  const f = path.join(dir, 'not-nsm');
  fs.writeFileSync(f, '');
  const dev = DeviceNsm.open(f);
  t.throws(() => dev.getRandom(), { message: /NSM ioctl/ });
});
