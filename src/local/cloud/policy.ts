// The part of IAM policy evaluation that KMS key policies need here: explicit
// Deny wins, otherwise an Allow whose principal, action and conditions all match,
// otherwise denied. Conditions: StringEquals and StringEqualsIgnoreCase; a
// condition on a key the request does not have is false (so a Decrypt without a
// Recipient never satisfies a kms:RecipientAttestation:* condition), and an
// operator this evaluator does not know makes its statement never apply.

export interface PolicyRequest {
  action: string; // e.g. kms:Decrypt
  principalArn: string; // role ARN of the caller, or the account root for the admin
  context: Map<string, string>; // condition keys present in the request
}

type OneOrMany<T> = T | T[];
interface Statement {
  Sid?: string;
  Effect: 'Allow' | 'Deny';
  Principal?: '*' | { AWS?: OneOrMany<string> };
  Action?: OneOrMany<string>;
  Condition?: Record<string, Record<string, OneOrMany<string>>>;
}
export interface KeyPolicy { Version?: string; Statement: OneOrMany<Statement> }

export class PolicyError extends Error {}

const many = <T>(v: OneOrMany<T> | undefined): T[] => (v === undefined ? [] : Array.isArray(v) ? v : [v]);

/** Parses and checks the shape of a policy document; errors name the statement and field. */
export function parsePolicy(text: string): KeyPolicy {
  let p: KeyPolicy;
  try { p = JSON.parse(text) as KeyPolicy; } catch (e) { throw new PolicyError(`policy is not JSON: ${(e as Error).message}`); }
  const statements = many(p?.Statement);
  if (statements.length === 0) throw new PolicyError('policy has no Statement');
  statements.forEach((s, i) => {
    if (s.Effect !== 'Allow' && s.Effect !== 'Deny') throw new PolicyError(`Statement[${i}].Effect must be Allow or Deny`);
    if (many(s.Action).length === 0) throw new PolicyError(`Statement[${i}].Action is missing`);
  });
  return p;
}

function actionMatches(patterns: string[], action: string): boolean {
  return patterns.some((p) => {
    const re = new RegExp(`^${p.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`, 'i');
    return re.test(action);
  });
}

function principalMatches(s: Statement, arn: string): boolean {
  if (s.Principal === '*') return true;
  return many(s.Principal?.AWS).some((p) => p === '*' || p === arn);
}

function conditionsHold(s: Statement, context: Map<string, string>): boolean {
  for (const [op, entries] of Object.entries(s.Condition ?? {})) {
    const ignoreCase = op === 'StringEqualsIgnoreCase';
    if (op !== 'StringEquals' && !ignoreCase) return false;
    for (const [key, expected] of Object.entries(entries)) {
      const actual = context.get(key);
      if (actual === undefined) return false;
      const norm = (v: string) => (ignoreCase ? v.toLowerCase() : v);
      if (!many(expected).some((e) => norm(e) === norm(actual))) return false;
    }
  }
  return true;
}

export function evaluate(policy: KeyPolicy, req: PolicyRequest): { allowed: boolean; reason: string } {
  let allow: string | undefined;
  for (const [i, s] of many(policy.Statement).entries()) {
    if (!principalMatches(s, req.principalArn) || !actionMatches(many(s.Action), req.action) || !conditionsHold(s, req.context)) continue;
    const name = s.Sid ? `"${s.Sid}"` : `Statement[${i}]`;
    if (s.Effect === 'Deny') return { allowed: false, reason: `explicitly denied by ${name}` };
    allow ??= name;
  }
  return allow ? { allowed: true, reason: `allowed by ${allow}` } : { allowed: false, reason: 'no statement in the key policy allows it' };
}
