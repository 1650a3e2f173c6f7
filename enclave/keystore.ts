// Tokens and their keys, in the enclave app's memory only. A token has a label, a
// PIN (kept as a SHA-256 digest, compared in constant time) and its current keys:
// one with its certificate chain (Acm and S3 sources), or several, each with its
// own id and label and maybe a certificate (a FileDb source). After a renewal the
// previous keys stay usable, but unlisted for new lookups, for a grace period so
// old web-server workers finish.
import crypto, { type KeyObject, type X509Certificate } from 'node:crypto';
import { CertCategory, KeyFlag, KeyType, LIST_CAPS, encodeTokenEntry, joinTokenList, type KeyTypeCode, type WirePublicKey } from '../shared/key-wire.ts';
import { curveByNodeName } from '../shared/ec-curves.ts';
import { ckaIdOf } from '../shared/key-id.ts';
import { parseCertificate } from '../shared/certificate-cache.ts';

export interface KeyMaterial {
  /** PEM private key (PKCS#1 or PKCS#8). */
  privateKeyPem: string | Buffer;
  /** PEM leaf certificate; a FileDb key may have none. */
  certificatePem?: string;
  /** PEM chain, leaf's issuer first; may be empty. */
  chainPem?: string;
  /** CKA_ID, when the source gives one (a FileDb entry's id); else derived from the key (shared/key-id.ts). */
  ckaId?: Buffer;
  /** CKA_LABEL, when the source gives one (a FileDb entry's label); else the token's label. */
  label?: string;
}

export interface StoredKey {
  keyId: number;
  privateKey: KeyObject;
  /** What LIST tells of the public key: RSA modulus and exponent, or EC curve and point. */
  pub: WirePublicKey;
  /** RSA: the modulus's bits; EC: the curve's. */
  modulusBits: number;
  /** As nitro-acm status shows it: RSA-2048, EC-P256. */
  keyTypeName: string;
  ckaId: Buffer;
  /** CKA_LABEL of its objects; undefined: the token's label. */
  label?: string;
  certificates: { category: number; der: Buffer }[];
  /** What describe tells of the leaf certificate, read once: a parsed X509Certificate per token would cost several KiB of native memory each. */
  leafFacts?: { subject: string; notAfter: string; serial: string; fingerprint256: string };
  retiredUntil?: number;
}

export interface Token {
  label: string; pinDigest: Buffer;
  /** New each time a token is added (a PIN changes only by remove and add): a login holds it, so a re-added token logs everyone out. */
  identity: string;
  serial: string;
  /** The keys served now: one for Acm and S3 sources, one or more for FileDb; the first is the one described. */
  current: StoredKey[];
  retired: StoredKey[]; refreshedAt: number }

export class KeyMaterialError extends Error {
  /** invalid: does not parse; mismatch: key and certificate disagree; unsupported: a key this enclave does not serve. */
  constructor(readonly kind: 'invalid' | 'mismatch' | 'unsupported', message: string) { super(message); }
}

export const MIN_RSA_BITS = 2048;
export const MAX_RSA_BITS = 4096;


