// The PKCS#11 module driven through pkcs11js and graphene-pk11 against a real
// enclave app (local mode, unix socket): every mechanism, the error codes that
// applications rely on, and recovery when the enclave goes away and comes back.
import test from 'ava';
import crypto from 'node:crypto';
import pkcs11js from 'pkcs11js';
import * as graphene from 'graphene-pk11';
import { startEnclave, MODULE_PATH, type EnclaveFixture } from './helpers/enclave.ts';
import { loadModule, unloadModule, slotFor as slotOf } from './helpers/pkcs11.ts';

const PIN = '246813';
let fx: EnclaveFixture;
let p11: pkcs11js.PKCS11;

test.before(async () => {
  fx = await startEnclave([
    { label: 'rsa2048', pin: PIN, names: ['a.test'] },
    { label: 'rsa4096', pin: PIN, names: ['b.test'], bits: 4096 },
  ], { prefix: 'module' });
  process.env.NITRO_ACM_KEY_ADDRESS = fx.address;
  process.env.NITRO_ACM_TIMEOUT_MS = '2000';
  process.env.NITRO_ACM_P11_QUIET = '1';
  p11 = loadModule();
});

test.after.always(async () => {
  unloadModule(p11);
  await fx?.cleanup();
});

const slotFor = (label: string) => slotOf(p11, label);

const ulong = (b: unknown) => Number((b as Buffer).readBigUInt64LE(0));

/** A session logged in to the token, closed (and so logged out) when the test ends. */
function loggedInSession(t: { teardown(fn: () => void): void }, label: string): Buffer {
  const s = p11.C_OpenSession(slotFor(label), pkcs11js.CKF_SERIAL_SESSION);
  t.teardown(() => { try { p11.C_CloseSession(s); } catch { /* closed by the test */ } });
  try { p11.C_Login(s, pkcs11js.CKU_USER, PIN); } catch (e) { if ((e as { code?: number }).code !== pkcs11js.CKR_USER_ALREADY_LOGGED_IN) throw e; }
  return s;
}

function find(s: Buffer, cls: number): Buffer[] {
  p11.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_CLASS, value: cls }]);
  const out = p11.C_FindObjects(s, 16);
  p11.C_FindObjectsFinal(s);
  return out;
}

function rvOf(fn: () => unknown): number | undefined {
  try { fn(); return pkcs11js.CKR_OK; } catch (e) { return (e as { code?: number }).code; }
}

const DIGEST_INFO: Record<string, Buffer> = {
  sha256: Buffer.from('3031300d060960864801650304020105000420', 'hex'),
  sha384: Buffer.from('3041300d060960864801650304020205000430', 'hex'),
  sha512: Buffer.from('3051300d060960864801650304020305000440', 'hex'),
};
const CKM_HASH: Record<string, number> = { sha256: pkcs11js.CKM_SHA256, sha384: pkcs11js.CKM_SHA384, sha512: pkcs11js.CKM_SHA512 };
const CKG_MGF: Record<string, number> = { sha256: pkcs11js.CKG_MGF1_SHA256, sha384: pkcs11js.CKG_MGF1_SHA384, sha512: pkcs11js.CKG_MGF1_SHA512 };

