// ECDSA certificates (P-256, P-384) with their keys in the enclave app: the
// module's EC objects and mechanisms through PKCS#11 (signatures verify with the
// certificate), then real nginx serving them over both OpenSSL paths (the pkcs11
// engine and pkcs11-provider), TLS 1.2 and 1.3, and one nginx server with an RSA
// and an ECDSA certificate at once, each client getting the one it prefers.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { startEnclave, type EnclaveFixture } from './helpers/enclave.ts';
import { loadModule, unloadModule, slotFor } from './helpers/pkcs11.ts';
import { registerWithP11Kit } from '../src/local/p11kit.ts';
import { launchNginx, freePort, handshake, fingerprintOf, nginxMainLine } from '../src/local/webservers.ts';
import { providerConfig, providerKeyPem, inspectOpenSsl } from '../src/agent/openssl-path.ts';

let fx: EnclaveFixture;
let p11: pkcs11js.PKCS11;
const PIN = '24682468';
test.before(async () => {
  fx = await startEnclave([
    { label: 'ec256', pin: PIN, names: ['ec256.test'], keyType: 'ec-p256' },
    { label: 'ec384', pin: PIN, names: ['ec384.test'], keyType: 'ec-p384' },
    { label: 'rsa', pin: PIN, names: ['both.test'] },
    { label: 'ecboth', pin: PIN, names: ['both.test'], keyType: 'ec-p256' },
  ], { prefix: 'ecdsa' });
  process.env.NITRO_ACM_KEY_ADDRESS = fx.address;
  p11 = loadModule();
});
test.after.always(async () => {
  unloadModule(p11);
  await fx?.cleanup();
});

function session(label: string): Buffer {
  const s = p11.C_OpenSession(slotFor(p11, label), pkcs11js.CKF_SERIAL_SESSION);
  p11.C_Login(s, pkcs11js.CKU_USER, PIN);
  return s;
}
function find(s: Buffer, cls: number): Buffer {
  p11.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_CLASS, value: cls }]);
  const [h] = p11.C_FindObjects(s, 1);
  p11.C_FindObjectsFinal(s);
  return h;
}

for (const [label, curve, oid, hash, size] of [['ec256', 'prime256v1', '06082a8648ce3d030107', 'sha256', 64], ['ec384', 'secp384r1', '06052b81040022', 'sha384', 96]] as const) {
  test(`${label}: CKK_EC objects carry the certificate's curve and point; CKM_ECDSA and CKM_ECDSA_SHA* signatures verify with the certificate`, (t) => {
    const s = session(label);
    const cert = new crypto.X509Certificate(fx.tokens.find((x) => x.label === label)!.certPem);
    t.is(cert.publicKey.asymmetricKeyDetails?.namedCurve, curve);
    const priv = find(s, pkcs11js.CKO_PRIVATE_KEY), pub = find(s, pkcs11js.CKO_PUBLIC_KEY);
    const a = p11.C_GetAttributeValue(s, priv, [{ type: pkcs11js.CKA_KEY_TYPE }, { type: pkcs11js.CKA_EC_PARAMS }, { type: pkcs11js.CKA_SIGN }, { type: pkcs11js.CKA_DECRYPT }]);
    t.is(Number((a[0].value as Buffer).readBigUInt64LE(0)), pkcs11js.CKK_EC);
    t.is((a[1].value as Buffer).toString('hex'), oid, 'CKA_EC_PARAMS is the named curve');
    t.deepEqual([a[2].value, a[3].value], [Buffer.from([1]), Buffer.from([0])], 'signs, does not decrypt');
    const point = p11.C_GetAttributeValue(s, pub, [{ type: pkcs11js.CKA_EC_POINT }])[0].value as Buffer;
    const jwk = cert.publicKey.export({ format: 'jwk' });
    const raw = Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x!, 'base64url'), Buffer.from(jwk.y!, 'base64url')]);
    t.deepEqual(point, Buffer.concat([Buffer.from([4, raw.length]), raw]), 'CKA_EC_POINT: DER OCTET STRING of the uncompressed point');

    const data = crypto.randomBytes(300);
    p11.C_SignInit(s, { mechanism: pkcs11js.CKM_ECDSA }, priv);
    const overDigest = p11.C_Sign(s, crypto.createHash(hash).update(data).digest(), Buffer.alloc(200));
    t.is(overDigest.length, size, 'r||s');
    t.true(crypto.verify(hash, data, { key: cert.publicKey, dsaEncoding: 'ieee-p1363' }, overDigest), 'CKM_ECDSA verifies');
    for (const [mech, h] of [[pkcs11js.CKM_ECDSA_SHA256, 'sha256'], [pkcs11js.CKM_ECDSA_SHA384, 'sha384'], [pkcs11js.CKM_ECDSA_SHA512, 'sha512']] as const) {
      p11.C_SignInit(s, { mechanism: mech }, priv);
      p11.C_SignUpdate(s, data.subarray(0, 100));
      p11.C_SignUpdate(s, data.subarray(100));
      const sig = p11.C_SignFinal(s, Buffer.alloc(200));
      t.true(crypto.verify(h, data, { key: cert.publicKey, dsaEncoding: 'ieee-p1363' }, sig), `${h}: multi-part verifies`);
    }
    t.throws(() => p11.C_SignInit(s, { mechanism: pkcs11js.CKM_RSA_PKCS }, priv), { message: /CKR_KEY_TYPE_INCONSISTENT/ });
    t.throws(() => p11.C_DecryptInit(s, { mechanism: pkcs11js.CKM_RSA_PKCS }, priv), { message: /CKR_KEY_TYPE_INCONSISTENT/ });
    p11.C_CloseSession(s);
  });
}

