// The local cloud: one process on loopback that speaks the real wire protocols to
// the real AWS SDK v3 clients (only endpoints and credentials differ): IMDSv2,
// IAM GetRole, S3 (GetObject/PutObject/HeadObject/CreateBucket with ETags and
// If-None-Match), and KMS (local KMS, JSON 1.1) over HTTP and over TLS, the latter
// also on a unix socket that stands in for the parent's vsock KMS proxy. State
// (keys, objects, identity) persists in the state directory. Local mode only.
import fs from 'node:fs';
import path from 'node:path';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import crypto, { X509Certificate } from 'node:crypto';
import { LocalKms, AwsError, type Caller } from './kms.ts';
import { verifySigV4, SignatureError } from './sigv4.ts';
import { createCertificate } from '../../../shared/x509.ts';
import { log } from '../../../shared/log.ts';

export interface LocalIdentity {
  region: string;
  partition: string;
  account: string;
  instanceId: string;
  roleName: string;
  rolePath: string;
  roleArn: string;
  instance: { accessKeyId: string; secretAccessKey: string; sessionToken: string };
  admin: { accessKeyId: string; secretAccessKey: string; arn: string };
}

export interface LocalCloudOptions {
  stateDir: string;
  /** Extra roots trusted for attestation documents (the simulated NSM's), besides the AWS root. */
  attestationRoots?: () => X509Certificate[];
  host?: string;
  httpPort?: number;
  httpsPort?: number;
  /** A unix socket where KMS answers over TLS (the enclave's "vsock proxy" in local mode). */
  kmsProxySocket?: string;
}

/** A service of the local cloud that is away ('down': connections are reset) or slow (each request waits). */
export type Fault = 'down' | { delayMs: number };
export type CloudService = 'imds' | 'iam' | 's3' | 'kms';

export interface LocalCloud {
  identity: LocalIdentity;
  /** Faults to inject, by service (tests of how the agent and the enclave live with an AWS outage). */
  faults: Partial<Record<CloudService, Fault>>;
  /** Whether IMDS serves the instance's tags (EC2's instance metadata tags setting; on here, off by default on EC2). */
  metadataTags: boolean;
  endpoint: string; // http://host:port (IMDS, S3, IAM, KMS)
  kmsTlsEndpoint: string; // https://kms.<region>.amazonaws.com:port, resolved to loopback by the caller
  httpsPort: number;
  tlsCaPem: string;
  kmsHostname: string;
  bucket(): string; // the ACM for Nitro Enclaves bucket name for this identity
  stop(): Promise<void>;
}

function loadIdentity(dir: string): LocalIdentity {
  const file = path.join(dir, 'identity.json');
  if (fs.existsSync(file)) return JSON.parse(fs.readFileSync(file, 'utf8')) as LocalIdentity;
  const rnd = (n: number) => crypto.randomBytes(n).toString('hex').toUpperCase();
  const account = '123456789012';
  const id: LocalIdentity = {
    region: 'us-east-1', partition: 'aws', account,
    instanceId: `i-${crypto.randomBytes(8).toString('hex').slice(0, 17)}`,
    roleName: 'nitro-acm-local-role', rolePath: '/nitro-acm/',
    roleArn: `arn:aws:iam::${account}:role/nitro-acm/nitro-acm-local-role`,
    instance: { accessKeyId: `ASIA${rnd(8)}`, secretAccessKey: crypto.randomBytes(30).toString('base64'), sessionToken: crypto.randomBytes(60).toString('base64') },
    admin: { accessKeyId: `AKIA${rnd(8)}`, secretAccessKey: crypto.randomBytes(30).toString('base64'), arn: `arn:aws:iam::${account}:root` },
  };
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(file, JSON.stringify(id, null, 2), { mode: 0o600 });
  return id;
}

