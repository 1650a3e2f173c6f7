// The provisioning channel's server on the enclave app's main thread
// (docs/protocol.md): the agent adds, renews, refreshes and removes tokens. A
// bundle's private key is decrypted here through KMS with an attestation
// document (enclave/kms-client.ts), checked against its certificate, and kept in
// memory only; plaintext bundles are refused outside local mode.
import net from 'node:net';
import { listen, peerOf } from '../shared/transport.ts';
import type { PeerIdentity } from '../shared/native.ts';
import type { Address } from '../shared/address.ts';
import { parseBundle, parseFileDb, splitLeaf, BundleError, type Bundle, type FileDbKey } from '../shared/bundle.ts';
import { PIN_BYTES, TOKEN_LABEL_MAX_BYTES } from '../shared/key-wire.ts';
import { serveJsonFrames } from '../shared/json-frames.ts';
import { PROVISIONING, PROVISION_VERSION, PROVISION_OPS, ProvisionError, type TokenDescription, type Health, type ProvisionOp, HEALTH_NONCE_BYTES } from '../shared/provision-wire.ts';
import { log } from '../shared/log.ts';
import { partitionOf } from '../shared/aws-partition.ts';
import { KeyStore, KeyMaterialError } from './keystore.ts';
import { ConnectionsByActivity } from './connections-by-activity.ts';
import { attestedDecrypt, prepareRecipient, warmUpKmsClient, type KmsAccess, type AwsCredentials } from './kms-client.ts';
import type { Nsm } from './nsm.ts';
import { emptyOperationStats, type TokenOperationStats } from '../shared/operation-stats.ts';

export interface ProvisionServerOptions {
  store: KeyStore; nsm: Nsm; kms: KmsAccess; localMode: boolean;
  /** Resolves once the key channel serves the store as it is now (KeyServer.settled); a reply to a change waits for it. */
  keysServed?: () => Promise<unknown>;
  /** Each token's private-key operations since the enclave app started (KeyServer.operationStats), for describe. */
  operationStats?: () => Promise<Map<string, TokenOperationStats>>;
}

function field(args: Record<string, unknown>, name: string): string {
  const v = args[name];
  if (typeof v !== 'string' || v === '') throw new ProvisionError('BadRequest', `"${name}" must be a non-empty string`);
  return v;
}

function label(args: Record<string, unknown>): string {
  const l = field(args, 'label');
  if (Buffer.byteLength(l) > TOKEN_LABEL_MAX_BYTES) throw new ProvisionError('BadRequest', `"label" is ${Buffer.byteLength(l)} bytes, at most ${TOKEN_LABEL_MAX_BYTES}`);
  return l;
}

/**
 * Whether a peer may provision (docs/protocol.md, "Trust model"): only root on the
 * parent. Over vsock the enclave cannot see a uid, but a source port below 1024
 * can only be bound with CAP_NET_BIND_SERVICE, which the root-owned agent has and
 * no other parent process does; over unix (local mode, tests) the kernel says the
 * peer's uid, and root or the enclave app's own user may provision.
 * Returns why not, or undefined.
 */
export function provisioningRefusal(peer: PeerIdentity, ownUid = process.getuid?.() ?? 0): string | undefined {
  if (peer.family === 'vsock') return peer.port < 1024 ? undefined : `vsock peer cid ${peer.cid} connected from port ${peer.port}, not a privileged (< 1024, root-only) port`;
  return peer.uid === 0 || peer.uid === ownUid ? undefined : `unix peer uid ${peer.uid} (pid ${peer.pid}) is neither root nor uid ${ownUid}`;
}

/** health's nonce, checked: base64 of HEALTH_NONCE_BYTES bytes. */
function healthNonce(v: unknown): Buffer {
  const b = typeof v === 'string' && /^[A-Za-z0-9+/]*={0,2}$/.test(v) ? Buffer.from(v, 'base64') : undefined;
  if (!b || b.length < HEALTH_NONCE_BYTES.min || b.length > HEALTH_NONCE_BYTES.max) throw new ProvisionError('BadRequest', `"nonce" must be base64 of ${HEALTH_NONCE_BYTES.min}..${HEALTH_NONCE_BYTES.max} bytes`);
  return b;
}

const shortened = (text: string, max: number) => (text.length <= max ? text : `${text.slice(0, max - 3)}...`);

/** The agent needs one connection; at this many, a new one closes the one quiet longest. */
const MAX_PROVISION_CONNECTIONS = 64;

export class ProvisionServer {
  readonly server: net.Server;
  private busy = new Set<string>();
  private readonly connections = new ConnectionsByActivity();
  private closedIdle = 0;
  private lastLimitLog = 0;
  private refused = 0;
  private lastRefusalLog = 0;

  constructor(private readonly o: ProvisionServerOptions) {
    this.server = net.createServer((s) => this.accept(s));
  }

