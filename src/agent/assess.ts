// The security assessment (`nitro-acm assess`), made by the running agent from
// live probes: it has the instance role's credentials, every token's sealed key,
// the image's measurements and the enclave's last attestation check. For each
// token's KMS key it asks KMS to decrypt the sealed key from the parent, without
// an attestation document, and expects a refusal; it reads the key policy (where
// the role may) and says which PCRs it binds, and whether to this image's values.
// Then the posture: debug mode, the channel, nonce and chain verification, and
// PCR8 advice. Each finding is PASS, WARN, FAIL or INFO with the fix.
import fs from 'node:fs';
import { KMSClient, DecryptCommand, GetKeyPolicyCommand } from '@aws-sdk/client-kms';
import { pcrOf } from '../../shared/pcr.ts';
import { describeEnclaves } from './nitro-cli.ts';
import type { Agent, TokenState } from './agent.ts';
import type { AcmConfig } from './config.ts';

export type Level = 'PASS' | 'WARN' | 'FAIL' | 'INFO';
export interface Finding { level: Level; text: string; fix?: string }

/** Whether one token's key policy binds a PCR: to this image's value, to another, not at all, or unknown (policy unreadable). */
export type Binding = 'yes' | 'other value' | 'no' | 'unknown';

export interface KeyReport {
  token: string;
  /** The key within a FileDb token; the token's label otherwise. */
  key: string;
  source: string;
  keyArn?: string;
  /** KMS Decrypt of the sealed key from the parent without an attestation document: BLOCKED is what must happen. */
  directDecrypt: 'BLOCKED' | 'ALLOWED' | 'NOT PROBED';
  directDecryptDetail: string;
  /** The key policy: read, unreadable (why), or managed by ACM (not readable from the instance). */
  policy: string;
  /** Each kms:RecipientAttestation condition of the statements that let the role decrypt, as "key = value". */
  conditions: string[];
  bound: Record<string, Binding>;
}

export interface Assessment {
  generatedAt: string;
  localMode: boolean;
  image: { path: string; builtAt?: string; sizeMiB?: number; measurements: string };
  instance: { id?: string; region?: string; roleArn?: string };
  resources: { cpuCount: number; memoryMib: number };
  pcrs: { index: number; name: string; value?: string; bound: Record<string, Binding> }[];
  keys: KeyReport[];
  findings: Finding[];
}

const PCR_NAMES: Record<number, string> = { 0: 'image', 1: 'kernel', 2: 'application', 3: 'IAM role', 4: 'instance ID', 8: 'signing certificate' };
const short = (hex?: string) => (hex ? `${hex.slice(0, 16)}...` : '(none)');

type Json = Record<string, unknown>;
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : v === undefined ? [] : [v]);

/** The Allow statements that grant kms:Decrypt, with their principals and attestation conditions (PCR index -> values; ImageSha384 is PCR0). */
export function decryptStatements(policyText: string): { principals: string[]; attestation: Map<number, string[] | 'pattern'> }[] {
  const policy = JSON.parse(policyText) as Json;
  const out: { principals: string[]; attestation: Map<number, string[] | 'pattern'> }[] = [];
  for (const st of list(policy.Statement) as Json[]) {
    if (st?.Effect !== 'Allow') continue;
    if (!list(st.Action).some((a) => /^(\*|kms:\*|kms:decrypt)$/i.test(String(a)))) continue;
    const p = st.Principal;
    const principals = p === '*' ? ['*'] : list((p as Json | undefined)?.AWS).map(String);
    const attestation = new Map<number, string[] | 'pattern'>();
    for (const [operator, body] of Object.entries((st.Condition as Json | undefined) ?? {})) {
      for (const [key, value] of Object.entries((body as Json) ?? {})) {
        const m = /^kms:recipientattestation:(imagesha384|pcr(\d+))$/i.exec(key);
        if (!m) continue;
        const index = m[2] === undefined ? 0 : Number(m[2]);
        attestation.set(index, /^StringEquals(IgnoreCase)?$/.test(operator) ? list(value).map((v) => String(v).toLowerCase()) : 'pattern');
      }
    }
    out.push({ principals, attestation });
  }
  return out;
}

/** Whether a statement's principal is this role (its ARN, with or without the path) or anyone. */
function namesRole(principals: string[], roleArn: string): boolean {
  const bare = roleArn.replace(/:role\/(?:.*\/)?([^/]+)$/, ':role/$1');
  return principals.some((p) => p === '*' || p === roleArn || p === bare);
}

const arnIn = (message: string) => /arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key\/[A-Za-z0-9-]+/.exec(message)?.[0];

