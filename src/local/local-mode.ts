// nitro-acm local: the whole key path on one machine, for trying nitro-acm and
// for development. A demo CA and a certificate for localhost (made on the first
// run and kept in the state directory) sealed into the local S3, the agent service
// as in production (its acm.yaml generated in the runtime directory, its control
// socket there too), the enclave app holding the key, the PKCS#11 module
// registered with p11-kit, and nginx (or httpd) serving https://localhost:PORT
// with the files nitro-acm writes. `renew` issues a new certificate into S3 and
// lets the agent roll it out. Ctrl-C stops it all; files are left in place.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { log } from '../../shared/log.ts';
import { render } from '../templates.ts';
import { createCA, issueServerCert, type LeafOptions } from './pki.ts';
import { certificateFacts } from '../agent/token-status.ts';
import { S3Client, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { KMSClient, CreateKeyCommand, EncryptCommand, PutKeyPolicyCommand } from '@aws-sdk/client-kms';
import { startLocalCloud, type LocalCloud } from './cloud/server.ts';
import { measureEnclaveApp, simulatedNsmRoot } from '../../enclave/nsm-simulated.ts';
import { pcrOf } from '../../shared/pcr.ts';
import type { Bundle } from '../../shared/bundle.ts';
import { registerWithP11Kit } from './p11kit.ts';
import { handshake, fingerprintOf, launchNginx, startHttpd, nginxMainLine, type RunningServer, freePort } from './webservers.ts';
import { writeAtomic } from '../agent/targets.ts';
import { startService, type RunningService } from '../agent/service.ts';
import { LocalEnclaveController } from './local-enclave-controller.ts';
import { ControlError, type RenewReport } from '../agent/control.ts';
import type { OpenSslPath } from '../agent/openssl-path.ts';

export interface LocalOptions {
  port: number;
  stateDir: string;
  runtimeDir: string;
  /** The web server (default nginx). */
  server?: 'nginx' | 'httpd';
  /** How the web server's OpenSSL reaches the keys (default engine, options.openssl). */
  openssl?: OpenSslPath;
  /** The demo certificate's key (default rsa-2048). */
  keyType?: DemoKeyType;
}

/** The key types ACM issues certificates with, as `--key-type` names them. */
export const DEMO_KEY_TYPES = ['rsa-2048', 'rsa-4096', 'ec-p256', 'ec-p384'] as const;
export type DemoKeyType = (typeof DEMO_KEY_TYPES)[number];
const leafOptions = (k: DemoKeyType): LeafOptions => (k.startsWith('rsa') ? { keyType: 'rsa', bits: Number(k.slice(4)) } : { keyType: k as 'ec-p256' | 'ec-p384' });
/** As nitro-acm status shows a certificate's key: RSA-2048, EC-P256. */
const shownAs = (k: DemoKeyType) => k.toUpperCase();

export type RenewResult = RenewReport;

export interface LocalRun {
  caFile: string;
  url: string;
  curl: string;
  controlSocket: string;
  service: RunningService;
  server: RunningServer;
  /** Issues a new certificate for the token into S3 and waits until the web server serves it. */
  renew(label: string): Promise<RenewResult>;
  stop(): Promise<void>;
}

const LABEL = 'localhost';

const DEMO_CERT_ARN = 'arn:aws:acm:us-east-1:123456789012:certificate/nitro-acm-local-demo';

interface DemoCA { caFile: string; caKeyFile: string }

function demoCA(stateDir: string): DemoCA {
  fs.mkdirSync(stateDir, { recursive: true });
  fs.chmodSync(stateDir, 0o700);
  const caFile = path.join(stateDir, 'demo-ca.pem');
  const caKeyFile = path.join(stateDir, 'demo-ca.key');
  if (!fs.existsSync(caFile) || !fs.existsSync(caKeyFile)) {
    // A name of its own per machine: two demo CAs with one name confuse clients that trust the other.
    const ca = createCA(`nitro-acm local demo CA ${crypto.randomBytes(4).toString('hex')}`);
    writeAtomic(caKeyFile, ca.keyPem, 0o600);
    writeAtomic(caFile, ca.certPem, 0o644);
    log.info(`first run: created a demo CA in ${caFile}`);
  }
  return { caFile, caKeyFile };
}

const s3Key = (cloud: LocalCloud) => `${cloud.identity.roleArn}/${DEMO_CERT_ARN}`;

/**
 * Issues a certificate for localhost from the demo CA and seals its private key
 * into the local S3 under the local KMS key at once; the key is never written to
 * disk: from then on only the enclave app can decrypt it.
 */
async function sealDemoCertificate(ca: DemoCA, cloud: LocalCloud, kmsKeyArn: string, keyType: DemoKeyType): Promise<string> {
  const caPem = fs.readFileSync(ca.caFile, 'utf8');
  const leaf = issueServerCert({ name: 'demo CA', certPem: caPem, keyPem: fs.readFileSync(ca.caKeyFile, 'utf8') }, ['localhost', '127.0.0.1'], leafOptions(keyType));
  const kms = new KMSClient({ region: cloud.identity.region, endpoint: cloud.endpoint, credentials: cloud.identity.admin });
  const ct = (await kms.send(new EncryptCommand({ KeyId: kmsKeyArn, Plaintext: Buffer.from(leaf.keyPem) }))).CiphertextBlob!;
  const bundle: Bundle = { certificate: leaf.certPem, certificateChain: caPem, encryptedPrivateKey: Buffer.from(ct).toString('base64'), encryptionMethod: 'KMS' };
  await s3Client(cloud).send(new PutObjectCommand({ Bucket: cloud.bucket(), Key: s3Key(cloud), Body: JSON.stringify(bundle) }));
  log.token(LABEL).info(`issued a certificate for localhost (${shownAs(keyType)}, serial ${new crypto.X509Certificate(leaf.certPem).serialNumber}) and sealed its key into s3://${cloud.bucket()}/${s3Key(cloud)}`);
  return leaf.certPem;
}

const s3Client = (cloud: LocalCloud) => new S3Client({ region: cloud.identity.region, endpoint: cloud.endpoint, forcePathStyle: true, credentials: cloud.identity.admin });

/** The sealed demo certificate in S3 from an earlier run, or a new one if there is none or it expires within a day. */
async function demoBundle(ca: DemoCA, cloud: LocalCloud, kmsKeyArn: string, keyType: DemoKeyType): Promise<void> {
  try {
    const existing = await s3Client(cloud).send(new GetObjectCommand({ Bucket: cloud.bucket(), Key: s3Key(cloud) }));
    const b = JSON.parse(await existing.Body!.transformToString()) as { certificate: string };
    const fresh = new Date(new crypto.X509Certificate(b.certificate).validTo).getTime() > Date.now() + 86400_000;
    if (fresh && certificateFacts(b.certificate).keyType === shownAs(keyType)) return;
  } catch { /* not sealed yet */ }
  await sealDemoCertificate(ca, cloud, kmsKeyArn, keyType);
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
      // nitro-acm assess reads the policy to list the PCRs it binds.
      { Sid: 'The instance reads this policy', Effect: 'Allow', Principal: { AWS: cloud.identity.roleArn }, Action: 'kms:GetKeyPolicy', Resource: '*' },
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
  const ca = demoCA(o.stateDir);
  const keyType = o.keyType ?? 'rsa-2048';
  await demoBundle(ca, cloud, kmsKeyArn, keyType);
  const serverKind = o.server ?? 'nginx';

  // The agent service does the rest as in production: IMDS, S3, the enclave, KMS
  // with attestation, the challenge signature, the stanza, chain and PIN files;
  // then it polls, re-attests, restarts a dead enclave and applies edits of acm.yaml.
  const controller = new LocalEnclaveController({ runtimeDir: o.runtimeDir, nsmDir, roleArn: cloud.identity.roleArn, instanceId: cloud.identity.instanceId, kmsProxySocket: kmsProxy, kmsCaFile: path.join(o.stateDir, 'cloud/tls-ca.pem') });
  const target = serverKind === 'nginx' ? `NginxStanza:\n        path: ${path.join(o.runtimeDir, `${LABEL}.conf`)}` : `Conf:\n        path: ${path.join(o.runtimeDir, `${LABEL}-httpd.conf`)}`;
  const configFile = path.join(o.runtimeDir, 'acm.yaml');
  const openssl = o.openssl ?? 'engine';
  const opensslConf = path.join(o.runtimeDir, 'openssl-provider.cnf');
  // Local mode shows its metrics: on loopback, a port nothing else holds.
  const metrics = `127.0.0.1:${await freePort()}`;
  writeAtomic(configFile, render('local/acm.yaml', { SERVICE: serverKind, LABEL, CERT_ARN: DEMO_CERT_ARN, TARGET: target, OPENSSL: openssl, OPENSSL_CONF: opensslConf, METRICS: metrics }), 0o600);
  // The provider path: the web server starts with the OpenSSL configuration the agent wrote.
  const serverEnv: Record<string, string> = openssl === 'provider' ? { OPENSSL_CONF: opensslConf } : {};
  let server: RunningServer | undefined;
  const controlSocket = path.join(o.runtimeDir, 'agent.sock');
  const prefix = path.join(o.runtimeDir, serverKind);
  const service = await startService({
    configFile,
    controller: () => controller,
    endpoints: { imds: cloud.endpoint, s3: cloud.endpoint, iam: cloud.endpoint, kms: cloud.endpoint },
    // Before the web server runs there is nothing to reload; it starts on the files written.
    reload: async () => { server?.reload(); if (server) log.info(`reloaded ${serverKind} (pid ${server.pid}) gracefully`); },
    controlSocket,
    webServerConfig: path.join(prefix, `${serverKind}.conf`),
    controlHandlers: () => ({ renew: (args) => renew(String(args.label ?? '')) }),
  });
  started.push(async () => { await service.stop(); await service.agent.stop(); });
  const token = service.agent.tokens.get(LABEL)!;
  if (token.state !== 'serving') throw new Error(`token ${LABEL} could not be provisioned: ${token.error}`);
  const address = service.agent.enclaveEndpoints!.keyAddress;
  log.info(`enclave app up (pid ${controller.process!.proc.pid}) on ${address}`);
  const moduleFile = registerWithP11Kit(address);
  log.info(`PKCS#11 module registered with p11-kit in ${moduleFile}`);

  const hello = 'Hello from nitro-acm local mode: this TLS handshake was signed by the enclave app.\n';
  const launched = serverKind === 'nginx' ? launchLocalNginx(o, prefix, openssl, serverEnv) : startHttpd({ dir: prefix, port: o.port, openssl, env: serverEnv, sites: [{ serverName: 'localhost', include: path.join(o.runtimeDir, `${LABEL}-httpd.conf`) }], body: hello });
  server = await launched.catch((e: Error) => { throw new Error(/already held/.test(e.message) ? `${e.message} (--port chooses another)` : `${e.message}\n(is port ${o.port} taken? --port chooses another)`); });
  started.push(() => server!.stop());
  const caPem = fs.readFileSync(ca.caFile, 'utf8');
  const served = async () => (await handshake(o.port, { servername: 'localhost', ca: caPem, timeoutMs: 10_000 })).fingerprint256;
  const h = await served().catch((e: Error) => {
    throw new Error(`${serverKind} is not serving the demo certificate on port ${o.port}: ${e.message} (see ${path.join(prefix, 'error.log')})`);
  });
  if (h !== fingerprintOf(token.bundle!.certificate)) throw new Error(`port ${o.port} serves another certificate: is another server listening there? --port chooses another`);
  const url = `https://localhost:${o.port}/`;
  const curl = `curl --cacert ${ca.caFile} ${url}`;
  log.token(LABEL).info(`serving ${url} with the key in the enclave app (${serverKind} pid ${server.pid}, OpenSSL ${openssl === 'engine' ? 'pkcs11 engine' : 'provider'})`);

  async function renew(label: string): Promise<RenewResult> {
    if (!service.agent.tokens.has(label)) throw new ControlError('NoSuchToken', `no token "${label}" (local mode serves: ${[...service.agent.tokens.keys()].join(', ')})`);
    const previous = await served();
    const t0 = performance.now();
    const certPem = await sealDemoCertificate(ca, cloud, kmsKeyArn, keyType);
    const renewed = await service.queue('renew', () => service.agent.sync());
    if (!renewed.includes(label)) throw new Error(`the agent did not roll out the new certificate: ${service.agent.tokens.get(label)?.error ?? 'unchanged in S3'}`);
    const want = fingerprintOf(certPem);
    for (const deadline = Date.now() + 20_000; (await served()) !== want;) {
      if (Date.now() > deadline) throw new Error(`${serverKind} still serves the previous certificate 20 s after the reload (see ${path.join(prefix, 'error.log')})`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const seconds = (performance.now() - t0) / 1000;
    const notAfter = new Date(new crypto.X509Certificate(certPem).validTo).toISOString();
    log.token(label).info(`renewed: ${serverKind} serves the new certificate ${seconds.toFixed(2)} s after it was put in S3`);
    return { label, previous, fingerprint: want, notAfter, seconds };
  }

  // If this process goes away without stop() (an uncaught error, process.exit), take the children along.
  const orphanGuard = () => { server!.proc.kill('SIGTERM'); controller.process?.proc.kill('SIGTERM'); };
  process.once('exit', orphanGuard);
  const stop = async () => {
    process.removeListener('exit', orphanGuard);
    for (const f of started.reverse()) await f().catch(() => {});
    log.info('local mode stopped; files are kept in ' + o.runtimeDir);
  };
  return { caFile: ca.caFile, url, curl, controlSocket, service, server, renew, stop };
}

function launchLocalNginx(o: LocalOptions, prefix: string, openssl: OpenSslPath, env: Record<string, string>): Promise<RunningServer> {
  fs.mkdirSync(path.join(prefix, 'tmp'), { recursive: true });
  const conf = path.join(prefix, 'nginx.conf');
  writeAtomic(conf, render('local/nginx.conf', { PREFIX: prefix, PORT: String(o.port), STANZA: path.join(o.runtimeDir, `${LABEL}.conf`), OPENSSL_MAIN: nginxMainLine(openssl) }), 0o644);
  return launchNginx({ prefix, conf, port: o.port, env });
}
