// A local cloud for agent tests: a KMS key that only this enclave app's PCR0 may
// decrypt with, a test CA, publish() to put a sealed certificate bundle in S3, and
// an enclave controller on unix sockets under the test's directory.
import fs from 'node:fs';
import path from 'node:path';
import { KMSClient, CreateKeyCommand, EncryptCommand } from '@aws-sdk/client-kms';
import { S3Client, PutObjectCommand } from '@aws-sdk/client-s3';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startLocalCloud, type LocalCloud, type LocalCloudOptions } from '../../src/local/cloud/server.ts';
import { LocalEnclaveController, type LocalEnclaveControllerOptions } from '../../src/local/local-enclave-controller.ts';
import { measureEnclaveApp, simulatedNsmRoot } from '../../enclave/nsm-simulated.ts';
import { createCA, issueServerCert, type CertAuthority } from '../../src/local/pki.ts';
import type { Endpoints } from '../../src/agent/aws.ts';

export interface TestCloud {
  cloud: LocalCloud;
  ca: CertAuthority;
  endpoints: Endpoints;
  /** Issues a certificate for `names`, seals its key under the pinned KMS key (or kmsKeyArn), puts the bundle at s3://bucket/key; returns the certificate. */
  publish(bucket: string, key: string, names: string[], kmsKeyArn?: string): Promise<string>;
  /** A KMS key whose policy lets the instance role decrypt only from an enclave with this PCR0. */
  createKey(pcr0Hex: string): Promise<string>;
  /** A KMS key with the admin's kms:* and these statements for the instance role (Principal filled in). */
  createKeyWithRoleStatements(statements: Record<string, unknown>[]): Promise<string>;
  /** A bundle (JSON) of this certificate and this private key, the key sealed under the pinned KMS key (or kmsKeyArn). */
  seal(certPem: string, keyPem: string, kmsKeyArn?: string): Promise<string>;
  /** Puts any bytes at s3://bucket/key. */
  put(bucket: string, key: string, body: string): Promise<void>;
  /** Where an Acm source's bundle lives for this role. */
  acmKey(certificateArn: string): string;
  controller(runtimeDir?: string): LocalEnclaveController;
  /** The same controller's options (for an agent in another process). */
  controllerOptions(runtimeDir?: string): LocalEnclaveControllerOptions;
  stop(): Promise<void>;
}

/** The local cloud's options for a test cloud in `dir` (the same in this process or a child's). */
export function testCloudOptions(dir: string): LocalCloudOptions {
  const nsm = simulatedNsmRoot(path.join(dir, 'nsm'));
  return { stateDir: path.join(dir, 'state'), attestationRoots: () => [nsm.rootCert], kmsProxySocket: path.join(dir, 'kms.sock') };
}

/** The cloud's server in a child process: its faults cannot be set from here. */
async function startCloudProcess(dir: string): Promise<LocalCloud> {
  const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), fileURLToPath(new URL('./cloud-process.ts', import.meta.url)), dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d; if (out.includes('\n')) resolve(out.split('\n')[0]); });
    child.once('exit', (code) => reject(new Error(`the test cloud's process exited (${code}) before it listened`)));
  });
  const c = JSON.parse(line) as Omit<LocalCloud, 'bucket' | 'stop' | 'faults'> & { bucket: string };
  return {
    ...c,
    faults: Object.freeze({}), // the child's are out of reach: setting one here throws
    bucket: () => c.bucket,
    stop: () => new Promise<void>((resolve) => { if (child.exitCode !== null) resolve(); else { child.once('exit', () => resolve()); child.kill('SIGTERM'); } }),
  };
}

/** A test cloud in `dir`; with process 'child' its server runs in a process of its own (benchmarks). */
export async function startTestCloud(dir: string, o: { process?: 'same' | 'child' } = {}): Promise<TestCloud> {
  const options = testCloudOptions(dir);
  const kmsSocket = options.kmsProxySocket!;
  const cloud = o.process === 'child' ? await startCloudProcess(dir) : await startLocalCloud(options);
  const kms = new KMSClient({ region: cloud.identity.region, endpoint: cloud.endpoint, credentials: cloud.identity.admin });
  const s3 = new S3Client({ region: cloud.identity.region, endpoint: cloud.endpoint, forcePathStyle: true, credentials: cloud.identity.admin });
  const createKey = async (pcr0Hex: string) => (await kms.send(new CreateKeyCommand({ Policy: JSON.stringify({ Statement: [
    { Effect: 'Allow', Principal: { AWS: cloud.identity.admin.arn }, Action: 'kms:*' },
    { Effect: 'Allow', Principal: { AWS: cloud.identity.roleArn }, Action: 'kms:GetKeyPolicy' },
    { Effect: 'Allow', Principal: { AWS: cloud.identity.roleArn }, Action: 'kms:Decrypt', Condition: { StringEqualsIgnoreCase: { 'kms:RecipientAttestation:PCR0': pcr0Hex } } },
  ] }) }))).KeyMetadata!.Arn!;
  const keyArn = await createKey(measureEnclaveApp().pcr0.toString('hex'));
  const controllerOptions = (runtimeDir = path.join(dir, 'run')): LocalEnclaveControllerOptions => {
    fs.mkdirSync(runtimeDir, { recursive: true });
    fs.chmodSync(runtimeDir, 0o711);
    return { runtimeDir, nsmDir: path.join(dir, 'nsm'), roleArn: cloud.identity.roleArn, instanceId: cloud.identity.instanceId, kmsProxySocket: kmsSocket, kmsCaFile: path.join(dir, 'state/cloud/tls-ca.pem') };
  };
  const seal = async (certPem: string, keyPem: string, kmsKeyArn = keyArn) => {
    const ct = (await kms.send(new EncryptCommand({ KeyId: kmsKeyArn, Plaintext: Buffer.from(keyPem) }))).CiphertextBlob!;
    return JSON.stringify({ certificate: certPem, certificateChain: ca.certPem, encryptedPrivateKey: Buffer.from(ct).toString('base64'), encryptionMethod: 'KMS' });
  };
  const put = async (bucket: string, key: string, body: string) => { await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body })); };
  const ca = createCA(`test CA ${path.basename(dir)}`);
  return {
    cloud,
    ca,
    endpoints: { imds: cloud.endpoint, s3: cloud.endpoint, iam: cloud.endpoint, kms: cloud.endpoint },
    async publish(bucket, key, names, kmsKeyArn) {
      const leaf = issueServerCert(ca, names);
      await put(bucket, key, await seal(leaf.certPem, leaf.keyPem, kmsKeyArn));
      return leaf.certPem;
    },
    seal,
    createKey,
    async createKeyWithRoleStatements(statements) {
      return (await kms.send(new CreateKeyCommand({ Policy: JSON.stringify({ Statement: [
        { Effect: 'Allow', Principal: { AWS: cloud.identity.admin.arn }, Action: 'kms:*' },
        ...statements.map((st) => ({ Effect: 'Allow', Principal: { AWS: cloud.identity.roleArn }, ...st })),
      ] }) }))).KeyMetadata!.Arn!;
    },
    put,
    acmKey: (arn) => `${cloud.identity.roleArn}/${arn}`,
    controller: (runtimeDir) => new LocalEnclaveController(controllerOptions(runtimeDir)),
    controllerOptions,
    stop: () => cloud.stop(),
  };
}
