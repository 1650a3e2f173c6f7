// A local cloud for agent tests: a KMS key that only this enclave app's PCR0 may
// decrypt with, a test CA, publish() to put a sealed certificate bundle in S3, and
// an enclave controller on unix sockets under the test's directory.
import fs from 'node:fs';
import path from 'node:path';
import { KMSClient, CreateKeyCommand, EncryptCommand } from '@aws-sdk/client-kms';
import { S3Client, PutObjectCommand } from '@aws-sdk/client-s3';
import { startLocalCloud, type LocalCloud } from '../../src/local/cloud/server.ts';
import { LocalEnclaveController } from '../../src/local/local-enclave-controller.ts';
import { measureEnclaveApp, simulatedNsmRoot } from '../../enclave/nsm.ts';
import { createCA, issueServerCert } from '../../src/local/pki.ts';
import type { Endpoints } from '../../src/agent/aws.ts';

export interface TestCloud {
  cloud: LocalCloud;
  ca: { certPem: string };
  endpoints: Endpoints;
  /** Issues a certificate for `names`, seals its key under the pinned KMS key, puts the bundle at s3://bucket/key; returns the certificate. */
  publish(bucket: string, key: string, names: string[]): Promise<string>;
  /** Where an Acm source's bundle lives for this role. */
  acmKey(certificateArn: string): string;
  controller(runtimeDir?: string): LocalEnclaveController;
  stop(): Promise<void>;
}

export async function startTestCloud(dir: string): Promise<TestCloud> {
  const nsm = simulatedNsmRoot(path.join(dir, 'nsm'));
  const kmsSocket = path.join(dir, 'kms.sock');
  const cloud = await startLocalCloud({ stateDir: path.join(dir, 'state'), attestationRoots: () => [nsm.rootCert], kmsProxySocket: kmsSocket });
  const kms = new KMSClient({ region: cloud.identity.region, endpoint: cloud.endpoint, credentials: cloud.identity.admin });
  const s3 = new S3Client({ region: cloud.identity.region, endpoint: cloud.endpoint, forcePathStyle: true, credentials: cloud.identity.admin });
  const keyArn = (await kms.send(new CreateKeyCommand({ Policy: JSON.stringify({ Statement: [
    { Effect: 'Allow', Principal: { AWS: cloud.identity.admin.arn }, Action: 'kms:*' },
    { Effect: 'Allow', Principal: { AWS: cloud.identity.roleArn }, Action: 'kms:Decrypt', Condition: { StringEqualsIgnoreCase: { 'kms:RecipientAttestation:PCR0': measureEnclaveApp().pcr0.toString('hex') } } },
  ] }) }))).KeyMetadata!.Arn!;
  const ca = createCA(`test CA ${path.basename(dir)}`);
  return {
    cloud,
    ca,
    endpoints: { imds: cloud.endpoint, s3: cloud.endpoint, iam: cloud.endpoint },
    async publish(bucket, key, names) {
      const leaf = issueServerCert(ca, names);
      const ct = (await kms.send(new EncryptCommand({ KeyId: keyArn, Plaintext: Buffer.from(leaf.keyPem) }))).CiphertextBlob!;
      await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: JSON.stringify({ certificate: leaf.certPem, certificateChain: ca.certPem, encryptedPrivateKey: Buffer.from(ct).toString('base64'), encryptionMethod: 'KMS' }) }));
      return leaf.certPem;
    },
    acmKey: (arn) => `${cloud.identity.roleArn}/${arn}`,
    controller(runtimeDir = path.join(dir, 'run')) {
      fs.mkdirSync(runtimeDir, { recursive: true });
      fs.chmodSync(runtimeDir, 0o711);
      return new LocalEnclaveController({ runtimeDir, nsmDir: path.join(dir, 'nsm'), roleArn: cloud.identity.roleArn, instanceId: cloud.identity.instanceId, kmsProxySocket: kmsSocket, kmsCaFile: path.join(dir, 'state/cloud/tls-ca.pem') });
    },
    stop: () => cloud.stop(),
  };
}
