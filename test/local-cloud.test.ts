// The local cloud with the real AWS SDK v3 clients (only endpoints and credentials
// differ): IMDSv2 credentials and metadata, IAM GetRole, S3 with ETags and
// If-None-Match, KMS with key policies, and the AWS error classes.
import test from 'ava';
import fs from 'node:fs';
import crypto from 'node:crypto';
import path from 'node:path';
import { execFile } from 'node:child_process';

// curl runs beside the local cloud, which lives in this process: never synchronously.
const curl = (args: string[]) => new Promise<string>((resolve) => execFile('curl', args, { encoding: 'utf8' }, (_e, stdout) => resolve(stdout)));
import { S3Client, PutObjectCommand, GetObjectCommand, HeadObjectCommand, S3ServiceException } from '@aws-sdk/client-s3';
import { IAMClient, GetRoleCommand } from '@aws-sdk/client-iam';
import { KMSClient, CreateKeyCommand, EncryptCommand, DecryptCommand, PutKeyPolicyCommand, GetKeyPolicyCommand, KMSServiceException, NotFoundException, InvalidCiphertextException, MalformedPolicyDocumentException } from '@aws-sdk/client-kms';
import { fromInstanceMetadata } from '@aws-sdk/credential-providers';
import { startLocalCloud, type LocalCloud } from '../src/local/cloud/server.ts';
import { instanceContext } from '../src/agent/aws.ts';
import { fetchBundle } from '../src/agent/source.ts';
import { tmpdir } from './helpers/enclave.ts';

let cloud: LocalCloud;
const dir = tmpdir('cloud');
test.before(async () => { cloud = await startLocalCloud({ stateDir: dir }); });
test.after.always(async () => { await cloud?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });

const admin = () => ({ accessKeyId: cloud.identity.admin.accessKeyId, secretAccessKey: cloud.identity.admin.secretAccessKey });
const instanceCreds = () => { process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT = cloud.endpoint; return fromInstanceMetadata({ maxRetries: 0, timeout: 2000 }); };

test('IMDSv2: the SDK credential provider gets the instance role credentials', async (t) => {
  const c = await instanceCreds()();
  t.is(c.accessKeyId, cloud.identity.instance.accessKeyId);
  t.is(c.sessionToken, cloud.identity.instance.sessionToken);
  const v1 = await fetch(`${cloud.endpoint}/latest/meta-data/instance-id`);
  t.is(v1.status, 401, 'IMDSv1 (no token) is refused');
});

test('IAM GetRole returns the role with its path', async (t) => {
  const iam = new IAMClient({ region: 'us-east-1', endpoint: cloud.endpoint, credentials: instanceCreds() });
  const r = await iam.send(new GetRoleCommand({ RoleName: cloud.identity.roleName }));
  t.is(r.Role?.Arn, cloud.identity.roleArn);
  t.is(r.Role?.Path, '/nitro-acm/');
  await t.throwsAsync(iam.send(new GetRoleCommand({ RoleName: 'nope' })), { name: 'NoSuchEntityException' });
});

// The agent's own look-up (src/agent/aws.ts): the role ARN from the instance tag
// where EC2 serves tags, else from iam:GetRole, whose client it loads only then.
test('instanceContext: the role ARN from the InstanceRoleArn tag, else from iam:GetRole with its path', async (t) => {
  const tagged = await instanceContext({ imds: cloud.endpoint, iam: cloud.endpoint });
  t.deepEqual([tagged.roleArn, tagged.region, tagged.instanceId], [cloud.identity.roleArn, cloud.identity.region, cloud.identity.instanceId]);
  cloud.metadataTags = false;
  t.teardown(() => { cloud.metadataTags = true; });
  const tag = await fetch(`${cloud.endpoint}/latest/meta-data/tags/instance/InstanceRoleArn`, { headers: { 'x-aws-ec2-metadata-token': await (await fetch(`${cloud.endpoint}/latest/api/token`, { method: 'PUT', headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '60' } })).text() } });
  t.is(tag.status, 404, 'no tag served');
  const looked = await instanceContext({ imds: cloud.endpoint, iam: cloud.endpoint });
  t.is(looked.roleArn, cloud.identity.roleArn);
  t.regex(looked.roleArn, /:role\/nitro-acm\/nitro-acm-local-role$/, 'the path is kept');
  cloud.faults.iam = 'down';
  t.teardown(() => { delete cloud.faults.iam; });
  await t.throwsAsync(instanceContext({ imds: cloud.endpoint, iam: cloud.endpoint }), undefined, 'without the tag, IAM is asked');
});