function tlsMaterial(dir: string, hostnames: string[]): { caPem: string; keyPem: string; certPem: string } {
  const f = (n: string) => path.join(dir, n);
  if (!fs.existsSync(f('tls-ca.pem'))) {
    const ca = crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' });
    const caCert = createCertificate({ subject: { CN: `nitro-acm local cloud CA ${crypto.randomBytes(4).toString('hex')}`, O: 'nitro-acm local' }, publicKey: ca.publicKey, signingKey: ca.privateKey, notBefore: new Date(Date.now() - 3600_000), notAfter: new Date(Date.now() + 10 * 365 * 86400_000), ca: true });
    const leaf = crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' });
    const cert = createCertificate({ subject: { CN: hostnames[0] }, issuer: caCert, publicKey: leaf.publicKey, signingKey: ca.privateKey, notBefore: new Date(Date.now() - 3600_000), notAfter: new Date(Date.now() + 5 * 365 * 86400_000), dnsNames: hostnames, ipAddresses: ['127.0.0.1'], serverAuth: true });
    fs.writeFileSync(f('tls-key.pem'), leaf.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    fs.writeFileSync(f('tls-cert.pem'), cert.toString());
    fs.writeFileSync(f('tls-ca.pem'), caCert.toString());
  }
  return { caPem: fs.readFileSync(f('tls-ca.pem'), 'utf8'), keyPem: fs.readFileSync(f('tls-key.pem'), 'utf8'), certPem: fs.readFileSync(f('tls-cert.pem'), 'utf8') };
}

function readBody(req: http.IncomingMessage, max = 8 * 1024 * 1024): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    req.on('data', (c: Buffer) => { n += c.length; if (n > max) { reject(new AwsError('RequestEntityTooLarge', `request body over ${max} bytes`, 413)); req.destroy(); } else chunks.push(c); });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** Why S3 would refuse a bucket name (3-63 of a-z 0-9 . -, letters or digits at both ends, no "..", not an IP address), or undefined. */
export function s3BucketNameProblem(b: string): string | undefined {
  if (b.length < 3 || b.length > 63) return `"${b.slice(0, 70)}" is not 3 to 63 characters`;
  if (!/^[a-z0-9][a-z0-9.-]*[a-z0-9]$/.test(b)) return `"${b}" may hold only a-z, 0-9, "." and "-", and must start and end with a letter or digit`;
  if (b.includes('..')) return `"${b}" has two adjacent periods`;
  if (/^\d+\.\d+\.\d+\.\d+$/.test(b)) return `"${b}" is formatted as an IP address`;
  return undefined;
}

const xmlEscape = (s: string) => s.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);