  async listen(address: Address): Promise<void> {
    prepareRecipient(this.o.nsm);
    await warmUpKmsClient();
    await listen(this.server, address);
  }
  close(): Promise<void> { return new Promise((r) => this.server.close(() => r())); }

  private accept(sock: net.Socket): void {
    // Unauthorised peers are refused before they count against any limit, so they cannot crowd out the agent.
    let why: string | undefined;
    try { why = provisioningRefusal(peerOf(sock)); } catch (e) { why = `cannot identify the peer (${(e as Error).message})`; }
    if (why) {
      sock.destroy();
      this.refused++;
      if (Date.now() - this.lastRefusalLog > 10_000) {
        this.lastRefusalLog = Date.now();
        log.warn(`provisioning channel: refused a connection: ${why} (${this.refused} refused so far; only root on the parent may provision)`);
      }
      return;
    }
    if (this.connections.size >= MAX_PROVISION_CONNECTIONS) {
      this.connections.closeIdlest();
      this.closedIdle++;
      if (Date.now() - this.lastLimitLog > 10_000) {
        this.lastLimitLog = Date.now();
        log.warn(`provisioning channel: ${MAX_PROVISION_CONNECTIONS} connections open, its limit: closing those idle longest (${this.closedIdle} so far)`);
      }
    }
    this.connections.track(sock);
    serveJsonFrames(sock, PROVISIONING, { handle: (m) => this.handle(m), onInternal: (op, message) => log.error(`provisioning ${op}: ${message}`), onDrop: (why) => log.warn(`provisioning: dropping a client: ${why}`) });
  }

  private async handle(m: Record<string, unknown>): Promise<Record<string, unknown>> {
    if (!PROVISION_OPS.includes(m.op as ProvisionOp)) throw new ProvisionError('BadRequest', `unknown operation "${String(m.op)}" (expected ${PROVISION_OPS.join(', ')})`);
    const op = m.op as ProvisionOp;
    switch (op) {
      case 'health': {
        const mem = process.memoryUsage();
        const mib = (n: number) => Math.round(n / 1048576);
        const h: Health = { ok: true, version: PROVISION_VERSION, nsm: this.o.nsm.kind, localMode: this.o.localMode, tokens: this.o.store.labels().length, generation: this.o.store.generation, memory: { rssMiB: mib(mem.rss), heapUsedMiB: mib(mem.heapUsed), externalMiB: mib(mem.external) } };
        // A nonce asks the enclave to prove what it is now: the NSM signs a document over it (the agent checks PCRs, chain and freshness).
        if (m.nonce !== undefined) h.attestation = this.o.nsm.attestation({ nonce: healthNonce(m.nonce) }).toString('base64');
        return { ...h };
      }
      case 'describe': {
        const ops = await this.o.operationStats?.();
        return { tokens: this.o.store.labels().map((l) => ({ ...this.describe(l), ...(ops ? { operations: ops.get(l) ?? emptyOperationStats() } : {}) })) };
      }
      case 'remove': {
        const l = label(m);
        if (!this.o.store.remove(l)) throw new ProvisionError('NoSuchToken', `no token "${l}"`);
        log.token(l).info('token removed');
        await this.o.keysServed?.();
        return {};
      }
      case 'add': case 'update': case 'refresh': return this.provision(op, m);
      default: { const unhandled: never = op; throw new ProvisionError('Internal', `operation ${String(unhandled)} has no handler`); }
    }
  }

  private describe(l: string): TokenDescription {
    const t = this.o.store.token(l)!;
    const key = t.current[0];
    const c = key.leafFacts;
    return {
      // A subject is cut at 256 characters, so that describe of the most tokens (LIST_CAPS) stays inside one 1 MiB frame.
      label: l, keyType: key.keyTypeName, subject: shortened(c?.subject ?? '', 256), notAfter: c?.notAfter ?? '', serial: c?.serial ?? '', fingerprint256: c?.fingerprint256 ?? '',
      refreshedAt: new Date(t.refreshedAt).toISOString(), retiredKeys: t.retired.length, keys: t.current.length,
    };
  }

