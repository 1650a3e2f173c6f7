// The agent as a service: started from an acm.yaml file, it serves the token;
// a broken edit is reported with its line and column and ignored while the token
// keeps serving; a valid edit adding a token is applied without a restart.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { KMSClient, CreateKeyCommand, EncryptCommand } from '@aws-sdk/client-kms';
import { S3Client, PutObjectCommand } from '@aws-sdk/client-s3';
import { startLocalCloud, type LocalCloud } from '../src/local/cloud/server.ts';
import { LocalEnclaveController } from '../src/local/local-enclave-controller.ts';
import { startService } from '../src/agent/service.ts';
import { measureEnclaveApp, simulatedNsmRoot } from '../enclave/nsm.ts';
import { createCA, issueServerCert } from '../src/local/pki.ts';
import { tmpdir } from './helpers/enclave.ts';

const dir = tmpdir('service');
fs.chmodSync(dir, 0o755);
let cloud: LocalCloud;
test.before(async () => {
  const nsm = simulatedNsmRoot(path.join(dir, 'nsm'));
  cloud = await startLocalCloud({ stateDir: path.join(dir, 'state'), attestationRoots: () => [nsm.rootCert], kmsProxySocket: path.join(dir, 'kms.sock') });
});
test.after.always(async () => { await cloud?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });

test('service: serves acm.yaml, ignores a broken edit, applies a valid one', async (t) => {
  const kms = new KMSClient({ region: 'us-east-1', endpoint: cloud.endpoint, credentials: cloud.identity.admin });
  const s3 = new S3Client({ region: 'us-east-1', endpoint: cloud.endpoint, forcePathStyle: true, credentials: cloud.identity.admin });
  const keyArn = (await kms.send(new CreateKeyCommand({ Policy: JSON.stringify({ Statement: [
    { Effect: 'Allow', Principal: { AWS: cloud.identity.admin.arn }, Action: 'kms:*' },
    { Effect: 'Allow', Principal: { AWS: cloud.identity.roleArn }, Action: 'kms:Decrypt', Condition: { StringEqualsIgnoreCase: { 'kms:RecipientAttestation:PCR0': measureEnclaveApp().pcr0.toString('hex') } } },
  ] }) }))).KeyMetadata!.Arn!;
  const ca = createCA('service CA');
  for (const name of ['one', 'two']) {
    const leaf = issueServerCert(ca, [`${name}.test`]);
    const ct = (await kms.send(new EncryptCommand({ KeyId: keyArn, Plaintext: Buffer.from(leaf.keyPem) }))).CiphertextBlob!;
    await s3.send(new PutObjectCommand({ Bucket: cloud.bucket(), Key: `${name}.json`, Body: JSON.stringify({ certificate: leaf.certPem, certificateChain: ca.certPem, encryptedPrivateKey: Buffer.from(ct).toString('base64'), encryptionMethod: 'KMS' }) }));
  }
  const etc = path.join(dir, 'etc');
  fs.mkdirSync(etc);
  const file = path.join(dir, 'acm.yaml');
  const tokenYaml = (name: string) => `  - label: ${name}\n    source:\n      S3:\n        uri: "s3://${cloud.bucket()}/${name}.json"\n    target:\n      NginxStanza:\n        path: ${etc}/${name}.conf\n`;
  fs.writeFileSync(file, `log:\n  level: info\ntokens:\n${tokenYaml('one')}`);
  let reloads = 0;
  const service = await startService({
    configFile: file,
    controller: () => new LocalEnclaveController({ runtimeDir: path.join(dir, 'run'), nsmDir: path.join(dir, 'nsm'), roleArn: cloud.identity.roleArn, instanceId: cloud.identity.instanceId, kmsProxySocket: path.join(dir, 'kms.sock'), kmsCaFile: path.join(dir, 'state/cloud/tls-ca.pem') }),
    endpoints: { imds: cloud.endpoint, s3: cloud.endpoint, iam: cloud.endpoint },
    reload: async () => { reloads++; },
  });
  t.teardown(async () => { await service.stop(); await service.agent.stop(); });
  t.is(service.agent.tokens.get('one')!.state, 'serving');
  t.true(fs.existsSync(`${etc}/one.conf`));
  t.is(reloads, 1);

  // A broken edit: reported, ignored, nothing stops.
  const stderr: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  (process.stderr as unknown as { write: (s: string) => boolean }).write = (s: string) => { stderr.push(String(s)); return write(s); };
  t.teardown(() => { (process.stderr as unknown as { write: typeof write }).write = write; });
  fs.writeFileSync(file, `tokens:\n${tokenYaml('one')}    pin: 12\n`);
  const until = Date.now() + 10_000;
  while (!stderr.join('').includes('edit is ignored') && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
  await service.idle();
  t.regex(stderr.join(''), new RegExp(`${file}:9:10: tokens\\[0\\]\\.pin: 2 bytes; a PIN is 4 to 64 bytes; the edit is ignored and everything keeps serving`));
  t.is(service.agent.tokens.get('one')!.state, 'serving');

  // A valid edit adding a token: applied without a restart.
  fs.writeFileSync(file, `tokens:\n${tokenYaml('one')}${tokenYaml('two')}`);
  const until2 = Date.now() + 15_000;
  while (service.agent.tokens.get('two')?.state !== 'serving' && Date.now() < until2) await new Promise((r) => setTimeout(r, 100));
  await service.idle();
  t.is(service.agent.tokens.get('two')?.state, 'serving');
  t.true(fs.existsSync(`${etc}/two.conf`));
  t.is(service.agent.tokens.get('one')!.state, 'serving');
  t.is(reloads, 2);
});
