// The part of IAM policy evaluation that KMS key policies need here: explicit
// Deny wins, otherwise an Allow whose principal, action and conditions all match,
// otherwise denied. Condition operators as IAM defines them: String*, Numeric*,
// Date*, Bool, Binary, Arn*, Null, each with IfExists and the ForAnyValue: /
// ForAllValues: set qualifiers. A key the request does not have fails a positive
// operator (so a Decrypt without a Recipient never satisfies a
// kms:RecipientAttestation:* StringEquals) and satisfies a negated one (so "Deny
// unless StringNotEquals ..." denies it); an operator this evaluator does not know
// is refused when the policy is put, never silently skipped.

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
    if (s.Condition !== undefined && (typeof s.Condition !== 'object' || s.Condition === null || Array.isArray(s.Condition))) throw new PolicyError(`Statement[${i}].Condition must be an object`);
    for (const [name, entries] of Object.entries(s.Condition ?? {})) {
      operator(name, `Statement[${i}].Condition`);
      if (typeof entries !== 'object' || entries === null || Array.isArray(entries)) throw new PolicyError(`Statement[${i}].Condition.${name} must map condition keys to values`);
    }
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

type Test = (actual: string, expected: string) => boolean;

/** Shell-style wildcards of StringLike and ArnLike: * any run, ? one character. */
const like = (pattern: string, caseless = false) => new RegExp(`^${pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`, caseless ? 'is' : 's');
const num = (v: string) => (/^-?\d+(\.\d+)?$/.test(v.trim()) ? Number(v) : NaN);
const date = (v: string) => (/^\d+$/.test(v) ? Number(v) * 1000 : Date.parse(v));

/** The base operators; `negated` ones hold when no value matches, and when the key is absent. */
const OPERATORS: Record<string, { test: Test; negated?: true }> = {
  StringEquals: { test: (a, e) => a === e },
  StringNotEquals: { test: (a, e) => a === e, negated: true },
  StringEqualsIgnoreCase: { test: (a, e) => a.toLowerCase() === e.toLowerCase() },
  StringNotEqualsIgnoreCase: { test: (a, e) => a.toLowerCase() === e.toLowerCase(), negated: true },
  StringLike: { test: (a, e) => like(e).test(a) },
  StringNotLike: { test: (a, e) => like(e).test(a), negated: true },
  NumericEquals: { test: (a, e) => num(a) === num(e) },
  NumericNotEquals: { test: (a, e) => num(a) === num(e), negated: true },
  NumericLessThan: { test: (a, e) => num(a) < num(e) },
  NumericLessThanEquals: { test: (a, e) => num(a) <= num(e) },
  NumericGreaterThan: { test: (a, e) => num(a) > num(e) },
  NumericGreaterThanEquals: { test: (a, e) => num(a) >= num(e) },
  DateEquals: { test: (a, e) => date(a) === date(e) },
  DateNotEquals: { test: (a, e) => date(a) === date(e), negated: true },
  DateLessThan: { test: (a, e) => date(a) < date(e) },
  DateLessThanEquals: { test: (a, e) => date(a) <= date(e) },
  DateGreaterThan: { test: (a, e) => date(a) > date(e) },
  DateGreaterThanEquals: { test: (a, e) => date(a) >= date(e) },
  Bool: { test: (a, e) => a.toLowerCase() === e.toLowerCase() },
  BinaryEquals: { test: (a, e) => a === e },
  ArnEquals: { test: (a, e) => a === e },
  ArnNotEquals: { test: (a, e) => a === e, negated: true },
  ArnLike: { test: (a, e) => like(e).test(a) },
  ArnNotLike: { test: (a, e) => like(e).test(a), negated: true },
};

interface Operator { base: string; ifExists: boolean; set?: 'ForAnyValue' | 'ForAllValues' }

/** Splits "ForAnyValue:StringLikeIfExists" into its parts; throws PolicyError for an operator IAM does not have. */
function operator(name: string, where: string): Operator {
  const m = /^(?:(ForAnyValue|ForAllValues):)?(.+?)(IfExists)?$/.exec(name)!;
  const base = m[2];
  if (base === 'Null' && !m[1] && !m[3]) return { base, ifExists: false };
  if (!OPERATORS[base]) throw new PolicyError(`${where}: unknown condition operator "${name}" (expected an IAM operator such as StringEquals, StringNotEqualsIgnoreCase, StringLike, Null, Bool, ArnLike, NumericLessThan)`);
  return { base, ifExists: Boolean(m[3]), set: m[1] as Operator['set'] };
}

/** One operator on one key, IAM's way; `actual` is the request's value, or undefined when it has none. */
function holds(op: Operator, actual: string | undefined, expected: string[]): boolean {
  if (op.base === 'Null') return expected.some((e) => (e.toLowerCase() === 'true') === (actual === undefined));
  const { test, negated } = OPERATORS[op.base];
  if (actual === undefined) return op.ifExists || op.set === 'ForAllValues' || Boolean(negated);
  const matched = expected.some((e) => test(actual, e));
  return negated ? !matched : matched;
}

function conditionsHold(s: Statement, context: Map<string, string>, where: string): boolean {
  for (const [name, entries] of Object.entries(s.Condition ?? {})) {
    const op = operator(name, where);
    for (const [key, expected] of Object.entries(entries)) {
      if (!holds(op, context.get(key), many(expected).map(String))) return false;
    }
  }
  return true;
}

export function evaluate(policy: KeyPolicy, req: PolicyRequest): { allowed: boolean; reason: string } {
  let allow: string | undefined;
  for (const [i, s] of many(policy.Statement).entries()) {
    if (!principalMatches(s, req.principalArn) || !actionMatches(many(s.Action), req.action) || !conditionsHold(s, req.context, `Statement[${i}].Condition`)) continue;
    const name = s.Sid ? `"${s.Sid}"` : `Statement[${i}]`;
    if (s.Effect === 'Deny') return { allowed: false, reason: `explicitly denied by ${name}` };
    allow ??= name;
  }
  return allow ? { allowed: true, reason: `allowed by ${allow}` } : { allowed: false, reason: 'no statement in the key policy allows it' };
}
