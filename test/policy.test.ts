// Key policy evaluation in the local KMS, as KMS does it for attestation
// conditions: explicit Deny wins, conditions on absent keys fail, values compare
// case-insensitively under StringEqualsIgnoreCase only.
import test from 'ava';
import { evaluate, parsePolicy } from '../src/local/cloud/policy.ts';

const role = 'arn:aws:iam::123456789012:role/web';
const pcr0 = 'AB'.repeat(48);
const policy = parsePolicy(JSON.stringify({
  Statement: [
    { Sid: 'enclave', Effect: 'Allow', Principal: { AWS: role }, Action: 'kms:Decrypt', Condition: { StringEqualsIgnoreCase: { 'kms:RecipientAttestation:ImageSha384': pcr0 } } },
    { Sid: 'exact', Effect: 'Allow', Principal: { AWS: role }, Action: ['kms:GenerateRandom'], Condition: { StringEquals: { 'kms:RecipientAttestation:PCR8': pcr0 } } },
    { Sid: 'no debug', Effect: 'Deny', Principal: '*', Action: 'kms:*', Condition: { StringEquals: { 'kms:RecipientAttestation:PCR0': '00'.repeat(48) } } },
  ],
}));
const ctx = (o: Record<string, string>) => new Map(Object.entries(o));

test('ImageSha384 matches case-insensitively; a request without the key is refused', (t) => {
  t.true(evaluate(policy, { action: 'kms:Decrypt', principalArn: role, context: ctx({ 'kms:RecipientAttestation:ImageSha384': pcr0.toLowerCase() }) }).allowed);
  t.false(evaluate(policy, { action: 'kms:Decrypt', principalArn: role, context: ctx({}) }).allowed);
  t.false(evaluate(policy, { action: 'kms:Decrypt', principalArn: 'arn:aws:iam::123456789012:role/other', context: ctx({ 'kms:RecipientAttestation:ImageSha384': pcr0 }) }).allowed);
});

test('StringEquals is case-sensitive; an explicit Deny wins over any Allow', (t) => {
  t.false(evaluate(policy, { action: 'kms:GenerateRandom', principalArn: role, context: ctx({ 'kms:RecipientAttestation:PCR8': pcr0.toLowerCase() }) }).allowed);
  const r = evaluate(policy, { action: 'kms:Decrypt', principalArn: role, context: ctx({ 'kms:RecipientAttestation:ImageSha384': pcr0, 'kms:RecipientAttestation:PCR0': '00'.repeat(48) }) });
  t.false(r.allowed);
  t.regex(r.reason, /explicitly denied by "no debug"/);
});

test('malformed policies are refused with the statement and field', (t) => {
  t.throws(() => parsePolicy('{'), { message: /not JSON/ });
  t.throws(() => parsePolicy('{"Statement":[{"Effect":"Maybe","Action":"kms:*"}]}'), { message: /Statement\[0\]\.Effect must be Allow or Deny/ });
  t.throws(() => parsePolicy('{"Statement":[{"Effect":"Allow"}]}'), { message: /Statement\[0\]\.Action is missing/ });
});
