// The attested path end to end in local mode: a bundle sealed under a local KMS
// key whose policy pins the enclave app's PCR0 and the instance role is
// provisioned over the provisioning channel, decrypted through KMS with an
// attestation document over the KMS proxy with TLS ending in the enclave, and
// signs through the PKCS#11 module. Then each way it must fail, fails, clearly.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import https from 'node:https';
import http from 'node:http';
import pkcs11js from 'pkcs11js';
import { KMSClient, CreateKeyCommand, EncryptCommand, DecryptCommand, KMSServiceException } from '@aws-sdk/client-kms';
import { startLocalCloud, type LocalCloud } from '../src/local/cloud/server.ts';
import { startLocalEnclave, type LocalEnclave } from '../src/local/enclave-process.ts';
import { ProvisionClient, ProvisionError } from '../shared/provision-wire.ts';
import { measureEnclaveApp, simulatedNsmRoot, SimulatedNsm } from '../enclave/nsm-simulated.ts';
import { ProvisionServer } from '../enclave/provision-server.ts';
import { KeyStore } from '../enclave/keystore.ts';
import { createCA, issueServerCert } from '../src/local/pki.ts';
import { parseAddress } from '../shared/address.ts';
import type { Bundle } from '../shared/bundle.ts';
import { tmpdir, MODULE_PATH, changedEnclaveApp } from './helpers/enclave.ts';
import { registerWithP11Kit } from '../src/local/p11kit.ts';
import { startNginx, freePort, handshake, fingerprintOf } from '../src/local/webservers.ts';

const dir = tmpdir('attested');
let cloud: LocalCloud;
let keyArn: string;
const ca = createCA('attested test CA');
const nsmDir = path.join(dir, 'nsm');

test.before(async () => {
  const root = simulatedNsmRoot(nsmDir);
  cloud = await startLocalCloud({ stateDir: path.join(dir, 'state'), attestationRoots: () => [root.rootCert], kmsProxySocket: path.join(dir, 'kms-proxy.sock') });
  const kms = new KMSClient({ region: cloud.identity.region, endpoint: cloud.endpoint, credentials: cloud.identity.admin });
  const policy = {
    Version: '2012-10-17',
    Statement: [
      { Sid: 'admin', Effect: 'Allow', Principal: { AWS: cloud.identity.admin.arn }, Action: 'kms:*', Resource: '*' },
      { Sid: 'enclave', Effect: 'Allow', Principal: { AWS: cloud.identity.roleArn }, Action: 'kms:Decrypt', Resource: '*', Condition: { StringEqualsIgnoreCase: { 'kms:RecipientAttestation:PCR0': measureEnclaveApp().pcr0.toString('hex').toUpperCase() } } },
    ],
  };
  keyArn = (await kms.send(new CreateKeyCommand({ Policy: JSON.stringify(policy) }))).KeyMetadata!.Arn!;
});
test.after.always(async () => { await cloud?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });

async function sealed(names: string[], keyPemOverride?: string): Promise<{ bundle: Bundle; certPem: string }> {
  const leaf = issueServerCert(ca, names);
  const kms = new KMSClient({ region: cloud.identity.region, endpoint: cloud.endpoint, credentials: cloud.identity.admin });
  const ct = (await kms.send(new EncryptCommand({ KeyId: keyArn, Plaintext: Buffer.from(keyPemOverride ?? leaf.keyPem) }))).CiphertextBlob!;
  return { certPem: leaf.certPem, bundle: { certificate: leaf.certPem, certificateChain: ca.certPem, encryptedPrivateKey: Buffer.from(ct).toString('base64'), encryptionMethod: 'KMS' } };
}