for (const label of ['rsa2048', 'rsa4096']) {
  test(`${label}: every signature mechanism signs and the signature verifies with the certificate's key`, (t) => {
    const token = fx.tokens.find((x) => x.label === label)!;
    const pub = crypto.createPublicKey(token.certPem);
    const k = pub.asymmetricKeyDetails!.modulusLength! / 8;
    const s = loggedInSession(t, label);
    const [key] = find(s, pkcs11js.CKO_PRIVATE_KEY);
    const msg = crypto.randomBytes(1000);
    const sign = (mechanism: pkcs11js.Mechanism, data: Buffer) => {
      p11.C_SignInit(s, mechanism, key);
      return p11.C_Sign(s, data, Buffer.alloc(k));
    };
    for (const h of ['sha256', 'sha384', 'sha512']) {
      const digest = crypto.createHash(h).update(msg).digest();
      // CKM_RSA_PKCS over a DigestInfo, as TLS 1.2 (PKCS#1 v1.5 signature algorithms) uses it.
      t.true(crypto.verify(h, msg, pub, sign({ mechanism: pkcs11js.CKM_RSA_PKCS }, Buffer.concat([DIGEST_INFO[h], digest]))), `RSA_PKCS ${h}`);
      // CKM_RSA_PKCS_PSS over a digest, as TLS 1.3 uses it.
      const pss = { mechanism: pkcs11js.CKM_RSA_PKCS_PSS, parameter: { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: CKM_HASH[h], mgf: CKG_MGF[h], saltLen: digest.length } };
      t.true(crypto.verify(h, msg, { key: pub, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: digest.length }, sign(pss as pkcs11js.Mechanism, digest)), `RSA_PKCS_PSS ${h}`);
      // Hash-and-sign mechanisms, one part and several.
      const ckm = { sha256: pkcs11js.CKM_SHA256_RSA_PKCS, sha384: pkcs11js.CKM_SHA384_RSA_PKCS, sha512: pkcs11js.CKM_SHA512_RSA_PKCS }[h]!;
      t.true(crypto.verify(h, msg, pub, sign({ mechanism: ckm }, msg)), `${h}_RSA_PKCS`);
      p11.C_SignInit(s, { mechanism: ckm }, key);
      p11.C_SignUpdate(s, msg.subarray(0, 300));
      p11.C_SignUpdate(s, msg.subarray(300));
      t.true(crypto.verify(h, msg, pub, p11.C_SignFinal(s, Buffer.alloc(k))), `${h}_RSA_PKCS multi-part`);
      const ckmPss = { sha256: pkcs11js.CKM_SHA256_RSA_PKCS_PSS, sha384: pkcs11js.CKM_SHA384_RSA_PKCS_PSS, sha512: pkcs11js.CKM_SHA512_RSA_PKCS_PSS }[h]!;
      const sig = sign({ ...pss, mechanism: ckmPss } as pkcs11js.Mechanism, msg);
      t.true(crypto.verify(h, msg, { key: pub, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: digest.length }, sig), `${h}_RSA_PKCS_PSS`);
    }
    // CKM_RSA_X_509: raw; the public operation must give the input back.
    const raw = Buffer.concat([Buffer.from([0]), crypto.randomBytes(k - 1)]);
    const rawSig = sign({ mechanism: pkcs11js.CKM_RSA_X_509 }, raw);
    t.deepEqual(crypto.publicDecrypt({ key: pub, padding: crypto.constants.RSA_NO_PADDING }, rawSig), raw);
    p11.C_CloseSession(s);
  });

  test(`${label}: decrypt mechanisms return what was encrypted to the certificate's key`, (t) => {
    const token = fx.tokens.find((x) => x.label === label)!;
    const pub = crypto.createPublicKey(token.certPem);
    const k = pub.asymmetricKeyDetails!.modulusLength! / 8;
    const s = loggedInSession(t, label);
    const [key] = find(s, pkcs11js.CKO_PRIVATE_KEY);
    const secret = crypto.randomBytes(48);
    const dec = (m: pkcs11js.Mechanism, ct: Buffer) => { p11.C_DecryptInit(s, m, key); return p11.C_Decrypt(s, ct, Buffer.alloc(k)); };
    // PKCS#1 v1.5 encryption by hand (Node refuses to decrypt it, but encrypts fine).
    t.deepEqual(dec({ mechanism: pkcs11js.CKM_RSA_PKCS }, crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_PADDING }, secret)), secret);
    const oaep = { mechanism: pkcs11js.CKM_RSA_PKCS_OAEP, parameter: { type: pkcs11js.CK_PARAMS_RSA_OAEP, hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, source: 1 /* CKZ_DATA_SPECIFIED */, sourceData: Buffer.from('label') } };
    t.deepEqual(dec(oaep as pkcs11js.Mechanism, crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256', oaepLabel: Buffer.from('label') }, secret)), secret);
    const raw = Buffer.concat([Buffer.alloc(1), crypto.randomBytes(k - 1)]);
    t.deepEqual(dec({ mechanism: pkcs11js.CKM_RSA_X_509 }, crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_NO_PADDING }, raw)), raw);
    // A wrong OAEP label is an invalid ciphertext, not a crash or a wrong answer.
    const bad = crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256', oaepLabel: Buffer.from('other') }, secret);
    t.is(rvOf(() => dec(oaep as pkcs11js.Mechanism, bad)), pkcs11js.CKR_ENCRYPTED_DATA_INVALID);
    // Security finding 7 (issue 11): labels of 256 bytes and more were dropped (sent empty).
    const long = crypto.randomBytes(300);
    const oaepLong = { ...oaep, parameter: { ...oaep.parameter, sourceData: long } };
    t.deepEqual(dec(oaepLong as pkcs11js.Mechanism, crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256', oaepLabel: long }, secret)), secret, 'a genuine 300-byte-label ciphertext decrypts');
    const unlabelled = crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, secret);
    t.is(rvOf(() => dec(oaepLong as pkcs11js.Mechanism, unlabelled)), pkcs11js.CKR_ENCRYPTED_DATA_INVALID, 'a ciphertext made with no label does not decrypt under a 300-byte one');
    const tooLong = { ...oaep, parameter: { ...oaep.parameter, sourceData: crypto.randomBytes(8193) } };
    t.is(rvOf(() => p11.C_DecryptInit(s, tooLong as pkcs11js.Mechanism, key)), pkcs11js.CKR_MECHANISM_PARAM_INVALID, 'a label over 8 KiB is refused at C_DecryptInit');
    p11.C_CloseSession(s);
  });
}