  private async provision(op: 'add' | 'update' | 'refresh', m: Record<string, unknown>): Promise<Record<string, unknown>> {
    const l = label(m);
    const pin = field(m, 'pin');
    if (Buffer.byteLength(pin) < PIN_BYTES.min || Buffer.byteLength(pin) > PIN_BYTES.max) throw new ProvisionError('BadRequest', `"pin" must be ${PIN_BYTES.min}..${PIN_BYTES.max} bytes`);
    const exists = this.o.store.token(l) !== undefined;
    if (op === 'add' && exists) throw new ProvisionError('TokenExists', `token "${l}" exists; use update to renew it`);
    if (op !== 'add' && !exists) throw new ProvisionError('NoSuchToken', `no token "${l}" to ${op}`);
    // A PIN is set when a token is added and only then; changing it takes remove and add (which log every connection out).
    if (op !== 'add' && !this.o.store.pinMatches(l, Buffer.from(pin))) throw new ProvisionError('PinChange', `token "${l}": ${op} cannot change a token's PIN; remove the token and add it again`);
    // A bundle (Acm, S3: one key and its certificate chain) or the keys of a FileDb.
    let bundle: Bundle | undefined, fileDb: FileDbKey[] | undefined;
    try {
      if (m.keys !== undefined) fileDb = parseFileDb(JSON.stringify(m.keys), 'keys');
      else bundle = parseBundle(JSON.stringify(m.bundle ?? null), 'bundle');
    } catch (e) { throw new ProvisionError('BadRequest', (e as BundleError).message); }
    const sealed = bundle ? [{ method: bundle.encryptionMethod, ciphertext: bundle.encryptedPrivateKey, encryptionContext: bundle.encryptionContext }]
      : fileDb!.map((k) => ({ method: 'KMS' as const, ciphertext: k.encrypted_pem_b64, encryptionContext: undefined }));
    if (this.busy.has(l)) throw new ProvisionError('BadRequest', `token "${l}" is being provisioned already`);
    this.busy.add(l);
    const tlog = log.token(l);
    const keyPems: Buffer[] = [];
    try {
      for (const k of sealed) keyPems.push(await this.unseal(k, m, tlog));
      const materials = bundle ? [{ privateKeyPem: keyPems[0], certificatePem: bundle.certificate, chainPem: bundle.certificateChain }]
        : fileDb!.map((k, i) => ({ privateKeyPem: keyPems[i], ckaId: Buffer.from([k.id]), label: k.label, ...(k.cert_pem ? { certificatePem: splitLeaf(k.cert_pem).leaf, chainPem: splitLeaf(k.cert_pem).chain } : {}) }));
      try {
        if (op === 'refresh' && this.o.store.token(l) && (() => { try { return this.o.store.sameKeys(l, keyPems); } catch { return false; } })()) {
          this.o.store.refreshed(l);
          tlog.info('refreshed (same key)');
        } else {
          this.o.store.put(l, Buffer.from(pin), materials);
          tlog.info(op === 'add' ? `token added${materials.length > 1 ? ` with ${materials.length} keys` : ''}` : 'token renewed; the previous key stays usable for its grace period');
        }
      } catch (e) {
        if (e instanceof KeyMaterialError) {
          throw e.kind === 'mismatch' ? new ProvisionError('KeyMismatch', e.message)
            : new ProvisionError('KeyInvalid', sealed[0].method === 'KMS' && e.message.startsWith('private key: cannot parse')
              ? `the key KMS returned does not parse: a damaged CiphertextForRecipient or bundle (${e.message})` : e.message);
        }
        throw e;
      }
      // "Done" means the key channel serves it: the agent reloads the web server next.
      await this.o.keysServed?.();
      return { token: this.describe(l) };
    } finally {
      for (const k of keyPems) k.fill(0);
      this.busy.delete(l);
    }
  }

  /** One sealed private key to its PEM: through KMS with attestation, or (local mode only) plaintext. */
  private async unseal(k: { method: 'KMS' | 'plaintext'; ciphertext: string; encryptionContext?: Record<string, string> }, m: Record<string, unknown>, tlog: ReturnType<typeof log.token>): Promise<Buffer> {
    if (k.method === 'plaintext') {
      if (!this.o.localMode) throw new ProvisionError('PlaintextRefused', 'plaintext private keys are refused: this enclave takes keys only through KMS with attestation');
      return Buffer.from(k.ciphertext, 'base64');
    }
    const given = m.credentials as Record<string, unknown> | undefined;
    if (!given || typeof given.accessKeyId !== 'string' || typeof given.secretAccessKey !== 'string') throw new ProvisionError('BadRequest', '"credentials" {accessKeyId, secretAccessKey, sessionToken} are needed to decrypt through KMS');
    // Only these three: they are used for this one call and not kept.
    const creds: AwsCredentials = { accessKeyId: given.accessKeyId, secretAccessKey: given.secretAccessKey, sessionToken: typeof given.sessionToken === 'string' ? given.sessionToken : undefined };
    const region = field(m, 'region');
    try { partitionOf(region); } catch (e) { throw new ProvisionError('BadRequest', `"region": ${(e as Error).message}`); }
    const started = Date.now();
    let pem: Buffer;
    try {
      pem = await attestedDecrypt({ ciphertext: Buffer.from(k.ciphertext, 'base64'), region, credentials: creds, encryptionContext: k.encryptionContext, nsm: this.o.nsm, kms: this.o.kms });
    } catch (e) {
      const err = e as Error & { name?: string };
      if (err.name === 'AccessDeniedException') throw new ProvisionError('KmsDenied', `KMS refused the decrypt: ${err.message}`);
      throw new ProvisionError('KmsError', `KMS decrypt failed: ${err.name && err.name !== 'Error' ? `${err.name}: ` : ''}${err.message}`);
    }
    tlog.info(`private key decrypted through KMS with attestation in ${Date.now() - started} ms`);
    return pem;
  }
}