export async function startLocalCloud(o: LocalCloudOptions): Promise<LocalCloud> {
  const dir = path.join(o.stateDir, 'cloud');
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const id = loadIdentity(dir);
  const kmsHostname = `kms.${id.region}.amazonaws.com`;
  const tls = tlsMaterial(dir, [kmsHostname, 'localhost']);
  const kms = new LocalKms({ stateDir: dir, region: id.region, account: id.account, trustedRoots: o.attestationRoots ?? (() => []) });
  const s3dir = path.resolve(dir, 's3');
  const bucket = `${id.partition}-ec2-enclave-certificate-${id.region}-prod`;
  fs.mkdirSync(path.join(s3dir, bucket), { recursive: true });
  const tokens = new Map<string, number>();

  // Every request to S3, IAM and KMS must carry a valid SigV4 signature by one of the two local keys.
  const signingKeys = new Map([[id.instance.accessKeyId, { secretAccessKey: id.instance.secretAccessKey, sessionToken: id.instance.sessionToken }], [id.admin.accessKeyId, { secretAccessKey: id.admin.secretAccessKey }]]);
  const callerOf = (req: http.IncomingMessage, body: Buffer): Caller => {
    const keyId = verifySigV4(req, body, (k) => signingKeys.get(k));
    return keyId === id.instance.accessKeyId ? { arn: id.roleArn, account: id.account } : { arn: id.admin.arn, account: id.account };
  };

  // Filled in once it listens; the IMDS handler reads metadataTags from it as it is now.
  const cloud = { metadataTags: true } as LocalCloud;
  const imds = (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => {
    if (req.method === 'PUT' && url.pathname === '/latest/api/token') {
      const ttl = Number(req.headers['x-aws-ec2-metadata-token-ttl-seconds']);
      if (!Number.isInteger(ttl) || ttl < 1 || ttl > 21600) { res.writeHead(400).end(); return; }
      const t = crypto.randomBytes(24).toString('base64url');
      tokens.set(t, Date.now() + ttl * 1000);
      res.writeHead(200, { 'content-type': 'text/plain', 'x-aws-ec2-metadata-token-ttl-seconds': String(ttl) }).end(t);
      return;
    }
    const token = String(req.headers['x-aws-ec2-metadata-token'] ?? '');
    if (!tokens.has(token) || tokens.get(token)! < Date.now()) { res.writeHead(401).end(); return; } // IMDSv2 only
    const creds = () => JSON.stringify({ Code: 'Success', LastUpdated: new Date().toISOString(), Type: 'AWS-HMAC', AccessKeyId: id.instance.accessKeyId, SecretAccessKey: id.instance.secretAccessKey, Token: id.instance.sessionToken, Expiration: new Date(Date.now() + 6 * 3600_000).toISOString() });
    const routes: Record<string, () => string> = {
      '/latest/meta-data/instance-id': () => id.instanceId,
      '/latest/meta-data/placement/region': () => id.region,
      '/latest/meta-data/services/partition': () => id.partition,
      '/latest/meta-data/iam/info': () => JSON.stringify({ Code: 'Success', LastUpdated: new Date().toISOString(), InstanceProfileArn: `arn:aws:iam::${id.account}:instance-profile${id.rolePath}${id.roleName}`, InstanceProfileId: 'AIPALOCAL' }),
      '/latest/meta-data/iam/security-credentials/': () => id.roleName,
      [`/latest/meta-data/iam/security-credentials/${id.roleName}`]: creds,
      ...(cloud.metadataTags ? { '/latest/meta-data/tags/instance/InstanceRoleArn': () => id.roleArn } : {}),
      '/latest/dynamic/instance-identity/document': () => JSON.stringify({ accountId: id.account, instanceId: id.instanceId, region: id.region }),
    };
    const route = routes[url.pathname];
    if (!route) { res.writeHead(404).end(); return; }
    res.writeHead(200, { 'content-type': 'text/plain' }).end(route());
  };

  // Names are checked as S3 checks them, and every path is checked to stay in the store.
  const s3path = (b: string, key?: string) => {
    const p = path.resolve(s3dir, b, ...(key === undefined ? [] : [Buffer.from(key).toString('base64url')]));
    if (!p.startsWith(s3dir + path.sep)) throw new AwsError('InvalidBucketName', 'The specified bucket is not valid.', 400);
    return p;
  };
  const s3error = (res: http.ServerResponse, status: number, code: string, message: string) =>
    res.writeHead(status, { 'content-type': 'application/xml' }).end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${xmlEscape(message)}</Message></Error>`);

  const s3 = async (req: http.IncomingMessage, res: http.ServerResponse, url: URL, body: Buffer) => {
    const raw = url.pathname.slice(1);
    const slash = raw.indexOf('/');
    let b: string, key: string;
    try {
      b = decodeURIComponent(slash < 0 ? raw : raw.slice(0, slash));
      key = slash < 0 ? '' : decodeURIComponent(raw.slice(slash + 1));
    } catch { s3error(res, 400, 'InvalidURI', 'Couldn\'t parse the specified URI.'); return; }
    if (!b) { s3error(res, 400, 'InvalidRequest', 'bucket name required (path-style)'); return; }
    const badBucket = s3BucketNameProblem(b);
    if (badBucket) { s3error(res, 400, 'InvalidBucketName', `The specified bucket is not valid: ${badBucket}`); return; }
    if (Buffer.byteLength(key) > 1024) { s3error(res, 400, 'KeyTooLongError', 'Your key is too long'); return; }
    if (!key && req.method === 'PUT') { fs.mkdirSync(s3path(b), { recursive: true }); res.writeHead(200).end(); return; }
    if (!fs.existsSync(s3path(b))) { s3error(res, 404, 'NoSuchBucket', `The specified bucket ${b} does not exist`); return; }
    const file = s3path(b, key);
    if (req.method === 'PUT') {
      const tmp = `${file}.tmp-${process.pid}`;
      fs.writeFileSync(tmp, body);
      fs.renameSync(tmp, file);
      res.writeHead(200, { etag: `"${crypto.createHash('md5').update(body).digest('hex')}"` }).end();
      return;
    }
    if (req.method === 'GET' || req.method === 'HEAD') {
      if (!fs.existsSync(file)) { if (req.method === 'HEAD') res.writeHead(404).end(); else s3error(res, 404, 'NoSuchKey', 'The specified key does not exist.'); return; }
      const body = fs.readFileSync(file);
      const etag = `"${crypto.createHash('md5').update(body).digest('hex')}"`;
      const headers = { etag, 'last-modified': fs.statSync(file).mtime.toUTCString(), 'content-length': String(body.length), 'content-type': 'application/octet-stream' };
      if (req.headers['if-none-match'] === etag) { res.writeHead(304, { etag }).end(); return; }
      res.writeHead(200, headers).end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    if (req.method === 'DELETE') { fs.rmSync(file, { force: true }); res.writeHead(204).end(); return; }
    s3error(res, 405, 'MethodNotAllowed', `${req.method} is not supported here`);
  };

  const iam = (res: http.ServerResponse, form: URLSearchParams) => {
    if (form.get('Action') !== 'GetRole') { res.writeHead(400, { 'content-type': 'text/xml' }).end(`<ErrorResponse><Error><Type>Sender</Type><Code>InvalidAction</Code><Message>local IAM implements GetRole only</Message></Error></ErrorResponse>`); return; }
    if (form.get('RoleName') !== id.roleName) { res.writeHead(404, { 'content-type': 'text/xml' }).end(`<ErrorResponse><Error><Type>Sender</Type><Code>NoSuchEntity</Code><Message>The role with name ${xmlEscape(form.get('RoleName') ?? '')} cannot be found.</Message></Error></ErrorResponse>`); return; }
    res.writeHead(200, { 'content-type': 'text/xml' }).end(`<GetRoleResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><GetRoleResult><Role><Path>${id.rolePath}</Path><RoleName>${id.roleName}</RoleName><RoleId>AROALOCAL</RoleId><Arn>${id.roleArn}</Arn><CreateDate>2026-01-01T00:00:00Z</CreateDate><AssumeRolePolicyDocument>%7B%7D</AssumeRolePolicyDocument></Role></GetRoleResult><ResponseMetadata><RequestId>${crypto.randomUUID()}</RequestId></ResponseMetadata></GetRoleResponse>`);
  };

  const faults: LocalCloud['faults'] = {};
  const serviceOf = (req: http.IncomingMessage, url: URL): CloudService =>
    url.pathname.startsWith('/latest/') ? 'imds'
      : String(req.headers['x-amz-target'] ?? '').startsWith('TrentService.') ? 'kms'
        : req.method === 'POST' && String(req.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded') ? 'iam' : 's3';

  const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://local');
      // One classification decides both the fault to inject and where the request goes.
      const service = serviceOf(req, url);
      const fault = faults[service];
      if (fault === 'down') { req.socket.destroy(); return; }
      if (fault) await new Promise((r) => setTimeout(r, fault.delayMs));
      if (service === 'imds') return imds(req, res, url);
      let body: Buffer, caller: Caller;
      try {
        body = await readBody(req);
        caller = callerOf(req, body);
      } catch (e) {
        const code = e instanceof SignatureError ? e.code : e instanceof AwsError ? e.type : 'InternalError';
        const status = e instanceof AwsError ? e.status : code === 'MissingAuthenticationToken' ? 403 : code === 'IncompleteSignature' || code === 'XAmzContentSHA256Mismatch' ? 400 : 403;
        if (service === 's3') s3error(res, status, code, (e as Error).message);
        else if (service === 'kms') res.writeHead(status, { 'content-type': 'application/x-amz-json-1.1', 'x-amzn-errortype': code }).end(JSON.stringify({ __type: code, message: (e as Error).message }));
        else res.writeHead(status, { 'content-type': 'text/xml' }).end(`<ErrorResponse><Error><Type>Sender</Type><Code>${code}</Code><Message>${xmlEscape((e as Error).message)}</Message></Error></ErrorResponse>`);
        return;
      }
      if (service === 'kms') {
        const op = String(req.headers['x-amz-target']).slice('TrentService.'.length);
        const send = (status: number, payload: unknown, type?: string) => res.writeHead(status, { 'content-type': 'application/x-amz-json-1.1', ...(type ? { 'x-amzn-errortype': type } : {}) }).end(JSON.stringify(payload));
        try {
          send(200, kms.handle(op, JSON.parse(body.toString() || '{}') as Record<string, unknown>, caller));
        } catch (e) {
          const err = e instanceof AwsError ? e : new AwsError('KMSInternalException', (e as Error).message, 500);
          send(err.status, { __type: err.type, message: err.message }, err.type);
        }
        return;
      }
      if (service === 'iam') return iam(res, new URLSearchParams(body.toString()));
      return s3(req, res, url, body);
    })().catch((e) => { log.error(`local cloud: ${(e as Error).message}`); if (!res.headersSent) res.writeHead(500).end(); });
  };

  const host = o.host ?? '127.0.0.1';
  const plain = http.createServer(handler);
  const secure = https.createServer({ key: tls.keyPem, cert: tls.certPem }, handler);
  const listen = (s: net.Server, arg: number | string) => new Promise<void>((resolve, reject) => {
    s.once('error', reject);
    if (typeof arg === 'string') { fs.rmSync(arg, { force: true }); s.listen(arg, () => { fs.chmodSync(arg, 0o666); resolve(); }); } else s.listen(arg, host, () => resolve());
  });
  await listen(plain, o.httpPort ?? 0);
  await listen(secure, o.httpsPort ?? 0);
  let proxy: https.Server | undefined;
  if (o.kmsProxySocket) {
    proxy = https.createServer({ key: tls.keyPem, cert: tls.certPem }, handler);
    await listen(proxy, o.kmsProxySocket);
  }
  const port = (plain.address() as net.AddressInfo).port;
  const httpsPort = (secure.address() as net.AddressInfo).port;
  log.info(`local cloud on http://${host}:${port} (IMDS, IAM, S3, KMS) and https://${host}:${httpsPort} (KMS over TLS)${o.kmsProxySocket ? `, KMS proxy on ${o.kmsProxySocket}` : ''}`);
  Object.assign(cloud, {
    identity: id,
    faults,
    endpoint: `http://${host}:${port}`,
    kmsTlsEndpoint: `https://${kmsHostname}:${httpsPort}`,
    httpsPort,
    tlsCaPem: tls.caPem,
    kmsHostname,
    bucket: () => bucket,
    async stop() {
      for (const s of [plain, secure, proxy]) if (s) { s.closeAllConnections?.(); await new Promise<void>((r) => s.close(() => r())); }
    },
  });
  return cloud;
}