/** The sealed keys a token holds: a bundle's one, or a FileDb's each. */
function sealedKeys(t: TokenState): { key: string; blob: string; context?: Record<string, string> }[] {
  if (t.fileDb) return t.fileDb.map((k) => ({ key: `${t.config.label}/${k.label}`, blob: k.encrypted_pem_b64 }));
  if (t.bundle && t.bundle.encryptionMethod === 'KMS') return [{ key: t.config.label, blob: t.bundle.encryptedPrivateKey, context: t.bundle.encryptionContext }];
  return [];
}

export async function assess(agent: Agent, config: AcmConfig): Promise<Assessment> {
  const findings: Finding[] = [];
  const add = (level: Level, text: string, fix?: string) => findings.push({ level, text, ...(fix ? { fix } : {}) });
  const status = await agent.status();
  const ctx = agent.instance;
  const localMode = status.enclave.health?.localMode === true;
  const expected = await agent.expectedEnclave().catch((e: Error) => { add('FAIL', `the image's measurements cannot be read: ${e.message}`, 'install image-measurements.json beside enclave.image_path (the RPM does), or make nitro-cli describe-eif work on the image'); return undefined; });

  // The image and what it should measure to: PCR0/1/2 (8), and PCR3/4 from the role and the instance.
  const image: Assessment['image'] = { path: localMode ? 'local mode: the enclave app runs as an ordinary process (no EIF)' : config.enclave.image_path, measurements: expected?.source ?? 'unknown' };
  if (!localMode) {
    try { const st = fs.statSync(config.enclave.image_path); image.builtAt = st.mtime.toISOString(); image.sizeMiB = Math.round(st.size / 1048576); } catch (e) { add('FAIL', `the enclave image ${config.enclave.image_path} cannot be read: ${(e as Error).message}`, 'install the nitro-acm RPM, or set enclave.image_path'); }
  }
  const want = new Map<number, string>();
  for (const [i, v] of expected?.pcrs ?? []) want.set(i, v.toString('hex'));
  if (ctx) { want.set(3, pcrOf(ctx.roleArn).toString('hex')); want.set(4, pcrOf(ctx.instanceId).toString('hex')); }

  // Every token's sealed keys: the direct-decrypt probe and the key policy.
  const keys: KeyReport[] = [];
  // Many tokens share one KMS key: each key policy is read once per assessment.
  const policies = new Map<string, Promise<string | undefined>>();
  const kms = ctx ? new KMSClient({ region: ctx.region, credentials: ctx.credentials, endpoint: ctx.endpoints.kms, maxAttempts: 2 }) : undefined;
  for (const t of agent.tokens.values()) {
    const isAcm = 'Acm' in t.config.source;
    const sourceText = 'Acm' in t.config.source ? `Acm ${t.config.source.Acm.certificate_arn}` : 'S3' in t.config.source ? `S3 ${t.config.source.S3.uri}` : `FileDb ${t.config.source.FileDb.path}`;
    const sealed = sealedKeys(t);
    if (!sealed.length) add('WARN', `${t.config.label}: no sealed key to probe (the token has not been fetched: ${t.error ?? 'pending'})`, 'fix what nitro-acm status says of this token, then run assess again');
    for (const s of sealed) {
      const r: KeyReport = { token: t.config.label, key: s.key, source: sourceText, directDecrypt: 'NOT PROBED', directDecryptDetail: '', policy: 'not read', conditions: [], bound: {} };
      keys.push(r);
      if (!kms || !ctx) { r.directDecryptDetail = 'the agent has no instance credentials yet'; continue; }
      try {
        const out = await kms.send(new DecryptCommand({ CiphertextBlob: Buffer.from(s.blob, 'base64'), EncryptionContext: s.context }));
        out.Plaintext?.fill(0); // the probe succeeded: the plaintext is wiped at once, never kept or shown
        r.directDecrypt = 'ALLOWED';
        r.keyArn = out.KeyId;
        r.directDecryptDetail = 'KMS decrypted the sealed private key for the parent without an attestation document';
      } catch (e) {
        const err = e as Error & { name?: string };
        if (err.name === 'AccessDeniedException') { r.directDecrypt = 'BLOCKED'; r.keyArn = arnIn(err.message); r.directDecryptDetail = 'KMS refused the parent (attestation required)'; }
        else r.directDecryptDetail = `${err.name ?? 'error'}: ${err.message}`;
      }
      if (r.directDecrypt === 'ALLOWED') add('FAIL', `${r.key}: the parent instance can decrypt this private key directly (${r.keyArn ?? 'its KMS key'}): root or anything with the role's credentials can read it`, 'remove every grant of kms:Decrypt to the role that has no kms:RecipientAttestation condition, in the key policy and in the role\'s IAM policies');
      else if (r.directDecrypt === 'BLOCKED') add('PASS', `${r.key}: direct decrypt from the parent is BLOCKED (attestation required)`);
      else add('WARN', `${r.key}: the direct-decrypt probe did not get an answer: ${r.directDecryptDetail}`, 'check that the instance reaches KMS, then run assess again');
      const served = t.state === 'serving' && status.tokens.find((x) => x.label === t.config.label)?.inEnclave;
      if (served) add('PASS', `${r.key}: decrypt from the verified enclave is ALLOWED (the token serves)`);

      // The key policy, where the role may read it.
      for (const i of want.keys()) r.bound[`PCR${i}`] = 'unknown';
      if (!r.keyArn) { r.policy = 'not read: the key is not known (the probe named none)'; continue; }
      let text: string | undefined;
      const arn = r.keyArn;
      if (!policies.has(arn)) policies.set(arn, kms.send(new GetKeyPolicyCommand({ KeyId: arn, PolicyName: 'default' })).then((o) => o.Policy));
      try { text = await policies.get(arn); } catch (e) {
        const err = e as Error & { name?: string };
        r.policy = isAcm ? 'managed by ACM: not readable from the instance' : `unreadable: ${err.name}: ${err.message}`;
        if (isAcm) add('INFO', `${r.key}: ACM seals this certificate's key under a KMS key it manages (${r.keyArn}); its policy cannot be read from the instance, so the PCRs it binds cannot be listed here. What can be seen: the direct-decrypt probe above`);
        else add('WARN', `${r.key}: the key policy of ${r.keyArn} cannot be read (${err.name}), so the PCRs it binds are unknown`, `allow the instance role kms:GetKeyPolicy on ${r.keyArn}`);
        continue;
      }
      r.policy = 'read';
      let statements: ReturnType<typeof decryptStatements>;
      try { statements = decryptStatements(text ?? '{}'); } catch (e) { r.policy = `unreadable: not JSON (${(e as Error).message})`; add('WARN', `${r.key}: the key policy of ${r.keyArn} is not JSON`); continue; }
      const forRole = statements.filter((st) => namesRole(st.principals, ctx.roleArn));
      const others = statements.filter((st) => !namesRole(st.principals, ctx.roleArn) && st.attestation.size === 0).flatMap((st) => st.principals);
      if (others.length) add('INFO', `${r.key}: the key policy also lets ${others.join(', ')} decrypt without attestation (key administrators; none of them should be a principal on this instance)`);
      for (const st of forRole) for (const [i, v] of st.attestation) r.conditions.push(`kms:RecipientAttestation:${i === 0 ? 'PCR0/ImageSha384' : `PCR${i}`} = ${v === 'pattern' ? '(a pattern)' : v.map(short).join(' | ')}`);
      if (!forRole.length) { add('INFO', `${r.key}: the key policy grants the role nothing by name; its kms:Decrypt comes from IAM policies (through the account), which the probe above tests`); continue; }
      if (forRole.some((st) => st.attestation.size === 0)) {
        add('FAIL', `${r.key}: the key policy lets ${ctx.roleArn} decrypt without any kms:RecipientAttestation condition`, 'add a condition on kms:RecipientAttestation:PCR0 (or PCR8 for a signed image) to that statement: nitro-acm pcrs prints the block');
      }
      for (const i of want.keys()) {
        const values = forRole.map((st) => st.attestation.get(i));
        r.bound[`PCR${i}`] = values.some((v) => v === undefined) ? 'no' : values.every((v) => v === 'pattern' || v!.includes(want.get(i)!)) ? 'yes' : 'other value';
        if (r.bound[`PCR${i}`] === 'other value') add('FAIL', `${r.key}: the key policy binds PCR${i} to another value than this ${i <= 2 || i === 8 ? 'image' : i === 3 ? 'role' : 'instance'} measures (${short(want.get(i))}): the enclave cannot decrypt this key`, `put PCR${i} = ${want.get(i)} in the key policy of ${r.keyArn}`);
      }
      const bound = Object.entries(r.bound).filter(([, b]) => b === 'yes').map(([p]) => p);
      if (bound.length && !forRole.some((st) => st.attestation.size === 0)) add('PASS', `${r.key}: the key policy binds ${bound.join(', ')} to this ${bound.some((p) => p === 'PCR3' || p === 'PCR4') ? 'image and instance' : 'image'}`);
      // PCR8 advice: with a signed image, binding PCR0 means a policy change for every image update.
      const signed = want.has(8);
      if (r.bound.PCR0 === 'yes' && r.bound.PCR8 !== 'yes') {
        if (signed) add('WARN', `${r.key}: the key policy binds PCR0, so every image update needs a key-policy change`, 'bind PCR8 (the signing certificate) instead of PCR0: the image is signed, and a new signed image keeps PCR8');
        else add('INFO', `${r.key}: the key policy binds PCR0 (the image is not signed, so PCR0 is the way); each image update needs the new PCR0 in the policy. A signed image (build-enclave --private-key/--signing-certificate) would let the policy bind PCR8 and survive updates`);
      }
    }
  }

  // The posture.
  const last = status.enclave.attestation?.last;
  const debugFailure = last?.failures.find((f) => f.includes('debug mode'));
  let debugFlag: boolean | undefined;
  if (!localMode) {
    try { debugFlag = (await describeEnclaves()).some((e) => /DEBUG_MODE/.test(e.Flags ?? '')); } catch (e) { add('INFO', `nitro-cli describe-enclaves: ${(e as Error).message}; debug mode is judged from the attestation document alone`); }
  }
  if (debugFailure || debugFlag) add('FAIL', `the enclave runs in debug mode${debugFlag ? ' (nitro-cli describe-enclaves: DEBUG_MODE)' : ''}: its console is readable from the parent and its PCRs are zero`, 'terminate it (nitro-cli terminate-enclave) and let the agent start it without --debug-mode');
  else if (last) add('PASS', `debug mode is off (the enclave's attestation document carries the image's PCRs${debugFlag === false ? '; nitro-cli describe-enclaves shows no DEBUG_MODE' : ''})`);
  else add('WARN', 'debug mode cannot be judged: the enclave has not been attested yet', 'wait for the agent\'s first attestation check (nitro-acm status)');

  const keyAddress = status.enclave.keyAddress ?? '', provisionAddress = status.enclave.provisionAddress ?? '';
  if (keyAddress.startsWith('vsock:') && provisionAddress.startsWith('vsock:')) add('PASS', `vsock is the only channel to the enclave (keys ${keyAddress}, provisioning ${provisionAddress}; KMS through the parent's vsock proxy, TLS ending in the enclave; a Nitro enclave has no network interface)`);
  else if (localMode) add('PASS', `vsock is the only channel to a real enclave; local mode stands in unix sockets (keys ${keyAddress}, provisioning ${provisionAddress})`);
  else add('FAIL', `the enclave is reached over ${keyAddress} and ${provisionAddress}, not vsock`, 'set NITRO_ACM_KEY_ADDRESS and the agent\'s addresses back to vsock (the defaults)');

  const every = config.enclave.attestation_check_every;
  if (!last) add('WARN', 'the enclave\'s attestation has not been checked yet', 'wait for the agent\'s first attestation check (nitro-acm status)');
  else if (last.ok) {
    add('PASS', `attestation document nonce verification: the agent sends 32 fresh random bytes with every check and the document must carry them (last check ${last.checkedAt}; ${status.enclave.attestation!.passed} passed, ${status.enclave.attestation!.failed} failed)`);
    add('PASS', `the certificate chain validates to ${localMode ? 'local mode\'s simulated NSM root (local mode only; a real enclave must chain to the AWS Nitro root G1, pinned by its SHA-256)' : 'the AWS Nitro root G1 (pinned by its SHA-256)'}`);
    add('PASS', `the health check verifies a fresh attestation every ${every === 1 ? '' : `${every} `}check${every === 1 ? '' : 's'} (every ${every * 5} s by default), not just a ping`);
  } else add('FAIL', `the enclave's last attestation check failed: ${last.failures.join('; ')}`, 'nitro-acm status says why; an enclave left running from another image: nitro-cli terminate-enclave, and the agent starts the installed one');
  if (!status.enclave.reachable) add('FAIL', `the enclave does not answer: ${status.enclave.error}`, 'systemctl status nitro-enclaves-acm; the agent starts a new enclave by itself');

  // PCR table: each PCR's value and how each key binds it.
  const pcrIndexes = [...new Set([...want.keys(), ...Object.keys(last?.pcrs ?? {}).map(Number)])].sort((a, b) => a - b);
  const pcrs = pcrIndexes.map((index) => ({ index, name: PCR_NAMES[index] ?? '', value: want.get(index) ?? last?.pcrs?.[String(index)], bound: Object.fromEntries(keys.map((k) => [k.key, k.bound[`PCR${index}`] ?? 'unknown'])) }));
  return {
    generatedAt: new Date().toISOString(), localMode, image,
    instance: { id: ctx?.instanceId, region: ctx?.region, roleArn: ctx?.roleArn },
    resources: { cpuCount: config.enclave.cpu_count, memoryMib: config.enclave.memory_mib },
    pcrs, keys, findings,
  };
}

/** Exit status: 0 only when nothing FAILs. */
export const assessExitCode = (a: Assessment) => (a.findings.some((f) => f.level === 'FAIL') ? 1 : 0);