interface Started { enclave: LocalEnclave; keySock: string; provision: ProvisionClient }
async function enclave(t: import('ava').ExecutionContext, opts: { debug?: boolean; nsm?: string; entry?: string } = {}): Promise<Started> {
  const sub = fs.mkdtempSync(path.join(dir, 'e-'));
  fs.chmodSync(sub, 0o711);
  const keySock = path.join(sub, 'keys.sock'), provSock = path.join(sub, 'prov.sock');
  const e = await startLocalEnclave({
    keyAddress: `unix:path=${keySock}`, entry: opts.entry,
    args: ['--provision-address', `unix:path=${provSock}`, '--nsm-sim-dir', opts.nsm ?? nsmDir, '--nsm-sim-role-arn', cloud.identity.roleArn, '--nsm-sim-instance-id', cloud.identity.instanceId,
      '--kms-proxy', `unix:path=${path.join(dir, 'kms-proxy.sock')}`, '--kms-ca', path.join(dir, 'state/cloud/tls-ca.pem'), ...(opts.debug ? ['--nsm-sim-debug'] : [])],
  });
  const provision = await ProvisionClient.connect(parseAddress(`unix:path=${provSock}`));
  t.teardown(async () => { provision.close(); await e.stop(); });
  return { enclave: e, keySock, provision };
}

const instance = () => ({ credentials: cloud.identity.instance, region: cloud.identity.region });

test.serial('a sealed bundle is provisioned through KMS with attestation and signs through the PKCS#11 module', async (t) => {
  const { enclave: e, keySock, provision } = await enclave(t);
  const { bundle, certPem } = await sealed(['attested.test']);
  const added = await provision.call<{ token: { label: string; keyType: string; fingerprint256: string } }>('add', { label: 'web', pin: '24682468', bundle, ...instance() });
  t.is(added.token.keyType, 'RSA-2048');
  t.is(added.token.fingerprint256, new crypto.X509Certificate(certPem).fingerprint256);
  t.regex(e.output(), /\[web\] private key decrypted through KMS with attestation/);
  const health = await provision.call<{ nsm: string; tokens: number }>('health');
  t.is(health.nsm, 'simulated');
  t.is(health.tokens, 1);
  process.env.NITRO_ACM_KEY_ADDRESS = `unix:path=${keySock}`;
  const p = new pkcs11js.PKCS11();
  p.load(MODULE_PATH);
  p.C_Initialize();
  try {
    const s = p.C_OpenSession(p.C_GetSlotList(true)[0], pkcs11js.CKF_SERIAL_SESSION);
    p.C_Login(s, pkcs11js.CKU_USER, '24682468');
    p.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }]);
    const [key] = p.C_FindObjects(s, 1);
    p.C_FindObjectsFinal(s);
    p.C_SignInit(s, { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS }, key);
    t.true(crypto.verify('sha256', Buffer.from('attested'), certPem, p.C_Sign(s, Buffer.from('attested'), Buffer.alloc(256))));
  } finally { p.C_Finalize(); }
  // And real nginx serves TLS with it.
  registerWithP11Kit();
  const prefix = fs.mkdtempSync(path.join(dir, 'nginx-'));
  fs.chmodSync(prefix, 0o755);
  const pin = path.join(prefix, 'web.pin');
  fs.writeFileSync(pin, '24682468', { mode: 0o400 });
  const chain = path.join(prefix, 'chain.pem');
  fs.writeFileSync(chain, certPem + ca.certPem);
  const nginx = await startNginx({ dir: prefix, port: await freePort(), env: { NITRO_ACM_KEY_ADDRESS: `unix:path=${keySock}` }, sites: [{ serverName: 'attested.test', certificateFile: chain, key: `engine:pkcs11:pkcs11:token=web;type=private?pin-source=file:${pin}` }] });
  t.teardown(() => nginx.stop());
  for (const v of ['TLSv1.2', 'TLSv1.3'] as const) {
    const h = await handshake(nginx.port, { servername: 'attested.test', ca: ca.certPem, minVersion: v, maxVersion: v });
    t.is(h.fingerprint256, fingerprintOf(certPem), v);
  }
  await t.throwsAsync(provision.call('add', { label: 'web', pin: '24682468', bundle, ...instance() }), { instanceOf: ProvisionError, message: /exists; use update/ });
});