test('objects: private key is sensitive and not extractable; leaf and chain certificates are listed', (t) => {
  const s = loggedInSession(t, 'rsa2048');
  const [key] = find(s, pkcs11js.CKO_PRIVATE_KEY);
  const attrs = p11.C_GetAttributeValue(s, key, [
    { type: pkcs11js.CKA_SENSITIVE }, { type: pkcs11js.CKA_EXTRACTABLE }, { type: pkcs11js.CKA_ID }, { type: pkcs11js.CKA_MODULUS_BITS },
  ]);
  t.deepEqual(attrs[0].value, Buffer.from([1]));
  t.deepEqual(attrs[1].value, Buffer.from([0]));
  t.is(ulong(attrs[3].value), 2048);
  t.is(rvOf(() => p11.C_GetAttributeValue(s, key, [{ type: pkcs11js.CKA_PRIVATE_EXPONENT }])), pkcs11js.CKR_ATTRIBUTE_SENSITIVE);
  t.is(rvOf(() => p11.C_GetAttributeValue(s, key, [{ type: 0x7ffffff0 }])), pkcs11js.CKR_ATTRIBUTE_TYPE_INVALID);
  const certs = find(s, pkcs11js.CKO_CERTIFICATE).map((h) => p11.C_GetAttributeValue(s, h, [{ type: pkcs11js.CKA_VALUE }, { type: pkcs11js.CKA_CERTIFICATE_CATEGORY }, { type: pkcs11js.CKA_ID }]));
  t.is(certs.length, 2);
  const leaf = certs.find((c) => (c[2].value as Buffer).equals(attrs[2].value as Buffer))!;
  t.is(new crypto.X509Certificate(leaf[0].value as Buffer).fingerprint256, new crypto.X509Certificate(fx.tokens[0].certPem).fingerprint256);
  const ca = certs.find((c) => c !== leaf)!;
  t.is(ulong(ca[1].value), 2 /* authority */);
  t.is(new crypto.X509Certificate(ca[0].value as Buffer).fingerprint256, new crypto.X509Certificate(fx.ca.certPem).fingerprint256);
  p11.C_CloseSession(s);
});

