// The agent's check before pointing a web server at a key: a challenge signed
// through the PKCS#11 module verifies with the certificate; anything else fails
// with the reason.
import test from 'ava';
import { verifyTokenSigns, ChallengeError } from '../src/agent/challenge.ts';
import { startEnclave, MODULE_PATH, type EnclaveFixture } from './helpers/enclave.ts';
import { ckaIdOf } from '../shared/key-id.ts';

/** The token's key as the agent expects it: found by the CKA_ID of `idOf`'s key, verified with `certificatePem`. */
const expect = (certificatePem: string, idOf = certificatePem) => ({ keys: [{ ckaId: ckaIdOf(idOf), certificatePem }] });

let fx: EnclaveFixture;
test.before(async () => {
  process.env.NITRO_ACM_P11_QUIET = '1';
  fx = await startEnclave([
    { label: 'good', pin: '11223344', names: ['good.test'] }, { label: 'other', pin: '55667788', names: ['other.test'] },
    { label: 'ec256', pin: '11223344', names: ['ec256.test'], keyType: 'ec-p256' }, { label: 'ec384', pin: '11223344', names: ['ec384.test'], keyType: 'ec-p384' },
  ], { prefix: 'challenge' });
});
test.after.always(async () => { await fx?.cleanup(); });

test.serial('a token that signs with its certificate\'s key passes', async (t) => {
  await t.notThrowsAsync(verifyTokenSigns({ address: fx.address, label: 'good', pin: '11223344', ...expect(fx.tokens[0].certPem), modulePath: MODULE_PATH }));
});

test.serial('wrong PIN, wrong certificate, unknown token: each refused with the reason', async (t) => {
  const base = { address: fx.address, modulePath: MODULE_PATH };
  await t.throwsAsync(verifyTokenSigns({ ...base, label: 'other', pin: '00000000', ...expect(fx.tokens[1].certPem) }), { instanceOf: ChallengeError, message: /token "other": login refused \(CKR_PIN_INCORRECT/ });
  await t.throwsAsync(verifyTokenSigns({ ...base, label: 'good', pin: '11223344', ...expect(fx.tokens[1].certPem, fx.tokens[0].certPem) }), { instanceOf: ChallengeError, message: /does not verify with the certificate's public key/ });
  await t.throwsAsync(verifyTokenSigns({ ...base, label: 'good', pin: '11223344', ...expect(fx.tokens[1].certPem) }), { instanceOf: ChallengeError, message: /token "good": 0 private keys with id [0-9a-f]{40}, expected 1/ });
  await t.throwsAsync(verifyTokenSigns({ ...base, label: 'nope', pin: '11223344', ...expect(fx.tokens[0].certPem) }), { instanceOf: ChallengeError, message: /token "nope" is not listed/ });
});

test.serial('RSA and ECDSA keys (P-256, P-384) pass the challenge with their certificate, and with their public key object when there is none', async (t) => {
  for (const [i, label] of [[0, 'good'], [2, 'ec256'], [3, 'ec384']] as const) {
    const base = { address: fx.address, modulePath: MODULE_PATH, label, pin: '11223344' };
    await t.notThrowsAsync(verifyTokenSigns({ ...base, ...expect(fx.tokens[i].certPem) }), `${label} with its certificate`);
    // As a FileDb key without cert_pem: the public key object's CKA_MODULUS and
    // CKA_PUBLIC_EXPONENT, or CKA_EC_PARAMS and CKA_EC_POINT.
    await t.notThrowsAsync(verifyTokenSigns({ ...base, keys: [{ ckaId: ckaIdOf(fx.tokens[i].certPem) }] }), `${label} with its public key object`);
  }
  await t.throwsAsync(verifyTokenSigns({ address: fx.address, modulePath: MODULE_PATH, label: 'ec256', pin: '11223344', keys: [{ ckaId: ckaIdOf(fx.tokens[2].certPem), certificatePem: fx.tokens[3].certPem }] }), { instanceOf: ChallengeError, message: /does not verify with the certificate's public key/ });
});

test.serial('the slot remembered for a label is checked again: with the enclave gone the challenge fails, and once it is back the same token passes', async (t) => {
  const good = { address: fx.address, modulePath: MODULE_PATH, label: 'good', pin: '11223344', ...expect(fx.tokens[0].certPem) };
  await t.notThrowsAsync(verifyTokenSigns(good));
  await fx.stop();
  await t.throwsAsync(verifyTokenSigns(good), { instanceOf: Error });
  await fx.start();
  await t.notThrowsAsync(verifyTokenSigns(good));
  await t.notThrowsAsync(verifyTokenSigns({ ...good, label: 'other', pin: '55667788', ...expect(fx.tokens[1].certPem) }), 'and so does another token');
});