test.serial('refused: the same bundle in debug mode (PCRs all zero)', async (t) => {
  const { provision, enclave: e } = await enclave(t, { debug: true });
  const { bundle } = await sealed(['debug.test']);
  const err = await t.throwsAsync(provision.call('add', { label: 'web', pin: '24682468', bundle, ...instance() }));
  t.is((err as ProvisionError).code, 'KmsDenied');
  t.regex(err!.message, /not authorized to perform: kms:Decrypt/);
  t.is((await provision.call<{ tokens: unknown[] }>('describe')).tokens.length, 0, 'nothing served from it');
  void e;
});

test.serial('refused: an enclave app with one changed file (different PCR0)', async (t) => {
  const { provision } = await enclave(t, { entry: changedEnclaveApp(dir) });
  const { bundle } = await sealed(['changed.test']);
  const err = await t.throwsAsync(provision.call('add', { label: 'web', pin: '24682468', bundle, ...instance() }));
  t.is((err as ProvisionError).code, 'KmsDenied');
});

test.serial('refused: an attestation document signed by an untrusted root', async (t) => {
  const { provision } = await enclave(t, { nsm: path.join(dir, 'other-nsm-root') });
  const { bundle } = await sealed(['untrusted.test']);
  const err = await t.throwsAsync(provision.call('add', { label: 'web', pin: '24682468', bundle, ...instance() }));
  t.is((err as ProvisionError).code, 'KmsError');
  t.regex(err!.message, /AttestationDocument is not valid: cabundle\[0\] .* is not a trusted root/);
});

test.serial('refused: a bundle whose key does not match its certificate', async (t) => {
  const { provision } = await enclave(t);
  const other = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const { bundle } = await sealed(['mismatch.test'], other);
  const err = await t.throwsAsync(provision.call('add', { label: 'web', pin: '24682468', bundle, ...instance() }));
  t.is((err as ProvisionError).code, 'KeyMismatch');
  t.regex(err!.message, /does not match the certificate/);
});

test.serial("refused: a Decrypt without Recipient with the parent's own credentials", async (t) => {
  const { bundle } = await sealed(['parent.test']);
  const kms = new KMSClient({ region: cloud.identity.region, endpoint: cloud.endpoint, credentials: cloud.identity.instance });
  await t.throwsAsync(kms.send(new DecryptCommand({ CiphertextBlob: Buffer.from(bundle.encryptedPrivateKey, 'base64') })), { instanceOf: KMSServiceException, name: 'AccessDeniedException' });
});