test('login: a wrong PIN gives CKR_PIN_INCORRECT; private keys are hidden and unusable before login', (t) => {
  const slot = slotFor('rsa2048');
  const s = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
  t.teardown(() => { try { p11.C_CloseSession(s); } catch { /* closed */ } });
  t.is(rvOf(() => p11.C_Login(s, pkcs11js.CKU_USER, '000000')), pkcs11js.CKR_PIN_INCORRECT);
  t.is(rvOf(() => p11.C_Login(s, pkcs11js.CKU_USER, 'x'.repeat(256))), pkcs11js.CKR_PIN_INCORRECT, 'a PIN of a length no token has is incorrect (C_Login has no CKR_PIN_LEN_RANGE)');
  t.is(find(s, pkcs11js.CKO_PRIVATE_KEY).length, 0, 'private key invisible before login');
  t.is(find(s, pkcs11js.CKO_CERTIFICATE).length, 2, 'certificates are public');
  p11.C_Login(s, pkcs11js.CKU_USER, PIN);
  const [key] = find(s, pkcs11js.CKO_PRIVATE_KEY);
  t.is(rvOf(() => p11.C_Login(s, pkcs11js.CKU_USER, PIN)), pkcs11js.CKR_USER_ALREADY_LOGGED_IN);
  p11.C_Logout(s);
  t.is(rvOf(() => p11.C_SignInit(s, { mechanism: pkcs11js.CKM_RSA_PKCS }, key)), pkcs11js.CKR_USER_NOT_LOGGED_IN);
  t.is(rvOf(() => p11.C_Logout(s)), pkcs11js.CKR_USER_NOT_LOGGED_IN);
  p11.C_CloseSession(s);
});

test('bad arguments: unknown mechanism, missing or wrong PSS parameters, wrong input lengths, small buffers, stale handles', (t) => {
  const s = loggedInSession(t, 'rsa2048');
  const [key] = find(s, pkcs11js.CKO_PRIVATE_KEY);
  const [cert] = find(s, pkcs11js.CKO_CERTIFICATE);
  t.is(rvOf(() => p11.C_SignInit(s, { mechanism: pkcs11js.CKM_DSA }, key)), pkcs11js.CKR_MECHANISM_INVALID);
  // ECDSA is the module's, but not for an RSA key.
  t.is(rvOf(() => p11.C_SignInit(s, { mechanism: pkcs11js.CKM_ECDSA }, key)), pkcs11js.CKR_KEY_TYPE_INCONSISTENT);
  t.is(rvOf(() => p11.C_SignInit(s, { mechanism: pkcs11js.CKM_RSA_PKCS_PSS }, key)), pkcs11js.CKR_MECHANISM_PARAM_INVALID);
  const mismatched = { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS_PSS, parameter: { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: pkcs11js.CKM_SHA384, mgf: pkcs11js.CKG_MGF1_SHA384, saltLen: 48 } };
  t.is(rvOf(() => p11.C_SignInit(s, mismatched as pkcs11js.Mechanism, key)), pkcs11js.CKR_MECHANISM_PARAM_INVALID);
  t.is(rvOf(() => p11.C_SignInit(s, { mechanism: pkcs11js.CKM_RSA_PKCS }, cert)), pkcs11js.CKR_KEY_TYPE_INCONSISTENT);
  t.is(rvOf(() => p11.C_SignInit(s, { mechanism: pkcs11js.CKM_RSA_PKCS }, Buffer.from([0x99, 0x99, 0, 0, 0, 0, 0, 0]))), pkcs11js.CKR_KEY_HANDLE_INVALID);
  // PSS over something that is not a digest of the named hash.
  const pss = { mechanism: pkcs11js.CKM_RSA_PKCS_PSS, parameter: { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, saltLen: 32 } };
  p11.C_SignInit(s, pss as pkcs11js.Mechanism, key);
  t.is(rvOf(() => p11.C_Sign(s, Buffer.alloc(31), Buffer.alloc(256))), pkcs11js.CKR_DATA_LEN_RANGE);
  // PKCS#1 v1.5 input longer than k - 11.
  p11.C_SignInit(s, { mechanism: pkcs11js.CKM_RSA_PKCS }, key);
  t.is(rvOf(() => p11.C_Sign(s, Buffer.alloc(246), Buffer.alloc(256))), pkcs11js.CKR_DATA_LEN_RANGE);
  // Too small an output buffer keeps the operation active; the right size then works.
  p11.C_SignInit(s, { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS }, key);
  t.is(rvOf(() => p11.C_Sign(s, Buffer.from('x'), Buffer.alloc(100))), pkcs11js.CKR_BUFFER_TOO_SMALL);
  t.is(p11.C_Sign(s, Buffer.from('x'), Buffer.alloc(256)).length, 256);
  t.is(rvOf(() => p11.C_Sign(s, Buffer.from('x'), Buffer.alloc(256))), pkcs11js.CKR_OPERATION_NOT_INITIALIZED);
  p11.C_SignInit(s, { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS }, key);
  t.is(rvOf(() => p11.C_SignInit(s, { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS }, key)), pkcs11js.CKR_OPERATION_ACTIVE);
  p11.C_Sign(s, Buffer.from('x'), Buffer.alloc(256));
  // Decrypt input not the modulus length.
  p11.C_DecryptInit(s, { mechanism: pkcs11js.CKM_RSA_PKCS }, key);
  t.is(rvOf(() => p11.C_Decrypt(s, Buffer.alloc(100), Buffer.alloc(256))), pkcs11js.CKR_ENCRYPTED_DATA_LEN_RANGE);
  t.is(rvOf(() => p11.C_GetSessionInfo(Buffer.from([0x77, 0x77, 0, 0, 0, 0, 0, 0]))), pkcs11js.CKR_SESSION_HANDLE_INVALID);
  t.is(rvOf(() => p11.C_GetTokenInfo(Buffer.from([0x55, 0, 0, 0, 0, 0, 0, 0]))), pkcs11js.CKR_SLOT_ID_INVALID);
  t.is(rvOf(() => p11.C_OpenSession(slotFor('rsa2048'), 0)), pkcs11js.CKR_SESSION_PARALLEL_NOT_SUPPORTED);
  t.is(rvOf(() => p11.C_GenerateRandom(s, Buffer.alloc(8))), pkcs11js.CKR_RANDOM_NO_RNG);
  t.is(rvOf(() => p11.C_EncryptInit(s, { mechanism: pkcs11js.CKM_RSA_PKCS }, key)), pkcs11js.CKR_FUNCTION_NOT_SUPPORTED);
  p11.C_CloseSession(s);
});

