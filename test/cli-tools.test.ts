// The operator tools as operators run them: nitro-acm verify-attestation, pcrs,
// seal (against the local cloud), and --help on every command.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { KMSClient, CreateKeyCommand, DecryptCommand } from '@aws-sdk/client-kms';
import { startLocalCloud, type LocalCloud } from '../src/local/cloud/server.ts';
import { parseBundle } from '../shared/bundle.ts';
import { createCA, issueServerCert } from '../src/local/pki.ts';
import { cli } from './helpers/cli.ts';
import { tmpdir, ROOT } from './helpers/enclave.ts';

const VECTORS = process.env.NITRO_ACM_VECTORS ?? path.join(ROOT, 'test/vectors');
const dir = tmpdir('cli');
let cloud: LocalCloud;
test.before(async () => { cloud = await startLocalCloud({ stateDir: dir }); });
test.after.always(async () => { await cloud?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });


test('--help works for every command, and an unknown command or option says so', async (t) => {
  for (const c of ['agent', 'status', 'doctor', 'verify-attestation', 'pcrs', 'seal', 'local-cloud', 'local']) {
    const r = await cli([c, '--help']);
    t.is(r.status, 0, c);
    t.regex(r.stdout, new RegExp(`^Usage: nitro-acm ${c}`), c);
  }
  const u = await cli(['frobnicate']);
  t.is(u.status, 2);
  t.regex(u.stderr, /unknown command "frobnicate"/);
  const o = await cli(['pcrs', '--bogus']);
  t.is(o.status, 2);
  t.regex(o.stderr, /Unknown option '--bogus'/);
});

test('verify-attestation: a real document verifies (exit 0), the corrupted one does not (exit 1, with the reason), --json for scripts', async (t) => {
  const ok = await cli(['verify-attestation', path.join(VECTORS, 'att_evervault_beta_2022-10-13.hex')]);
  t.is(ok.status, 0, ok.stderr);
  t.regex(ok.stdout, /VERIFIED against AWS Nitro Enclaves root G1/);
  t.regex(ok.stdout, /PCR0 {2}f4d48b81a460c9916d1e685119074bf24660afd3e34fae9fca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b/);
  const bad = await cli(['verify-attestation', path.join(VECTORS, 'att_evervault_beta_2022-10-13_NEG_bad_signature.hex')]);
  t.is(bad.status, 1);
  t.regex(bad.stdout, /reason: COSE signature does not verify/);
  const now = await cli(['verify-attestation', '--at', 'now', '--json', path.join(VECTORS, 'att_blocky_debug_2024-09-07.hex')]);
  t.is(now.status, 1);
  const j = JSON.parse(now.stdout);
  t.false(j.verified);
  t.regex(j.error, /not at/);
  t.is(j.pcrs.PCR0, '00'.repeat(48));
});

test('pcrs: values as the user guide computes them, a ready policy condition, and clear errors for bad input', async (t) => {
  const r = await cli(['pcrs', '--role-arn', 'arn:aws:iam::123456789012:role/Webserver', '--instance-id', 'i-1234567890abcdef0', '--json']);
  t.is(r.status, 0);
  const j = JSON.parse(r.stdout);
  t.is(j.pcrs.PCR3, crypto.createHash('sha384').update(Buffer.alloc(48)).update('arn:aws:iam::123456789012:role/Webserver').digest('hex'));
  t.is(j.condition.StringEqualsIgnoreCase['kms:RecipientAttestation:PCR4'], j.pcrs.PCR4);
  const e = await cli(['pcrs', '--instance-id', 'instance-1']);
  t.is(e.status, 2);
  t.regex(e.stderr, /--instance-id "instance-1" is not an EC2 instance id/);
});