test.serial('refused: a truncated or garbled CiphertextForRecipient (a proxy between the enclave and KMS tampers with it)', async (t) => {
  // A TLS proxy with the local cloud's own certificate, so only the KMS answer differs.
  const tlsDir = path.join(dir, 'state/cloud');
  for (const [name, tamper] of [['truncated', (b: Buffer) => b.subarray(0, b.length - 40)], ['garbled', (b: Buffer) => { const c = Buffer.from(b); c[c.length >> 1] ^= 0x55; return c; }]] as const) {
    const sock = path.join(dir, `tamper-${name}.sock`);
    const server = https.createServer({ key: fs.readFileSync(path.join(tlsDir, 'tls-key.pem')), cert: fs.readFileSync(path.join(tlsDir, 'tls-cert.pem')) }, (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c) => chunks.push(c));
      req.on('end', async () => {
        // Forwarded as it came, Host included: the local cloud checks the SigV4 signature, which covers it.
        const r = await new Promise<{ status: number; text: string }>((resolve, reject) => {
          const fwd = http.request(cloud.endpoint, { method: 'POST', headers: req.headers }, (up) => {
            let text = '';
            up.on('data', (d) => { text += d; });
            up.on('end', () => resolve({ status: up.statusCode ?? 500, text }));
          });
          fwd.on('error', reject);
          fwd.end(Buffer.concat(chunks));
        });
        const body = JSON.parse(r.text) as Record<string, string>;
        if (body.CiphertextForRecipient) body.CiphertextForRecipient = tamper(Buffer.from(body.CiphertextForRecipient, 'base64')).toString('base64');
        res.writeHead(r.status, { 'content-type': 'application/x-amz-json-1.1' }).end(JSON.stringify(body));
      });
    });
    await new Promise<void>((r) => server.listen(sock, r));
    t.teardown(() => server.close());
    const sub = fs.mkdtempSync(path.join(dir, 't-'));
    const provSock = path.join(sub, 'prov.sock');
    const e = await startLocalEnclave({ keyAddress: `unix:path=${path.join(sub, 'keys.sock')}`, args: ['--provision-address', `unix:path=${provSock}`, '--nsm-sim-dir', nsmDir, '--nsm-sim-role-arn', cloud.identity.roleArn, '--nsm-sim-instance-id', cloud.identity.instanceId, '--kms-proxy', `unix:path=${sock}`, '--kms-ca', path.join(tlsDir, 'tls-ca.pem')] });
    const c = await ProvisionClient.connect(parseAddress(`unix:path=${provSock}`));
    t.teardown(async () => { c.close(); await e.stop(); });
    const { bundle } = await sealed([`${name}.test`]);
    const err = await t.throwsAsync(c.call('add', { label: 'web', pin: '24682468', bundle, ...instance() }));
    // Truncated: the CMS structure or the AES padding fails. Garbled inside the AES content (CBC has no
    // integrity, as in real KMS answers): it decrypts to something that is not a key. Refused either way.
    t.true(['KmsError', 'KeyInvalid'].includes((err as ProvisionError).code), `${name}: ${(err as ProvisionError).code}`);
    t.regex(err!.message, /CiphertextForRecipient|does not decrypt|padding/, name);
    t.is((await c.call<{ tokens: unknown[] }>('describe')).tokens.length, 0, `${name}: nothing served from it`);
  }
});

test('an enclave not in local mode refuses plaintext keys; bad requests name the field', async (t) => {
  const server = new ProvisionServer({ store: new KeyStore(), nsm: new SimulatedNsm({ pki: simulatedNsmRoot(nsmDir) }), kms: { proxy: parseAddress('unix:path=/nonexistent') }, localMode: false });
  const sock = path.join(dir, 'p.sock');
  await server.listen(parseAddress(`unix:path=${sock}`));
  t.teardown(() => server.close());
  const c = await ProvisionClient.connect(parseAddress(`unix:path=${sock}`));
  t.teardown(() => c.close());
  const leaf = issueServerCert(ca, ['plain.test']);
  const plain: Bundle = { certificate: leaf.certPem, certificateChain: '', encryptedPrivateKey: Buffer.from(leaf.keyPem).toString('base64'), encryptionMethod: 'plaintext' };
  const e1 = await t.throwsAsync(c.call('add', { label: 'x', pin: '1234', bundle: plain }));
  t.is((e1 as ProvisionError).code, 'PlaintextRefused');
  await t.throwsAsync(c.call('add', { label: 'x', pin: 'x'.repeat(256), bundle: plain }), { message: /"pin" must be 1..255 bytes/ });
  await t.throwsAsync(c.call('add', { label: 'x'.repeat(33), pin: '1234', bundle: plain }), { message: /"label" is 33 bytes, at most 32/ });
  await t.throwsAsync(c.call('add', { label: 'x', pin: '1234', bundle: { ...plain, certificate: 'nope' } }), { message: /"certificate" is not a PEM certificate/ });
  await t.throwsAsync(c.call('frobnicate'), { message: /unknown operation "frobnicate"/ });
  await t.throwsAsync(c.call('remove', { label: 'nope' }), { message: /no token "nope"/ });
});