test('S3: put, get, head; an unchanged object answers If-None-Match with 304; missing keys are NoSuchKey', async (t) => {
  const s3 = new S3Client({ region: 'us-east-1', endpoint: cloud.endpoint, forcePathStyle: true, credentials: instanceCreds() });
  const Bucket = cloud.bucket();
  const Key = 'arn:aws:iam::123456789012:role/x/arn:aws:acm:us-east-1:123456789012:certificate/abc';
  const put = await s3.send(new PutObjectCommand({ Bucket, Key, Body: '{"hello":1}' }));
  const got = await s3.send(new GetObjectCommand({ Bucket, Key }));
  t.is(await got.Body!.transformToString(), '{"hello":1}');
  t.is(got.ETag, put.ETag);
  t.is((await s3.send(new HeadObjectCommand({ Bucket, Key }))).ETag, put.ETag);
  const e = await t.throwsAsync(s3.send(new GetObjectCommand({ Bucket, Key, IfNoneMatch: put.ETag })));
  t.is((e as S3ServiceException).$metadata.httpStatusCode, 304);
  await t.throwsAsync(s3.send(new GetObjectCommand({ Bucket, Key: 'missing' })), { name: 'NoSuchKey' });
});

test('KMS: create, encrypt, decrypt; policies deny with AccessDeniedException; bad input gets the right exception', async (t) => {
  const kmsAdmin = new KMSClient({ region: 'us-east-1', endpoint: cloud.endpoint, credentials: admin() });
  const kmsInstance = new KMSClient({ region: 'us-east-1', endpoint: cloud.endpoint, credentials: instanceCreds() });
  const { KeyMetadata } = await kmsAdmin.send(new CreateKeyCommand({ Description: 'test' }));
  const KeyId = KeyMetadata!.KeyId!;
  const pt = crypto.randomBytes(100);
  const { CiphertextBlob } = await kmsAdmin.send(new EncryptCommand({ KeyId, Plaintext: pt }));
  t.deepEqual(Buffer.from((await kmsAdmin.send(new DecryptCommand({ CiphertextBlob }))).Plaintext!), pt);
  // The instance role is not in the default policy.
  await t.throwsAsync(kmsInstance.send(new DecryptCommand({ CiphertextBlob })), { instanceOf: KMSServiceException, name: 'AccessDeniedException', message: /not authorized to perform: kms:Decrypt/ });
  // Allow it only with an attestation condition: a plain Decrypt still fails.
  const policy = JSON.parse((await kmsAdmin.send(new GetKeyPolicyCommand({ KeyId, PolicyName: 'default' }))).Policy!);
  policy.Statement.push({ Effect: 'Allow', Principal: { AWS: cloud.identity.roleArn }, Action: 'kms:Decrypt', Resource: '*', Condition: { StringEqualsIgnoreCase: { 'kms:RecipientAttestation:PCR0': 'ab'.repeat(48) } } });
  await kmsAdmin.send(new PutKeyPolicyCommand({ KeyId, PolicyName: 'default', Policy: JSON.stringify(policy) }));
  await t.throwsAsync(kmsInstance.send(new DecryptCommand({ CiphertextBlob })), { instanceOf: KMSServiceException, name: 'AccessDeniedException' });
  await t.throwsAsync(kmsAdmin.send(new PutKeyPolicyCommand({ KeyId, PolicyName: 'default', Policy: '{"Statement":[]}' })), { instanceOf: MalformedPolicyDocumentException });
  await t.throwsAsync(kmsAdmin.send(new DecryptCommand({ CiphertextBlob: Buffer.from(CiphertextBlob!).subarray(0, 40) })), { instanceOf: InvalidCiphertextException });
  await t.throwsAsync(kmsAdmin.send(new EncryptCommand({ KeyId: 'no-such-key', Plaintext: pt })), { instanceOf: NotFoundException });
});