test('seal: writes a bundle whose key decrypts under the KMS key (RSA and ECDSA); refuses a key that is not the certificate\'s', async (t) => {
  const kms = new KMSClient({ region: 'us-east-1', endpoint: cloud.endpoint, credentials: cloud.identity.admin });
  const keyId = (await kms.send(new CreateKeyCommand({}))).KeyMetadata!.KeyId!;
  const ca = createCA('seal CA');
  const leaf = issueServerCert(ca, ['seal.test']);
  for (const [n, v] of [['cert.pem', leaf.certPem], ['key.pem', leaf.keyPem], ['chain.pem', ca.certPem]]) fs.writeFileSync(path.join(dir, n), v);
  const env = { AWS_ACCESS_KEY_ID: cloud.identity.admin.accessKeyId, AWS_SECRET_ACCESS_KEY: cloud.identity.admin.secretAccessKey, AWS_REGION: 'us-east-1' };
  const out = path.join(dir, 'bundle.json');
  const r = await cli(['seal', '--certificate', path.join(dir, 'cert.pem'), '--key', path.join(dir, 'key.pem'), '--chain', path.join(dir, 'chain.pem'), '--kms-key-id', keyId, '--endpoint', cloud.endpoint, '--out', out], env);
  t.is(r.status, 0, r.stderr);
  const b = parseBundle(fs.readFileSync(out), out);
  t.is(b.encryptionMethod, 'KMS');
  t.false(fs.readFileSync(out, 'utf8').includes(leaf.keyPem.split('\n')[1]), 'no plaintext key in the bundle');
  const pt = await kms.send(new DecryptCommand({ CiphertextBlob: Buffer.from(b.encryptedPrivateKey, 'base64') }));
  t.is(Buffer.from(pt.Plaintext!).toString(), leaf.keyPem);
  // To S3 too.
  const s3 = await cli(['seal', '--certificate', path.join(dir, 'cert.pem'), '--key', path.join(dir, 'key.pem'), '--kms-key-id', keyId, '--endpoint', cloud.endpoint, '--s3', `s3://${cloud.bucket()}/bundles/seal.json`], env);
  t.is(s3.status, 0, s3.stderr);
  // An ECDSA certificate (ACM's EC_secp384r1) seals the same way.
  const ec = issueServerCert(ca, ['ec.test'], { keyType: 'ec-p384' });
  fs.writeFileSync(path.join(dir, 'ec.pem'), ec.certPem);
  fs.writeFileSync(path.join(dir, 'ec.key'), ec.keyPem);
  const ecOut = await cli(['seal', '--certificate', path.join(dir, 'ec.pem'), '--key', path.join(dir, 'ec.key'), '--kms-key-id', keyId, '--endpoint', cloud.endpoint, '--out', path.join(dir, 'ec.json')], env);
  t.is(ecOut.status, 0, ecOut.stderr);
  const ecPt = await kms.send(new DecryptCommand({ CiphertextBlob: Buffer.from(parseBundle(fs.readFileSync(path.join(dir, 'ec.json')), 'ec.json').encryptedPrivateKey, 'base64') }));
  t.is(Buffer.from(ecPt.Plaintext!).toString(), ec.keyPem);
  const other = issueServerCert(ca, ['other.test']);
  fs.writeFileSync(path.join(dir, 'other.key'), other.keyPem);
  const bad = await cli(['seal', '--certificate', path.join(dir, 'cert.pem'), '--key', path.join(dir, 'other.key'), '--kms-key-id', keyId, '--endpoint', cloud.endpoint, '--out', path.join(dir, 'x.json')], env);
  t.is(bad.status, 1);
  t.regex(bad.stderr, /other\.key is not the private key of .*cert\.pem/);
});

test('agent --check: the examples pass and list their tokens; a bad file fails with file:line:column (like nginx -t)', async (t) => {
  const ok = await cli(['agent', '--check', '--config', path.join(ROOT, 'config/acm.example.yaml')]);
  t.is(ok.status, 0, ok.stderr);
  t.regex(ok.stdout, /syntax is ok, 1 token/);
  t.regex(ok.stdout, /nginx-acm-token: Acm arn:aws:acm:.* -> NginxStanza \/etc\/pki\/nginx\/nginx-acm\.conf/);
  const bad = path.join(dir, 'bad.yaml');
  fs.writeFileSync(bad, 'options:\n  service: nginx\n  sync_interval_secs: often\n');
  const r = await cli(['agent', '--check', '--config', bad]);
  t.is(r.status, 1);
  t.regex(r.stderr, new RegExp(`${bad}:3:23: options.sync_interval_secs: expected an integer, got "often"`));
  const j = await cli(['agent', '--check', '--json', '--config', bad]);
  t.deepEqual({ ...JSON.parse(j.stdout), file: undefined, error: undefined }, { ok: false, file: undefined, line: 3, column: 23, error: undefined });
  // A key AWS's agent would ignore is ignored here too, with a warning naming its line.
  const typo = path.join(dir, 'typo.yaml');
  fs.writeFileSync(typo, 'options:\n  service: nginx\n  sync_interval: 10\n');
  const w = await cli(['agent', '--check', '--config', typo]);
  t.is(w.status, 0, w.stderr);
  t.regex(w.stderr, new RegExp(`warning: ${typo}:3: options: unknown key "sync_interval" is ignored \\(known: service, force_start`));
});

test('agent --log-format json: one JSON object a line, for log shippers; a format it does not know is refused', async (t) => {
  const missing = path.join(dir, 'no-such-acm.yaml');
  const r = await cli(['agent', '--log-format', 'json', '--config', missing]);
  t.is(r.status, 1);
  const lines = r.stderr.trim().split('\n').filter((l) => l.startsWith('{'));
  t.true(lines.length >= 1, r.stderr);
  const last = JSON.parse(lines[lines.length - 1]) as { time: string; level: string; message: string };
  t.is(last.level, 'error');
  t.true(last.message.includes(missing), last.message);
  t.false(Number.isNaN(Date.parse(last.time)));
  t.is(r.stderr.split('\n').filter((l) => l.trim() && !l.startsWith('{')).length, 0, `every line is JSON: ${r.stderr}`);
  const bad = await cli(['agent', '--log-format', 'xml']);
  t.is(bad.status, 2);
  t.regex(bad.stderr, /--log-format: expected text or json, got "xml"/);
});
