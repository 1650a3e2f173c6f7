// nitro-acm local: the whole key path on one machine, for trying nitro-acm and
// for development. A demo CA and a certificate for localhost (made on the first
// run and kept in the state directory), the enclave app holding the key, the
// PKCS#11 module registered with p11-kit, and nginx serving https://localhost:PORT
// with ssl_engine pkcs11 and the stanza nitro-acm writes. Ctrl-C stops it all;
// files are left in place (nothing is deleted on stop).
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { log } from '../shared/log.ts';
import { render } from '../templates.ts';
import { createCA, issueServerCert } from './pki.ts';
import { S3Client, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { KMSClient, CreateKeyCommand, EncryptCommand, PutKeyPolicyCommand } from '@aws-sdk/client-kms';
import { startLocalCloud, type LocalCloud } from './cloud/server.ts';
import { measureEnclaveApp, simulatedNsmRoot } from '../../enclave/nsm.ts';
import { pcrOf } from '../shared/pcr.ts';
import type { Bundle } from '../shared/bundle.ts';
import { registerWithP11Kit } from './p11kit.ts';
import { handshake, fingerprintOf, launchNginx } from './webservers.ts';
import { writeAtomic } from '../agent/targets.ts';
import { Agent } from '../agent/agent.ts';
import { parseConfig } from '../agent/config.ts';
import { LocalEnclaveController } from './local-enclave-controller.ts';

export interface LocalOptions {
  port: number;
  stateDir: string;
  runtimeDir: string;
  /** Resolve once serving instead of waiting for a signal (tests). */
  detach?: boolean;
}

export interface LocalRun {
  caFile: string;
  url: string;
  curl: string;
  stop(): Promise<void>;
}

const LABEL = 'localhost';

const DEMO_CERT_ARN = 'arn:aws:acm:us-east-1:123456789012:certificate/nitro-acm-local-demo';

/**
 * The demo CA (kept, to issue renewals) and a certificate for localhost whose
 * private key is sealed into the local S3 under the local KMS key right away and
 * never written to disk: from then on only the enclave app can decrypt it.
 */
async function demoBundle(stateDir: string, cloud: LocalCloud, kmsKeyArn: string): Promise<{ caFile: string; certPem: string }> {
  fs.mkdirSync(stateDir, { recursive: true });
  fs.chmodSync(stateDir, 0o700);
  const caFile = path.join(stateDir, 'demo-ca.pem');
  const caKey = path.join(stateDir, 'demo-ca.key');
  if (!fs.existsSync(caFile) || !fs.existsSync(caKey)) {
    // A name of its own per machine: two demo CAs with one name confuse clients that trust the other.
    const ca = createCA(`nitro-acm local demo CA ${crypto.randomBytes(4).toString('hex')}`);
    writeAtomic(caKey, ca.keyPem, 0o600);
    writeAtomic(caFile, ca.certPem, 0o644);
    log.info(`first run: created a demo CA in ${caFile}`);
  }
  const ctx = { partition: cloud.identity.partition, region: cloud.identity.region, roleArn: cloud.identity.roleArn };
  const key = `${ctx.roleArn}/${DEMO_CERT_ARN}`;
  const s3 = new S3Client({ region: ctx.region, endpoint: cloud.endpoint, forcePathStyle: true, credentials: cloud.identity.admin });
  try {
    const existing = await s3.send(new GetObjectCommand({ Bucket: cloud.bucket(), Key: key }));
    const b = JSON.parse(await existing.Body!.transformToString()) as { certificate: string };
    if (new Date(new crypto.X509Certificate(b.certificate).validTo).getTime() > Date.now() + 86400_000) return { caFile, certPem: b.certificate };
  } catch { /* not sealed yet, or expiring: seal a new one */ }
  const ca = { name: 'demo CA', certPem: fs.readFileSync(caFile, 'utf8'), keyPem: fs.readFileSync(caKey, 'utf8') };
  const leaf = issueServerCert(ca, ['localhost', '127.0.0.1']);
  const kms = new KMSClient({ region: ctx.region, endpoint: cloud.endpoint, credentials: cloud.identity.admin });
  const ct = (await kms.send(new EncryptCommand({ KeyId: kmsKeyArn, Plaintext: Buffer.from(leaf.keyPem) }))).CiphertextBlob!;
  const bundle: Bundle = { certificate: leaf.certPem, certificateChain: ca.certPem, encryptedPrivateKey: Buffer.from(ct).toString('base64'), encryptionMethod: 'KMS' };
  await s3.send(new PutObjectCommand({ Bucket: cloud.bucket(), Key: key, Body: JSON.stringify(bundle) }));
  log.token(LABEL).info(`issued a certificate for localhost and sealed its key into s3://${cloud.bucket()}/${key}`);
  return { caFile, certPem: leaf.certPem };
}

/** The local KMS key; its policy lets the instance role decrypt only from an enclave whose PCR0 is this code's. */
async function demoKmsKey(stateDir: string, cloud: LocalCloud): Promise<string> {
  const kms = new KMSClient({ region: cloud.identity.region, endpoint: cloud.endpoint, credentials: cloud.identity.admin });
  const file = path.join(stateDir, 'kms-key-arn');
  let arn = fs.existsSync(file) ? fs.readFileSync(file, 'utf8').trim() : '';
  const pcr0 = measureEnclaveApp().pcr0.toString('hex');
  const policy = JSON.stringify({
    Version: '2012-10-17',
    Statement: [
      { Sid: 'Administration', Effect: 'Allow', Principal: { AWS: cloud.identity.admin.arn }, Action: 'kms:*', Resource: '*' },
      { Sid: 'Enclave decrypts, attested', Effect: 'Allow', Principal: { AWS: cloud.identity.roleArn }, Action: 'kms:Decrypt', Resource: '*', Condition: { StringEqualsIgnoreCase: { 'kms:RecipientAttestation:PCR0': pcr0, 'kms:RecipientAttestation:PCR3': pcrOf(cloud.identity.roleArn).toString('hex') } } },
    ],
  });
  if (!arn) {
    arn = (await kms.send(new CreateKeyCommand({ Description: 'nitro-acm local demo', Policy: policy }))).KeyMetadata!.Arn!;
    writeAtomic(file, arn, 0o600);
  } else {
    // The enclave app's code may have changed since the last run: pin today's PCR0, as an operator would after an upgrade.
    await kms.send(new PutKeyPolicyCommand({ KeyId: arn, PolicyName: 'default', Policy: policy }));
  }
  log.info(`KMS key ${arn}: decrypt only by ${cloud.identity.roleArn} from an enclave with PCR0 ${pcr0.slice(0, 16)}...`);
  return arn;
}

export async function runLocal(o: LocalOptions): Promise<LocalRun> {
  log.warn('LOCAL MODE: for trying nitro-acm and for development only; the "enclave" is an ordinary process here');
  fs.mkdirSync(o.runtimeDir, { recursive: true });
  // nginx workers run as another user and must reach the key socket and read the chain.
  fs.chmodSync(o.runtimeDir, 0o711);
  for (let d = path.dirname(o.runtimeDir); d !== path.dirname(d); d = path.dirname(d)) {
    if ((fs.statSync(d).mode & 0o001) === 0) {
      throw new Error(`--runtime-dir ${o.runtimeDir}: ${d} cannot be entered by other users (the web server's workers); choose a directory outside it`);
    }
  }
  const nsmDir = path.join(o.stateDir, 'nsm-sim');
  const nsmRoot = simulatedNsmRoot(nsmDir);
  const kmsProxy = path.join(o.runtimeDir, 'kms-proxy.sock');
  const cloud = await startLocalCloud({ stateDir: o.stateDir, attestationRoots: () => [nsmRoot.rootCert], kmsProxySocket: kmsProxy });
  // Whatever fails from here on, nothing started is left running.
  const started: (() => Promise<void>)[] = [() => cloud.stop()];
  const undo = async () => { for (const f of started.reverse()) await f().catch(() => {}); };
  try {
    return await serve(o, cloud, nsmDir, kmsProxy, started);
  } catch (e) {
    await undo();
    throw e;
  }
}

async function serve(o: LocalOptions, cloud: LocalCloud, nsmDir: string, kmsProxy: string, started: (() => Promise<void>)[]): Promise<LocalRun> {
  const kmsKeyArn = await demoKmsKey(o.stateDir, cloud);
  const m = await demoBundle(o.stateDir, cloud, kmsKeyArn);

  // The agent does the rest as in production: IMDS, S3, the enclave, KMS with
  // attestation, the challenge signature, the stanza, chain and PIN files.
  const controller = new LocalEnclaveController({ runtimeDir: o.runtimeDir, nsmDir, roleArn: cloud.identity.roleArn, instanceId: cloud.identity.instanceId, kmsProxySocket: kmsProxy, kmsCaFile: path.join(o.stateDir, 'cloud/tls-ca.pem') });
  const config = parseConfig(`
tokens:
  - label: ${LABEL}
    source:
      Acm:
        certificate_arn: "${DEMO_CERT_ARN}"
    target:
      NginxStanza:
        path: ${path.join(o.runtimeDir, `${LABEL}.conf`)}
`, 'local mode configuration');
  const agent = new Agent({ config, enclave: controller, endpoints: { imds: cloud.endpoint, s3: cloud.endpoint, iam: cloud.endpoint }, reload: async () => { /* nginx starts after */ } });
  started.push(() => agent.stop());
  await agent.start();
  const token = agent.tokens.get(LABEL)!;
  if (token.state !== 'serving') throw new Error(`token ${LABEL} could not be provisioned: ${token.error}`);
  const enclave = controller.process!;
  const address = agent.enclaveEndpoints!.keyAddress;
  log.info(`enclave app up (pid ${enclave.proc.pid}) on ${address}`);
  const moduleFile = registerWithP11Kit(address);
  log.info(`PKCS#11 module registered with p11-kit in ${moduleFile}`);
  const stanza = path.join(o.runtimeDir, `${LABEL}.conf`);

  const prefix = path.join(o.runtimeDir, 'nginx');
  fs.mkdirSync(path.join(prefix, 'tmp'), { recursive: true });
  const conf = path.join(prefix, 'nginx.conf');
  writeAtomic(conf, render('local/nginx.conf', { PREFIX: prefix, PORT: String(o.port), STANZA: stanza }), 0o644);
  const nginx = await launchNginx({ prefix, conf, port: o.port }).catch((e: Error) => {
    throw new Error(`${e.message}\n(is port ${o.port} taken? --port chooses another)`);
  });
  started.push(() => nginx.stop());
  const caPem = fs.readFileSync(m.caFile, 'utf8');
  const want = fingerprintOf(m.certPem);
  const h = await handshake(o.port, { servername: 'localhost', ca: caPem, timeoutMs: 10_000 }).catch((e: Error) => {
    throw new Error(`nginx is not serving the demo certificate on port ${o.port}: ${e.message} (see ${path.join(prefix, 'error.log')})`);
  });
  if (h.fingerprint256 !== want) throw new Error(`port ${o.port} serves another certificate (${h.subjectCN}): is another server listening there? --port chooses another`);
  const url = `https://localhost:${o.port}/`;
  const curl = `curl --cacert ${m.caFile} ${url}`;
  log.token(LABEL).info(`serving ${url} with the key in the enclave app (nginx pid ${nginx.pid})`);
  // If this process goes away without stop() (an uncaught error, process.exit), take the children along.
  const orphanGuard = () => { nginx.proc.kill('SIGQUIT'); enclave.proc.kill('SIGTERM'); };
  process.once('exit', orphanGuard);
  const stop = async () => {
    process.removeListener('exit', orphanGuard);
    for (const f of started.reverse()) await f().catch(() => {});
    log.info('local mode stopped; files are kept in ' + o.runtimeDir);
  };
  return { caFile: m.caFile, url, curl, stop };
}