test.serial('KMS state persists across a restart of the local cloud', async (t) => {
  const kms = new KMSClient({ region: 'us-east-1', endpoint: cloud.endpoint, credentials: admin() });
  const { KeyMetadata } = await kms.send(new CreateKeyCommand({}));
  const { CiphertextBlob } = await kms.send(new EncryptCommand({ KeyId: KeyMetadata!.KeyId, Plaintext: Buffer.from('kept') }));
  await cloud.stop();
  cloud = await startLocalCloud({ stateDir: dir });
  const again = new KMSClient({ region: 'us-east-1', endpoint: cloud.endpoint, credentials: admin() });
  t.is(Buffer.from((await again.send(new DecryptCommand({ CiphertextBlob }))).Plaintext!).toString(), 'kept');
});

// Security finding 4 (issue 11): local mode runs as root, so the local S3 must not read or write outside its store.

/** curl with its own SigV4 signer and the instance role's credentials (which any local user can read from IMDS). */
async function signedCurl(args: string[]): Promise<{ status: number; body: string }> {
  const c = cloud.identity.instance;
  const out = await curl(['-s', '--path-as-is', '-o', '-', '-w', '\n%{http_code}', '--aws-sigv4', 'aws:amz:us-east-1:s3', '--user', `${c.accessKeyId}:${c.secretAccessKey}`, '-H', `x-amz-security-token: ${c.sessionToken}`, '-H', 'x-amz-content-sha256: UNSIGNED-PAYLOAD', ...args]);
  const lines = out.trimEnd().split('\n');
  return { status: Number(lines.pop()), body: lines.join('\n') };
}

test('4. S3 path traversal: an encoded ../ bucket reads and writes nothing outside the store, even when signed', async (t) => {
  const outside = tmpdir('cloud-outside');
  t.teardown(() => fs.rmSync(outside, { recursive: true, force: true }));
  fs.writeFileSync(path.join(outside, 'secret'), 'root only', { mode: 0o600 });
  const rel = path.relative(path.join(dir, 'cloud', 's3'), outside); // ../../../tmp/nitro-acm-cloud-outside-XXXX
  const bucket = encodeURIComponent(rel);
  const key = 'secret';
  const read = await signedCurl([`${cloud.endpoint}/${bucket}/${key}`]);
  t.is(read.status, 400, `GET refused: ${read.body}`);
  t.regex(read.body, /InvalidBucketName/);
  t.false(read.body.includes('root only'));
  const write = await signedCurl(['-X', 'PUT', '--data-binary', 'owned', `${cloud.endpoint}/${bucket}/planted`]);
  t.is(write.status, 400);
  t.deepEqual(fs.readdirSync(outside), ['secret'], 'nothing written outside the store');
  const mkBucket = await signedCurl(['-X', 'PUT', `${cloud.endpoint}/${encodeURIComponent('../../../../tmp/nitro-acm-planted')}`]);
  t.is(mkBucket.status, 400);
  t.false(fs.existsSync('/tmp/nitro-acm-planted'));
  // The same signer does reach a real bucket: the refusals above are about the names, not the signature.
  const ok = await signedCurl([`${cloud.endpoint}/${cloud.bucket()}/nothing-here`]);
  t.is(ok.status, 404);
  t.regex(ok.body, /NoSuchKey/);
});