async function nginxFor(t: { teardown(f: () => unknown): void }, openssl: 'engine' | 'provider', servers: { name: string; labels: string[] }[]) {
  registerWithP11Kit();
  const dir = fs.mkdtempSync(path.join(fx.dir, `nginx-${openssl}-`));
  fs.chmodSync(dir, 0o755);
  const pinFile = path.join(dir, 'pin');
  fs.writeFileSync(pinFile, PIN, { mode: 0o444 });
  const conf = path.join(dir, 'openssl.cnf');
  fs.writeFileSync(conf, providerConfig(conf, inspectOpenSsl()));
  const keyLine = (label: string) => {
    const uri = `pkcs11:token=${label};type=private?pin-source=file:${pinFile}`;
    if (openssl === 'engine') return `"engine:pkcs11:${uri}"`;
    const file = path.join(dir, `${label}.key-uri.pem`);
    fs.writeFileSync(file, providerKeyPem(uri));
    return file;
  };
  const port = await freePort();
  fs.mkdirSync(path.join(dir, 'tmp'));
  const cert = (label: string) => fx.tokens.find((x) => x.label === label)!.fullchain;
  fs.writeFileSync(path.join(dir, 'nginx.conf'), `daemon off;\nworker_processes 2;\nerror_log ${dir}/error.log notice;\npid ${dir}/nginx.pid;\n${nginxMainLine(openssl)}\nenv NITRO_ACM_KEY_ADDRESS;\nevents { worker_connections 64; }\nhttp {\n  access_log off;\n  client_body_temp_path ${dir}/tmp;\n  ssl_session_cache off;\n  ssl_session_tickets off;\n${servers.map((s) => `  server {\n    listen 127.0.0.1:${port} ssl;\n    server_name ${s.name};\n    ssl_protocols TLSv1.2 TLSv1.3;\n${s.labels.map((l) => `    ssl_certificate ${cert(l)};\n    ssl_certificate_key ${keyLine(l)};\n`).join('')}    location / { return 200 "${s.name}\\n"; }\n  }\n`).join('')}}\n`);
  const nginx = await launchNginx({ prefix: dir, conf: path.join(dir, 'nginx.conf'), port, env: { NITRO_ACM_KEY_ADDRESS: fx.address, ...(openssl === 'provider' ? { OPENSSL_CONF: conf } : {}) } });
  t.teardown(() => nginx.stop());
  return port;
}

for (const openssl of ['engine', 'provider'] as const) {
  test.serial(`${openssl}: nginx serves P-256 and P-384 certificates from the enclave, TLS 1.2 and 1.3`, async (t) => {
    const port = await nginxFor(t, openssl, [{ name: 'ec256.test', labels: ['ec256'] }, { name: 'ec384.test', labels: ['ec384'] }]);
    for (const label of ['ec256', 'ec384']) {
      for (const v of ['TLSv1.2', 'TLSv1.3'] as const) {
        const h = await handshake(port, { servername: `${label}.test`, ca: fx.ca.certPem, minVersion: v, maxVersion: v });
        t.deepEqual([h.protocol, h.fingerprint256], [v, fingerprintOf(fx.tokens.find((x) => x.label === label)!.certPem)], `${label} over ${v}`);
      }
    }
  });

  test.serial(`${openssl}: one nginx server with an RSA and an ECDSA certificate: each client gets the one it prefers`, async (t) => {
    const port = await nginxFor(t, openssl, [{ name: 'both.test', labels: ['rsa', 'ecboth'] }]);
    const fp = (label: string) => fingerprintOf(fx.tokens.find((x) => x.label === label)!.certPem);
    for (const v of ['TLSv1.2', 'TLSv1.3'] as const) {
      const ec = await handshake(port, { servername: 'both.test', ca: fx.ca.certPem, minVersion: v, maxVersion: v, sigalgs: 'ecdsa_secp256r1_sha256' });
      t.is(ec.fingerprint256, fp('ecboth'), `${v}: an ECDSA-only client gets the P-256 certificate`);
      const rsa = await handshake(port, { servername: 'both.test', ca: fx.ca.certPem, minVersion: v, maxVersion: v, sigalgs: 'rsa_pss_rsae_sha256:rsa_pkcs1_sha256' });
      t.is(rsa.fingerprint256, fp('rsa'), `${v}: an RSA-only client gets the RSA certificate`);
    }
  });
}
