// Local KMS key policies with IAM's condition operators (security finding 10,
// issue 11): a "deny unless attested" statement written with any operator real
// key policies use must deny a Decrypt that carries no attestation; an operator
// the evaluator does not know is refused when the policy is put.
import test from 'ava';
import { evaluate, parsePolicy } from '../src/local/cloud/policy.ts';

const role = 'arn:aws:iam::123456789012:role/app';
const pcr0 = 'ab'.repeat(48);
const attested = new Map([['kms:RecipientAttestation:PCR0', pcr0], ['kms:RecipientAttestation:ImageSha384', pcr0]]);
const plain = new Map<string, string>();

/** Allow the role to decrypt, but deny with `condition` (the "unless attested" guard). */
const guarded = (condition: Record<string, Record<string, string | string[]>>) => parsePolicy(JSON.stringify({
  Statement: [
    { Effect: 'Allow', Principal: { AWS: role }, Action: 'kms:Decrypt', Resource: '*' },
    { Sid: 'DenyUnlessAttested', Effect: 'Deny', Principal: '*', Action: 'kms:Decrypt', Resource: '*', Condition: condition },
  ],
}));
const decrypt = (p: ReturnType<typeof parsePolicy>, context: Map<string, string>) => evaluate(p, { action: 'kms:Decrypt', principalArn: role, context }).allowed;

for (const [name, condition] of [
  ['StringNotEqualsIgnoreCase', { StringNotEqualsIgnoreCase: { 'kms:RecipientAttestation:PCR0': pcr0.toUpperCase() } }],
  ['StringNotEquals', { StringNotEquals: { 'kms:RecipientAttestation:PCR0': pcr0 } }],
  ['Null', { Null: { 'kms:RecipientAttestation:PCR0': 'true' } }],
  ['StringNotLike', { StringNotLike: { 'kms:RecipientAttestation:PCR0': 'abab*' } }],
] as const) {
  test(`10. a Deny guarded by ${name}: a Decrypt without an attestation is denied, an attested one allowed`, (t) => {
    const p = guarded(condition as Record<string, Record<string, string>>);
    t.false(decrypt(p, plain), 'no Recipient: denied (before the fix the unknown operator disabled the Deny)');
    t.true(decrypt(p, attested));
    if (name !== 'Null') t.false(decrypt(p, new Map([['kms:RecipientAttestation:PCR0', 'cd'.repeat(48)]])), 'another enclave: denied');
  });
}

test('10. operators as IAM defines them: Like wildcards, IfExists, Null false, Bool, Arn, Numeric, Date, set qualifiers', (t) => {
  const allowIf = (condition: object) => parsePolicy(JSON.stringify({ Statement: [{ Effect: 'Allow', Principal: { AWS: role }, Action: 'kms:*', Condition: condition }] }));
  const ctx = new Map([['k', 'prefix-middle-end'], ['n', '42'], ['b', 'true'], ['arn', 'arn:aws:iam::123456789012:role/x/y'], ['d', '2026-12-02T00:00:00Z']]);
  const ok = (c: object) => evaluate(allowIf(c), { action: 'kms:Decrypt', principalArn: role, context: ctx }).allowed;
  t.true(ok({ StringLike: { k: 'prefix-*-e?d' } }));
  t.false(ok({ StringLike: { k: 'prefix-?-end' } }));
  t.true(ok({ StringEqualsIfExists: { absent: 'x' } }), 'IfExists: an absent key passes');
  t.false(ok({ StringEquals: { absent: 'x' } }), 'a positive operator on an absent key fails');
  t.true(ok({ Null: { k: 'false', absent: 'true' } }));
  t.false(ok({ Null: { k: 'true' } }));
  t.true(ok({ Bool: { b: 'TRUE' } }));
  t.true(ok({ ArnLike: { arn: 'arn:aws:iam::123456789012:role/*' } }));
  t.false(ok({ ArnEquals: { arn: 'arn:aws:iam::123456789012:role/*' } }));
  t.true(ok({ NumericGreaterThanEquals: { n: '42' }, NumericLessThan: { n: '43' } }));
  t.false(ok({ NumericEquals: { n: 'forty-two' } }));
  t.true(ok({ DateLessThan: { d: '2027-01-01T00:00:00Z' } }));
  t.true(ok({ 'ForAnyValue:StringEquals': { k: ['nope', 'prefix-middle-end'] } }));
  t.true(ok({ StringEquals: { k: ['nope', 'prefix-middle-end'] } }), 'several values: any one matches');
});

test('10. an unknown or misspelt operator is refused when the policy is put, naming the statement', (t) => {
  for (const op of ['StringEqualsIgnorecase', 'NotAnOperator', 'NullIfExists', 'StringEquals:x']) {
    t.throws(() => guarded({ [op]: { 'kms:RecipientAttestation:PCR0': pcr0 } }), { message: new RegExp(`Statement\\[1\\]\\.Condition: unknown condition operator "${op.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}"`) });
  }
});