test('4. S3, KMS and IAM verify SigV4: no signature, a wrong secret, a tampered body or a stale date are refused', async (t) => {
  const unsigned = await fetch(`${cloud.endpoint}/${cloud.bucket()}/x`);
  t.is(unsigned.status, 403);
  t.regex(await unsigned.text(), /MissingAuthenticationToken/);
  const wrong = new S3Client({ region: 'us-east-1', endpoint: cloud.endpoint, forcePathStyle: true, credentials: { ...admin(), secretAccessKey: 'not-the-secret' } });
  await t.throwsAsync(wrong.send(new GetObjectCommand({ Bucket: cloud.bucket(), Key: 'x' })), { name: 'SignatureDoesNotMatch' });
  const kmsWrong = new KMSClient({ region: 'us-east-1', endpoint: cloud.endpoint, credentials: { ...admin(), secretAccessKey: 'not-the-secret' } });
  await t.throwsAsync(kmsWrong.send(new CreateKeyCommand({})), { message: /signature we calculated does not match/ });
  const noToken = new KMSClient({ region: 'us-east-1', endpoint: cloud.endpoint, credentials: { accessKeyId: cloud.identity.instance.accessKeyId, secretAccessKey: cloud.identity.instance.secretAccessKey } });
  await t.throwsAsync(noToken.send(new CreateKeyCommand({})), { message: /security token included in the request is invalid/ });
  // A signed request replayed with another body: the signature covers the body's hash.
  const c = cloud.identity.admin;
  const tampered = await curl(['-s', '-o', '-', '-w', '\n%{http_code}', '--aws-sigv4', 'aws:amz:us-east-1:kms', '--user', `${c.accessKeyId}:${c.secretAccessKey}`, '-H', 'x-amz-target: TrentService.CreateKey', '-H', 'content-type: application/x-amz-json-1.1', '-H', 'x-amz-content-sha256: ' + crypto.createHash('sha256').update('{}').digest('hex'), '--data-binary', '{"Description":"x"}', cloud.endpoint]);
  const good = await curl(['-s', '-o', '-', '-w', '\n%{http_code}', '--aws-sigv4', 'aws:amz:us-east-1:kms', '--user', `${c.accessKeyId}:${c.secretAccessKey}`, '-H', 'x-amz-target: TrentService.CreateKey', '-H', 'content-type: application/x-amz-json-1.1', '--data-binary', '{"Description":"x"}', cloud.endpoint]);
  t.regex(good, /\n200$/, `curl's own signature is accepted: ${good}`);
  t.regex(tampered, /\n403$/, `a body other than the one signed is refused: ${tampered}`);
  // A request signed 20 minutes ago.
  const stale = new KMSClient({ region: 'us-east-1', endpoint: cloud.endpoint, credentials: admin(), systemClockOffset: -20 * 60 * 1000 });
  await t.throwsAsync(stale.send(new CreateKeyCommand({})), { message: /request time .* too large|RequestTimeTooSkewed|Signature expired/i });
});

// The agent's S3 client resolves its middleware once (cacheMiddleware: a fifth
// less CPU per poll); credentials near their expiry must still be asked for
// again, so that the role's rotated credentials are the ones used.
test('fetchBundle: polls with If-None-Match; every request signs with the credentials the provider gives now', async (t) => {
  const ctx = await instanceContext({ imds: cloud.endpoint, iam: cloud.endpoint, s3: cloud.endpoint });
  const s3 = new S3Client({ region: 'us-east-1', endpoint: cloud.endpoint, forcePathStyle: true, credentials: admin() });
  await s3.send(new PutObjectCommand({ Bucket: cloud.bucket(), Key: 'poll/x.json', Body: 'not a bundle' }));
  const real = ctx.credentials;
  let calls = 0, wrong = false;
  // Credentials a minute from expiry: the SDK asks its provider again before each request.
  const counted = { ...ctx, credentials: async () => { calls++; const c = { ...(await real()), expiration: new Date(Date.now() + 60_000) }; return wrong ? { ...c, secretAccessKey: 'not-the-secret' } : c; } };
  const source = { S3: { uri: `s3://${cloud.bucket()}/poll/x.json` } };
  const first = await fetchBundle(source, counted).catch((e: Error) => e);
  t.regex(String(first), /s3:\/\/\S+\/poll\/x\.json: not JSON/, 'fetched and parsed (the body is no bundle)');
  const etag = (await s3.send(new HeadObjectCommand({ Bucket: cloud.bucket(), Key: 'poll/x.json' }))).ETag!;
  for (let i = 0; i < 3; i++) t.deepEqual(await fetchBundle(source, counted, etag), { changed: false, etag });
  t.true(calls >= 4, `the provider was asked ${calls} times for 4 requests`);
  wrong = true;
  await t.throwsAsync(fetchBundle(source, counted, etag), { message: /SignatureDoesNotMatch/ }, 'credentials changed after the first requests are used');
});
