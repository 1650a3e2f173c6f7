// Local KMS (JSON 1.1, "TrentService"): symmetric keys with key policies,
// Encrypt/Decrypt/GenerateDataKey/GenerateRandom/DescribeKey/Put|GetKeyPolicy,
// and Decrypt with a Recipient: the attestation document is verified (signature,
// chain to a trusted root, freshness), its PCRs become the
// kms:RecipientAttestation:* condition keys, and the answer is a
// CiphertextForRecipient built exactly as KMS builds it. Local mode only.
import crypto, { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { verifyAttestation, AttestationError, type AttestationDocument } from '../../../shared/attestation.ts';
import { buildCiphertextForRecipient } from '../../../shared/cms.ts';
import { evaluate, parsePolicy, PolicyError, type KeyPolicy } from './policy.ts';
import { log } from '../../../shared/log.ts';

export class AwsError extends Error {
  constructor(readonly type: string, message: string, readonly status = 400) { super(message); }
}

export interface Caller { arn: string; account: string }

interface StoredKey { keyId: string; arn: string; material: string; policy: string; description: string; created: number; enabled: boolean }

const MAX_PLAINTEXT = 4096;
const ATTESTATION_MAX_AGE_MS = 5 * 60_000;
const BLOB_MAGIC = Buffer.from('NACM');

function b64(v: unknown, field: string): Buffer {
  if (typeof v !== 'string') throw new AwsError('ValidationException', `${field}: expected a base64 blob`);
  return Buffer.from(v, 'base64');
}

function canonicalContext(ctx: unknown): Buffer {
  if (ctx === undefined || ctx === null) return Buffer.alloc(0);
  if (typeof ctx !== 'object') throw new AwsError('ValidationException', 'EncryptionContext: expected a map of strings');
  return Buffer.from(JSON.stringify(Object.entries(ctx as Record<string, string>).sort(([a], [b]) => (a < b ? -1 : 1))));
}

export class LocalKms {
  private keys = new Map<string, StoredKey>();
  private readonly file: string;

  constructor(private readonly o: { stateDir: string; region: string; account: string; trustedRoots: () => X509Certificate[] }) {
    fs.mkdirSync(o.stateDir, { recursive: true });
    this.file = path.join(o.stateDir, 'kms-keys.json');
    if (fs.existsSync(this.file)) for (const k of JSON.parse(fs.readFileSync(this.file, 'utf8')) as StoredKey[]) this.keys.set(k.keyId, k);
  }

  private save(): void {
    const tmp = `${this.file}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify([...this.keys.values()]), { mode: 0o600 });
    fs.renameSync(tmp, this.file);
  }

  private find(id: unknown): StoredKey {
    if (typeof id !== 'string' || id === '') throw new AwsError('ValidationException', 'KeyId: required');
    const k = this.keys.get(id) ?? [...this.keys.values()].find((x) => x.arn === id);
    if (!k) throw new AwsError('NotFoundException', `Key '${id}' does not exist`);
    if (!k.enabled) throw new AwsError('DisabledException', `${k.arn} is disabled.`);
    return k;
  }

  private authorize(k: StoredKey, action: string, caller: Caller, context = new Map<string, string>()): void {
    const r = evaluate(JSON.parse(k.policy) as KeyPolicy, { action, principalArn: caller.arn, context });
    if (!r.allowed) {
      log.warn(`local KMS: ${caller.arn} ${action} on ${k.arn} denied: ${r.reason}`);
      throw new AwsError('AccessDeniedException', `User: ${caller.arn} is not authorized to perform: ${action} on resource: ${k.arn} because ${r.reason}`);
    }
  }

  private defaultPolicy(caller: Caller): string {
    return JSON.stringify({ Version: '2012-10-17', Statement: [{ Sid: 'Enable IAM User Permissions', Effect: 'Allow', Principal: { AWS: `arn:aws:iam::${this.o.account}:root` }, Action: 'kms:*', Resource: '*' }, { Sid: 'Creator', Effect: 'Allow', Principal: { AWS: caller.arn }, Action: 'kms:*', Resource: '*' }] });
  }

  private seal(k: StoredKey, plaintext: Buffer, context: unknown): Buffer {
    const iv = crypto.randomBytes(12);
    const c = crypto.createCipheriv('aes-256-gcm', Buffer.from(k.material, 'base64'), iv);
    c.setAAD(canonicalContext(context));
    const ct = Buffer.concat([c.update(plaintext), c.final()]);
    const id = Buffer.from(k.keyId);
    return Buffer.concat([BLOB_MAGIC, Buffer.from([id.length]), id, iv, c.getAuthTag(), ct]);
  }

  private open(blob: Buffer, context: unknown): { key: StoredKey; open: () => Buffer } {
    if (blob.length < 4 + 1 + 12 + 16 || !blob.subarray(0, 4).equals(BLOB_MAGIC)) throw new AwsError('InvalidCiphertextException', 'The ciphertext is invalid');
    const idLen = blob[4];
    if (blob.length < 5 + idLen + 28) throw new AwsError('InvalidCiphertextException', 'The ciphertext is invalid');
    const key = this.find(blob.subarray(5, 5 + idLen).toString());
    const iv = blob.subarray(5 + idLen, 17 + idLen), tag = blob.subarray(17 + idLen, 33 + idLen), ct = blob.subarray(33 + idLen);
    return {
      key,
      open: () => {
        const d = crypto.createDecipheriv('aes-256-gcm', Buffer.from(key.material, 'base64'), iv);
        d.setAAD(canonicalContext(context));
        d.setAuthTag(tag);
        try { return Buffer.concat([d.update(ct), d.final()]); } catch { throw new AwsError('InvalidCiphertextException', 'The ciphertext or its encryption context is invalid'); }
      },
    };
  }

  /**
   * Documents verified lately, by their bytes and the trusted roots, until the
   * first of their certificates expires: the enclave app sends one document with
   * many Decrypts (provisioning 1,000 tokens), and checking its signature and
   * chain every time was most of this stand-in's work. Its age is checked on
   * every use (recipient()).
   */
  private verified = new Map<string, { doc: AttestationDocument; until: number }>();
  private verifiedDocument(bytes: Buffer): AttestationDocument {
    const roots = this.o.trustedRoots();
    const key = crypto.createHash('sha256').update(bytes).update(roots.map((r) => r.fingerprint256).join()).digest('hex');
    const hit = this.verified.get(key);
    if (hit && Date.now() < hit.until) return hit.doc;
    const doc = verifyAttestation(bytes, { roots, at: new Date() });
    const until = Math.min(...[doc.certificate, ...doc.cabundle].map((c) => Date.parse(new X509Certificate(c).validTo)));
    this.verified.set(key, { doc, until });
    if (this.verified.size > 64) this.verified.delete(this.verified.keys().next().value!);
    return doc;
  }

  /** Verifies a Recipient's attestation document; returns the recipient key and the condition keys it yields. */
  private recipient(r: unknown): { key: crypto.KeyObject; context: Map<string, string> } | undefined {
    if (r === undefined || r === null) return undefined;
    const rec = r as { KeyEncryptionAlgorithm?: string; AttestationDocument?: string };
    if (rec.KeyEncryptionAlgorithm !== 'RSAES_OAEP_SHA_256') throw new AwsError('ValidationException', `Recipient.KeyEncryptionAlgorithm: ${String(rec.KeyEncryptionAlgorithm)}, expected RSAES_OAEP_SHA_256`);
    let doc;
    try { doc = this.verifiedDocument(b64(rec.AttestationDocument, 'Recipient.AttestationDocument')); } catch (e) {
      if (e instanceof AttestationError) throw new AwsError('ValidationException', `Recipient.AttestationDocument is not valid: ${e.message}`);
      throw e;
    }
    if (Math.abs(Date.now() - doc.timestamp) > ATTESTATION_MAX_AGE_MS) throw new AwsError('ValidationException', `Recipient.AttestationDocument is ${Math.round((Date.now() - doc.timestamp) / 1000)} s old`);
    if (!doc.publicKey) throw new AwsError('ValidationException', 'Recipient.AttestationDocument has no public_key');
    let key: crypto.KeyObject;
    try { key = crypto.createPublicKey({ key: doc.publicKey, format: 'der', type: 'spki' }); } catch { throw new AwsError('ValidationException', 'Recipient.AttestationDocument public_key is not a SubjectPublicKeyInfo'); }
    if (key.asymmetricKeyType !== 'rsa') throw new AwsError('ValidationException', 'Recipient public key must be RSA');
    const context = new Map<string, string>();
    for (const [i, v] of doc.pcrs) context.set(`kms:RecipientAttestation:PCR${i}`, v.toString('hex'));
    const pcr0 = doc.pcrs.get(0);
    if (pcr0) context.set('kms:RecipientAttestation:ImageSha384', pcr0.toString('hex'));
    return { key, context };
  }

  handle(target: string, body: Record<string, unknown>, caller: Caller): Record<string, unknown> {
    switch (target) {
      case 'CreateKey': {
        const keyId = crypto.randomUUID();
        const policy = typeof body.Policy === 'string' ? body.Policy : this.defaultPolicy(caller);
        try { parsePolicy(policy); } catch (e) { throw new AwsError('MalformedPolicyDocumentException', (e as PolicyError).message); }
        const k: StoredKey = { keyId, arn: `arn:aws:kms:${this.o.region}:${this.o.account}:key/${keyId}`, material: crypto.randomBytes(32).toString('base64'), policy, description: String(body.Description ?? ''), created: Date.now() / 1000, enabled: true };
        this.keys.set(keyId, k);
        this.save();
        return { KeyMetadata: this.metadata(k) };
      }
      case 'DescribeKey': { const k = this.find(body.KeyId); this.authorize(k, 'kms:DescribeKey', caller); return { KeyMetadata: this.metadata(k) }; }
      case 'GetKeyPolicy': { const k = this.find(body.KeyId); this.authorize(k, 'kms:GetKeyPolicy', caller); return { Policy: k.policy, PolicyName: 'default' }; }
      case 'PutKeyPolicy': {
        const k = this.find(body.KeyId);
        this.authorize(k, 'kms:PutKeyPolicy', caller);
        if (typeof body.Policy !== 'string') throw new AwsError('ValidationException', 'Policy: required');
        try { parsePolicy(body.Policy); } catch (e) { throw new AwsError('MalformedPolicyDocumentException', (e as PolicyError).message); }
        k.policy = body.Policy;
        this.save();
        return {};
      }
      case 'Encrypt': {
        const k = this.find(body.KeyId);
        this.authorize(k, 'kms:Encrypt', caller);
        const pt = b64(body.Plaintext, 'Plaintext');
        if (pt.length === 0 || pt.length > MAX_PLAINTEXT) throw new AwsError('ValidationException', `Plaintext: 1..${MAX_PLAINTEXT} bytes, got ${pt.length}`);
        return { KeyId: k.arn, CiphertextBlob: this.seal(k, pt, body.EncryptionContext).toString('base64'), EncryptionAlgorithm: 'SYMMETRIC_DEFAULT' };
      }
      case 'GenerateDataKey': {
        const k = this.find(body.KeyId);
        const rec = this.recipient(body.Recipient);
        this.authorize(k, 'kms:GenerateDataKey', caller, rec?.context);
        const n = body.NumberOfBytes !== undefined ? Number(body.NumberOfBytes) : body.KeySpec === 'AES_128' ? 16 : 32;
        if (!Number.isInteger(n) || n < 1 || n > 1024) throw new AwsError('ValidationException', 'NumberOfBytes: 1..1024');
        const pt = crypto.randomBytes(n);
        const out: Record<string, unknown> = { KeyId: k.arn, CiphertextBlob: this.seal(k, pt, body.EncryptionContext).toString('base64') };
        if (rec) out.CiphertextForRecipient = buildCiphertextForRecipient(pt, rec.key).toString('base64');
        else out.Plaintext = pt.toString('base64');
        pt.fill(0);
        return out;
      }
      case 'Decrypt': {
        const { key, open } = this.open(b64(body.CiphertextBlob, 'CiphertextBlob'), body.EncryptionContext);
        if (body.KeyId !== undefined && body.KeyId !== key.keyId && body.KeyId !== key.arn) throw new AwsError('IncorrectKeyException', 'The key ID in the request does not identify the key that encrypted the ciphertext');
        const rec = this.recipient(body.Recipient);
        this.authorize(key, 'kms:Decrypt', caller, rec?.context);
        const pt = open();
        const out: Record<string, unknown> = { KeyId: key.arn, EncryptionAlgorithm: 'SYMMETRIC_DEFAULT' };
        if (rec) out.CiphertextForRecipient = buildCiphertextForRecipient(pt, rec.key).toString('base64');
        else out.Plaintext = pt.toString('base64');
        pt.fill(0);
        return out;
      }
      case 'GenerateRandom': {
        const n = Number(body.NumberOfBytes ?? 32);
        if (!Number.isInteger(n) || n < 1 || n > 1024) throw new AwsError('ValidationException', 'NumberOfBytes: 1..1024');
        const rec = this.recipient(body.Recipient);
        const r = crypto.randomBytes(n);
        return rec ? { CiphertextForRecipient: buildCiphertextForRecipient(r, rec.key).toString('base64') } : { Plaintext: r.toString('base64') };
      }
      default:
        throw new AwsError('UnknownOperationException', `local KMS does not implement ${target}`);
    }
  }

  private metadata(k: StoredKey) {
    return { KeyId: k.keyId, Arn: k.arn, AWSAccountId: this.o.account, CreationDate: k.created, Enabled: k.enabled, Description: k.description, KeyUsage: 'ENCRYPT_DECRYPT', KeyState: k.enabled ? 'Enabled' : 'Disabled', Origin: 'AWS_KMS', KeyManager: 'CUSTOMER', KeySpec: 'SYMMETRIC_DEFAULT', CustomerMasterKeySpec: 'SYMMETRIC_DEFAULT', EncryptionAlgorithms: ['SYMMETRIC_DEFAULT'] };
  }
}