test('graphene-pk11: the token, its mechanisms and a signature through the object API', (t) => {
  const mod = graphene.Module.load(MODULE_PATH, 'nitro-acm');
  // The module is already initialized in this process by pkcs11js: graphene shares that state.
  try { mod.initialize(); } catch (e) { if (!String(e).includes('CRYPTOKI_ALREADY_INITIALIZED')) throw e; }
  const slot = mod.getSlots(true).items(0);
  t.is(slot.getToken().manufacturerID.trim(), 'nitro-acm');
  t.true(slot.getMechanisms().items(0) !== undefined);
  const session = slot.open(graphene.SessionFlag.SERIAL_SESSION);
  try { session.login(PIN); } catch (e) { if (!String(e).includes('ALREADY_LOGGED_IN')) throw e; }
  const key = session.find({ class: graphene.ObjectClass.PRIVATE_KEY }).items(0).toType<graphene.PrivateKey>();
  const label = key.label;
  const token = fx.tokens.find((x) => x.label === label)!;
  const sig = session.createSign('SHA256_RSA_PKCS', key).once(Buffer.from('graphene'));
  t.true(crypto.verify('sha256', Buffer.from('graphene'), token.certPem, sig));
  session.close();
});

test.serial('the enclave goes away: CKR_DEVICE_ERROR without a hang; it comes back: signing resumes without a new login', async (t) => {
  const s = loggedInSession(t, 'rsa2048');
  const [key] = find(s, pkcs11js.CKO_PRIVATE_KEY);
  const pub = crypto.createPublicKey(fx.tokens[0].certPem);
  await fx.stop();
  const started = Date.now();
  p11.C_SignInit(s, { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS }, key);
  t.is(rvOf(() => p11.C_Sign(s, Buffer.from('gone'), Buffer.alloc(256))), pkcs11js.CKR_DEVICE_ERROR);
  t.true(Date.now() - started < 2500, 'fails within the timeout');
  // Public objects stay listed from the cache while the enclave is away.
  t.is(find(s, pkcs11js.CKO_CERTIFICATE).length, 2);
  await fx.start();
  await new Promise((r) => setTimeout(r, 300)); // past the reconnect back-off
  p11.C_SignInit(s, { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS }, key);
  const sig = p11.C_Sign(s, Buffer.from('back'), Buffer.alloc(256));
  t.true(crypto.verify('sha256', Buffer.from('back'), pub, sig));
  p11.C_CloseSession(s);
});