function splitPem(pem: string): string[] {
  return pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

/** Whether a certificate's key is this one (a key type JWK cannot show, such as RSA-PSS, is not). */
function samePublicKey(certKey: KeyObject, b: crypto.JsonWebKey): boolean {
  let a: crypto.JsonWebKey;
  try { a = certKey.export({ format: 'jwk' }); } catch { return false; }
  return a.kty === b.kty && a.n === b.n && a.e === b.e && a.crv === b.crv && a.x === b.x && a.y === b.y;
}

function pinDigest(pin: Uint8Array): Buffer {
  return crypto.createHash('sha256').update(pin).digest();
}

export class KeyStore {
  private tokens = new Map<string, Token>();
  private keys = new Map<number, { token: Token; key: StoredKey }>();
  /** Key ids start at a random point so a restarted enclave does not reuse the ids a module may still hold. */
  private nextKeyId = (crypto.randomBytes(4).readUInt32BE(0) >>> 1) + 1;
  /** Changes whenever anything listed changes; starts random so a restarted enclave never repeats one. */
  generation = crypto.randomBytes(4).readUInt32BE(0);
  private listCache?: { generation: number; body: Buffer };

  constructor(private readonly graceMs = 10 * 60 * 1000) {}

  /** Parses and checks key material; throws KeyMaterialError naming what is wrong. */
  private load(m: KeyMaterial): StoredKey {
    let privateKey: KeyObject, leaf: X509Certificate | undefined;
    try { privateKey = crypto.createPrivateKey(m.privateKeyPem); } catch (e) { throw new KeyMaterialError('invalid', `private key: cannot parse (${(e as Error).message.split('\n')[0]})`); }
    const curve = privateKey.asymmetricKeyType === 'ec' ? curveByNodeName(privateKey.asymmetricKeyDetails?.namedCurve) : undefined;
    if (privateKey.asymmetricKeyType === 'ec' && !curve) throw new KeyMaterialError('unsupported', `private key: EC curve ${privateKey.asymmetricKeyDetails?.namedCurve} is not supported (P-256, P-384)`);
    if (privateKey.asymmetricKeyType !== 'rsa' && !curve) throw new KeyMaterialError('unsupported', `private key: type ${privateKey.asymmetricKeyType} is not supported (RSA ${MIN_RSA_BITS}-${MAX_RSA_BITS}, EC P-256 and P-384)`);
    if (m.certificatePem !== undefined) {
      try { leaf = parseCertificate(m.certificatePem); } catch (e) { throw new KeyMaterialError('invalid', `certificate: cannot parse (${(e as Error).message})`); }
    }
    const chainPems = splitPem(m.chainPem ?? '');
    if (1 + chainPems.length > LIST_CAPS.certificatesPerKey) throw new KeyMaterialError('unsupported', `certificate chain: ${chainPems.length} certificates besides the leaf, at most ${LIST_CAPS.certificatesPerKey - 1}`);
    const chain = chainPems.map((p, i) => {
      try { return parseCertificate(p); } catch (e) { throw new KeyMaterialError('invalid', `certificate chain entry ${i + 1}: cannot parse (${(e as Error).message})`); }
    });
    const pub = crypto.createPublicKey(privateKey);
    const jwk = pub.export({ format: 'jwk' });
    // Compared as JWK (the key's numbers and curve): an SPKI export costs ~200 us, a JWK export ~1 us.
    if (leaf && !samePublicKey(leaf.publicKey, jwk)) {
      throw new KeyMaterialError('mismatch', 'private key does not match the certificate\'s public key');
    }
    let wirePub: WirePublicKey, bits: number, keyTypeName: string;
    if (curve) {
      wirePub = { keyType: KeyType.EC, ecParams: curve.params, ecPoint: Buffer.concat([Buffer.from([4]), Buffer.from(jwk.x!, 'base64url'), Buffer.from(jwk.y!, 'base64url')]) };
      bits = curve.bits;
      keyTypeName = curve.shown;
    } else {
      bits = privateKey.asymmetricKeyDetails!.modulusLength!;
      if (bits < MIN_RSA_BITS || bits > MAX_RSA_BITS) throw new KeyMaterialError('unsupported', `private key: RSA-${bits} is outside ${MIN_RSA_BITS}-${MAX_RSA_BITS}`);
      wirePub = { keyType: KeyType.RSA, modulus: Buffer.from(jwk.n!, 'base64url'), publicExponent: Buffer.from(jwk.e!, 'base64url') };
      keyTypeName = `RSA-${bits}`;
    }
    const keyId = this.nextKeyId;
    this.nextKeyId = (this.nextKeyId + 1) >>> 0 || 1;
    return {
      keyId,
      privateKey,
      pub: wirePub,
      modulusBits: bits,
      keyTypeName,
      // Stable for a key, new for a renewed one (shared/key-id.ts), unless the source names it.
      ckaId: m.ckaId ?? ckaIdOf(pub),
      label: m.label,
      leafFacts: leaf ? { subject: leaf.subject.replace(/\n/g, ', '), notAfter: new Date(leaf.validTo).toISOString(), serial: leaf.serialNumber, fingerprint256: leaf.fingerprint256 } : undefined,
      certificates: [
        ...(leaf ? [{ category: CertCategory.LEAF, der: leaf.raw }] : []),
        ...chain.map((c) => ({ category: CertCategory.AUTHORITY, der: c.raw })),
      ],
    };
  }

  /**
   * Adds a token or replaces its key (renewal). The PIN of an existing token must
   * not change. Refuses what would take the list over LIST_CAPS, which the module
   * would refuse whole; a renewal drops the oldest retired key past the cap.
   */
  put(label: string, pin: Uint8Array, material: KeyMaterial | KeyMaterial[]): Token {
    const materials = Array.isArray(material) ? material : [material];
    if (materials.length < 1 || materials.length > LIST_CAPS.keysPerToken) throw new KeyMaterialError('unsupported', `token "${label}": ${materials.length} keys; a token holds 1 to ${LIST_CAPS.keysPerToken}`);
    const keys = materials.map((m) => this.load(m));
    const digest = pinDigest(pin);
    const old = this.tokens.get(label);
    if (old && !crypto.timingSafeEqual(old.pinDigest, digest)) throw new KeyMaterialError('invalid', `token "${label}": a renewal cannot change its PIN`);
    if (!old && this.tokens.size >= LIST_CAPS.tokens) throw new KeyMaterialError('unsupported', `token "${label}": the enclave holds at most ${LIST_CAPS.tokens} tokens`);
    const objectsOf = (k: StoredKey) => 2 + k.certificates.length;
    const objects = [...this.tokens.values()].reduce((n, t) => n + [...t.current, ...t.retired].reduce((m, k) => m + objectsOf(k), 0), 0);
    if (objects + keys.reduce((n, k) => n + objectsOf(k), 0) > LIST_CAPS.objects) throw new KeyMaterialError('unsupported', `token "${label}": the enclave holds at most ${LIST_CAPS.objects} PKCS#11 objects (2 a key plus its certificates)`);
    let token: Token;
    if (old) {
      for (const k of old.current) k.retiredUntil = Date.now() + this.graceMs;
      old.retired.push(...old.current);
      for (const k of old.retired.splice(0, Math.max(0, old.retired.length - (LIST_CAPS.keysPerToken - keys.length)))) this.keys.delete(k.keyId);
      old.current = keys;
      old.refreshedAt = Date.now();
      token = old;
    } else {
      const serial = crypto.createHash('sha256').update(label).digest('hex').slice(0, 16);
      token = { label, pinDigest: digest, identity: crypto.randomBytes(12).toString('hex'), serial, current: keys, retired: [], refreshedAt: Date.now() };
      this.tokens.set(label, token);
    }
    for (const key of keys) this.keys.set(key.keyId, { token, key });
    this.changed();
    return token;
  }

  remove(label: string): boolean {
    const t = this.tokens.get(label);
    if (!t) return false;
    for (const k of [...t.current, ...t.retired]) this.keys.delete(k.keyId);
    this.tokens.delete(label);
    this.changed();
    return true;
  }

  /** Drops retired keys whose grace period is over. */
  expireRetired(now = Date.now()): void {
    let any = false;
    for (const t of this.tokens.values()) {
      const keep = t.retired.filter((k) => (k.retiredUntil ?? 0) > now);
      for (const k of t.retired) if (!keep.includes(k)) { this.keys.delete(k.keyId); any = true; }
      t.retired = keep;
    }
    if (any) this.changed();
  }

  /** Marks a token refreshed (its key was decrypted again through KMS). */
  refreshed(label: string): void {
    const t = this.tokens.get(label);
    if (t) t.refreshedAt = Date.now();
  }

  /** Drops tokens not refreshed within the TTL (48 h, as AWS's ACM for Nitro Enclaves does); returns their labels. */
  expireStale(ttlMs: number, now = Date.now()): string[] {
    const stale = [...this.tokens.values()].filter((t) => now - t.refreshedAt > ttlMs).map((t) => t.label);
    for (const l of stale) this.remove(l);
    return stale;
  }

  /** The keys currently served for a token are these private keys, in this order. */
  sameKeys(label: string, privateKeyPems: (string | Buffer)[]): boolean {
    const t = this.tokens.get(label);
    if (!t || t.current.length !== privateKeyPems.length) return false;
    const spki = (k: KeyObject) => crypto.createPublicKey(k).export({ type: 'spki', format: 'der' });
    return privateKeyPems.every((pem, i) => spki(crypto.createPrivateKey(pem)).equals(spki(t.current[i].privateKey)));
  }

  /** The PIN is the token's (constant-time compare). */
  pinMatches(label: string, pin: Uint8Array): boolean {
    const t = this.tokens.get(label);
    return t !== undefined && crypto.timingSafeEqual(t.pinDigest, pinDigest(pin));
  }

  token(label: string): Token | undefined { return this.tokens.get(label); }
  labels(): string[] { return [...this.tokens.keys()]; }
  key(keyId: number): { token: Token; key: StoredKey } | undefined { return this.keys.get(keyId); }

  /**
   * The encoded LIST body, rebuilt only when the generation moved, from each
   * token's entry (re-encoded only when its keys changed), in shared memory:
   * posting it to the key workers shares it instead of copying it. It holds every
   * token's certificates (megabytes at 1,000 tokens) and provisioning changes it
   * once per token, so encoding it whole and copying it to every worker made
   * provisioning O(N^2) in bytes and in garbage.
   */
  listBody(): Buffer {
    if (this.listCache?.generation !== this.generation) {
      const entries = [...this.tokens.values()].map((t) => this.entryOf(t));
      const size = entries.reduce((n, e) => n + e.length, 2);
      this.listCache = { generation: this.generation, body: joinTokenList(entries, Buffer.from(new SharedArrayBuffer(size))) };
    }
    return this.listCache.body;
  }

  private entries = new WeakMap<Token, { keys: string; entry: Buffer }>();
  private entryOf(t: Token): Buffer {
    // A key's own fields never change; which keys a token has, and which are retired, do.
    const keys = `${t.current.map((k) => k.keyId).join(',')}|${t.retired.map((k) => k.keyId).join(',')}`;
    const cached = this.entries.get(t);
    if (cached?.keys === keys) return cached.entry;
    const entry = encodeTokenEntry({
      label: t.label,
      serial: t.serial,
      keys: [...t.current, ...t.retired].map((k) => ({
        keyId: k.keyId,
        flags: t.current.includes(k) ? 0 : KeyFlag.RETIRED,
        ckaId: k.ckaId,
        label: k.label ?? t.label,
        ...k.pub,
        certificates: k.certificates,
      })),
    });
    this.entries.set(t, { keys, entry });
    return entry;
  }

  private listeners: (() => void)[] = [];
  /** Called after every change (the key server forwards a new snapshot to its workers). */
  onChange(fn: () => void): void { this.listeners.push(fn); }

  private changed(): void {
    this.generation = (this.generation + 1) >>> 0;
    for (const fn of this.listeners) fn();
  }

  /**
   * The changes since the workers got what `sent` records (which is updated to
   * what they hold now): keys and tokens added or removed. A token's PIN digest
   * and identity never change under its label, so a token is sent once.
   */
  delta(sent: SentToWorkers): KeyStoreDelta {
    const tokens = [...this.tokens.values()];
    const now = tokens.flatMap((t) => [...t.current, ...t.retired].map((k) => workerKey(t, k)));
    const ids = new Set(now.map((k) => k.keyId));
    const removeKeyIds = [...sent.keyIds].filter((id) => !ids.has(id));
    const addKeys = now.filter((k) => !sent.keyIds.has(k.keyId));
    for (const id of removeKeyIds) sent.keyIds.delete(id);
    for (const k of addKeys) sent.keyIds.add(k.keyId);
    const removeTokens = [...sent.tokens.keys()].filter((l) => this.tokens.get(l)?.identity !== sent.tokens.get(l));
    for (const l of removeTokens) sent.tokens.delete(l);
    const addTokens = tokens.filter((t) => !sent.tokens.has(t.label));
    for (const t of addTokens) sent.tokens.set(t.label, t.identity);
    return { generation: this.generation, listBody: this.listBody(), addTokens: addTokens.map(workerToken), removeTokens, addKeys, removeKeyIds };
  }

  /** What `delta` starts from: what a full snapshot gives a worker now. */
  sentNow(): SentToWorkers {
    const tokens = [...this.tokens.values()];
    return { keyIds: new Set(tokens.flatMap((t) => [...t.current, ...t.retired].map((k) => k.keyId))), tokens: new Map(tokens.map((t) => [t.label, t.identity])) };
  }

  /** What a key worker thread needs to serve the key channel; structured-cloneable (KeyObjects included). */
  snapshot(): KeyStoreSnapshot {
    const tokens = [...this.tokens.values()];
    return {
      generation: this.generation,
      listBody: this.listBody(),
      tokens: tokens.map(workerToken),
      keys: tokens.flatMap((t) => [...t.current, ...t.retired].map((k) => workerKey(t, k))),
    };
  }
}

const workerToken = (t: Token): WorkerToken => ({ label: t.label, pinDigest: t.pinDigest, identity: t.identity });
const workerKey = (t: Token, k: StoredKey): KeyStoreSnapshot['keys'][number] => ({ keyId: k.keyId, tokenLabel: t.label, privateKey: k.privateKey, modulusBits: k.modulusBits, keyType: k.pub.keyType });

/**
 * What changed for the key workers since they were sent what `SentToWorkers`
 * records: tokens and private keys only when added or removed (cloning a
 * KeyObject to a worker costs a key export and import), the LIST body shared.
 * Sending everything on every change made provisioning N tokens cost O(N^2).
 */
export interface KeyStoreDelta {
  generation: number;
  listBody: Uint8Array;
  addTokens: WorkerToken[];
  /** Labels removed, or re-added under a new identity (then also in addTokens). */
  removeTokens: string[];
  addKeys: KeyStoreSnapshot['keys'];
  removeKeyIds: number[];
}

/** What the key server has sent its workers: key ids, and each token's identity by label. */
export interface SentToWorkers { keyIds: Set<number>; tokens: Map<string, string> }

/** What a key worker knows of a token besides its keys. */
export interface WorkerToken { label: string; pinDigest: Uint8Array; identity: string }

export interface KeyStoreSnapshot {
  generation: number;
  listBody: Uint8Array;
  tokens: WorkerToken[];
  keys: { keyId: number; tokenLabel: string; privateKey: KeyObject; modulusBits: number; keyType: KeyTypeCode }[];
}

const viewToken = (t: WorkerToken) => ({ pinDigest: Buffer.from(t.pinDigest), identity: t.identity });

/** The read-only view of a snapshot that a key worker serves connections from. */
export class KeyView {
  readonly generation: number;
  readonly listBody: Buffer;
  private tokens: Map<string, { pinDigest: Buffer; identity: string }>;
  private keys: Map<number, KeyStoreSnapshot['keys'][number]>;

  constructor(s: KeyStoreSnapshot, keys?: Map<number, KeyStoreSnapshot['keys'][number]>, tokens?: Map<string, { pinDigest: Buffer; identity: string }>) {
    this.generation = s.generation;
    this.listBody = Buffer.from(s.listBody.buffer, s.listBody.byteOffset, s.listBody.byteLength);
    this.tokens = tokens ?? new Map(s.tokens.map((t) => [t.label, viewToken(t)]));
    this.keys = keys ?? new Map(s.keys.map((k) => [k.keyId, k]));
  }

  /** A new view with the changes applied; this one stays as it was for requests already under way. */
  apply(d: KeyStoreDelta): KeyView {
    const keys = new Map(this.keys);
    for (const id of d.removeKeyIds) keys.delete(id);
    for (const k of d.addKeys) keys.set(k.keyId, k);
    const tokens = new Map(this.tokens);
    for (const l of d.removeTokens) tokens.delete(l);
    for (const t of d.addTokens) tokens.set(t.label, viewToken(t));
    return new KeyView({ generation: d.generation, listBody: d.listBody, tokens: [], keys: [] }, keys, tokens);
  }

  hasToken(label: string): boolean { return this.tokens.has(label); }
  /** The token's identity now (see Token.identity); a login made under another one no longer counts. */
  identity(label: string): string | undefined { return this.tokens.get(label)?.identity; }
  key(keyId: number): KeyStoreSnapshot['keys'][number] | undefined { return this.keys.get(keyId); }
  /** The token's keys (a scan: for removals, which are rare). */
  keysOf(label: string): KeyStoreSnapshot['keys'] { return [...this.keys.values()].filter((k) => k.tokenLabel === label); }

  checkPin(label: string, pin: Uint8Array): boolean {
    const want = this.tokens.get(label)?.pinDigest;
    // Compare against something even for an unknown label, so timing says nothing either way.
    return crypto.timingSafeEqual(pinDigest(pin), want ?? UNKNOWN_TOKEN_DIGEST) && want !== undefined;
  }
}

const UNKNOWN_TOKEN_DIGEST = pinDigest(Buffer.from('\0no such token'));
