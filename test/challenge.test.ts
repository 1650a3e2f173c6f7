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
  fx = await startEnclave([{ label: 'good', pin: '11223344', names: ['good.test'] }, { label: 'other', pin: '55667788', names: ['other.test'] }], { prefix: 'challenge' });
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
