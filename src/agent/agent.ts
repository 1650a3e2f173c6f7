// The agent: from acm.yaml to serving web servers. For each token it fetches the
// bundle (conditionally, by ETag), hands it to the enclave app (which decrypts the
// key through KMS with attestation), proves the token signs through PKCS#11, writes
// the web server's files and reloads it. It polls for renewals, refreshes
// (re-attests) on schedule, and when the enclave dies it starts a new one and
// provisions every token again with the same PINs, without touching the web server.
// A failing token never stops the others.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { log } from '../../shared/log.ts';
import { parseAddress } from '../../shared/address.ts';
import { ProvisionClient, ProvisionError, type ProvisionOp, type ProvisionOps, type TokenRequest } from '../../shared/provision-wire.ts';
import { targetSpec, describeSource, describeTarget, type AcmConfig, type TokenConfig } from './config.ts';
import { instanceContext, type Endpoints, type InstanceContext } from './aws.ts';
import { fetchBundle, readFileDb, type FetchResult } from './source.ts';
import { writeTarget, writeAtomic, companionFiles, readPinFile, keyUri } from './targets.ts';
import { verifyTokenSigns } from './challenge.ts';
import { resolveOpenSsl } from './openssl-path.ts';
import { splitLeaf, type Bundle, type FileDbKey } from '../../shared/bundle.ts';
import { PIN_BYTES } from '../../shared/key-wire.ts';
import type { TokenDescription } from '../../shared/provision-wire.ts';
import type { EnclaveController, EnclaveEndpoints } from './enclave-controller.ts';
import { certificateFacts, certificateInfo, iso, type AgentStatus, type TokenStatus } from './token-status.ts';
import { eachLimited, EnclaveUnreachable, withRetries } from './retry.ts';
import { checkAttestation, type AttestationCheck } from './attestation-check.ts';
import type { AgentCounters } from './metrics.ts';

/** The enclave's attestation checks: the last one, and how many passed and failed since the agent started. */
export interface AttestationState { last?: AttestationCheck; passed: number; failed: number }

export type TokenStateName = 'pending' | 'serving' | 'failed';
export interface TokenState {
  config: TokenConfig;
  pin: string;
  etag?: string;
  /** Acm and S3 sources: the bundle last fetched. */
  bundle?: Bundle;
  /** A FileDb source: its keys, read once (as AWS's agent does), or again after acm.yaml names another file. */
  fileDb?: FileDbKey[];
  state: TokenStateName;
  error?: string;
  lastSync?: number;
  lastRefresh?: number;
  /** When this agent added it to the enclave (an edit of acm.yaml, or a start that found the enclave without it): a web server started before cannot load it. */
  addedAt?: number;
}

/** A token the agent added to the enclave, and when (Agent.addedTokens). */
export interface AddedToken { label: string; addedAt: number }

export interface AgentOptions {
  config: AcmConfig;
  enclave: EnclaveController;
  endpoints?: Endpoints;
  /** Reloads the web server gracefully (the service restarts it instead for a token it cannot load otherwise: addedTokens()). */
  reload: (cause: string) => Promise<void>;
  /** Attempts per operation before a token is marked failed (with backoff and jitter). */
  retries?: number;
  /** Called when the provisioning connection ends by itself: the enclave may be gone (check it now rather than at the next health check). */
  onEnclaveLost?: () => void;
  /** Where the PIN file of a token without a target goes (root only); none when undefined. */
  pinDir?: string;
  /** Called when a token has gone into the enclave and passed its check, with how long that took (the metrics' provisioning histogram). */
  onProvisioned?: (op: 'add' | 'update' | 'refresh', seconds: number) => void;
}

/** A key a token serves, as the agent knows it before the enclave has it: its CKA_ID, CKA_LABEL and certificate if any. */
interface ServedKey { ckaId: Buffer; label: string; certificatePem?: string; chainPem: string }

function servedKeys(t: TokenState): ServedKey[] {
  if (t.fileDb) return t.fileDb.map((k) => ({ ckaId: Buffer.from([k.id]), label: k.label, ...(k.cert_pem ? { certificatePem: splitLeaf(k.cert_pem).leaf, chainPem: splitLeaf(k.cert_pem).chain } : { chainPem: '' }) }));
  if (t.bundle) return [{ ckaId: certificateInfo(t.bundle.certificate).ckaId, label: t.config.label, certificatePem: t.bundle.certificate, chainPem: t.bundle.certificateChain }];
  return [];
}

/**
 * Reloads the web server for labels as they come: the first at once, and those
 * that come while a reload is under way together in one more after it.
 * settled() waits for the last and rejects if any reload failed.
 */
class CoalescedReload {
  private waiting: string[] = [];
  private running?: Promise<void>;
  private failure?: unknown;
  constructor(private readonly reload: (labels: string[]) => Promise<void>) {}
  add(label: string): void {
    this.waiting.push(label);
    this.running ??= this.drain();
  }
  private async drain(): Promise<void> {
    while (this.waiting.length) {
      const now = this.waiting;
      this.waiting = [];
      try { await this.reload(now); } catch (e) { this.failure ??= e; }
    }
    this.running = undefined;
  }
  async settled(): Promise<void> {
    await this.running;
    if (this.failure) throw this.failure;
  }
}

/** Labels for a log line: the first few and how many more (1,000 tokens make a line, not a page). */
function labels(xs: string[], shown = 5): string {
  return xs.length <= shown ? xs.join(', ') : `${xs.slice(0, shown).join(', ')} and ${xs.length - shown} more`;
}

/** The token's PIN file: beside its target, else (no target) in pinDir, named by the label in hex; undefined when neither. */
function pinFileOf(t: TokenConfig, pinDir: string | undefined): string | undefined {
  const spec = targetSpec(t);
  if (spec) return companionFiles(spec).pin;
  return pinDir ? path.join(pinDir, `${Buffer.from(t.label).toString('hex')}.pin`) : undefined;
}

/** The PIN: from acm.yaml, else the one in the token's PIN file (so an agent restart keeps it), else a new one. */
function pinFor(t: TokenConfig, pinDir: string | undefined): string {
  if (t.pin) return t.pin;
  const file = pinFileOf(t, pinDir);
  const p = file ? readPinFile(file)?.trim() : undefined;
  if (p && Buffer.byteLength(p) >= PIN_BYTES.min && Buffer.byteLength(p) <= PIN_BYTES.max) return p;
  return crypto.randomBytes(16).toString('base64url');
}

export class Agent {
  readonly tokens = new Map<string, TokenState>();
  private ctx?: InstanceContext;
  private endpoints?: EnclaveEndpoints;
  private provision?: ProvisionClient;
  private connecting?: Promise<ProvisionClient>;
  private readonly retries: number;
  /**
   * Set when the enclave could not be reached ('unreachable') or failed a probe
   * ('given up'): token-by-token work stops and every call fails at once, leaving
   * it to the health check. A probe that passes, or a new enclave, clears it; a
   * given-up enclave is replaced without being probed again.
   */
  private lost?: 'unreachable' | 'given up';

  /** The enclave's attestation checks (attestation-check.ts): a failing enclave gets no key. */
  readonly attestation: AttestationState = { passed: 0, failed: 0 };
  /** Counted since the agent started (status and metrics); the service counts the reloads. */
  readonly counters: AgentCounters = { enclaveRestarts: 0, reloads: 0, reloadFailures: 0 };
  private lastAttestationLog = { text: '', at: 0 };

  constructor(private o: AgentOptions) {
    this.retries = o.retries ?? 4;
  }

  get enclaveEndpoints(): EnclaveEndpoints | undefined { return this.endpoints; }
  /** The instance: region, role, credentials (undefined before start). */
  get instance(): InstanceContext | undefined { return this.ctx; }
  /** What the enclave must attest as (the image's measurements). */
  expectedEnclave(): ReturnType<EnclaveController['expected']> { return this.o.enclave.expected(); }

  /** Starts the enclave and provisions every token; reloads the web server once if any token serves. */
  async start(): Promise<void> {
    this.ctx = await withRetries('IMDS', this.retries, () => instanceContext(this.o.endpoints));
    log.info(`instance ${this.ctx.instanceId} in ${this.ctx.region}, role ${this.ctx.roleArn}`);
    await this.startEnclave();
    // Tokens the enclave does not have yet are new to a web server already running, too.
    const present = await this.call('describe', {}).then((r) => new Set(r.tokens.map((x) => x.label)), () => undefined);
    const now = Date.now();
    for (const t of this.o.config.tokens) this.tokens.set(t.label, { config: t, pin: pinFor(t, this.o.pinDir), state: 'pending', ...(present && !present.has(t.label) ? { addedAt: now } : {}) });
    await this.provisionAll('add');
    const serving = [...this.tokens.values()].filter((t) => t.state === 'serving').map((t) => t.config.label);
    if (serving.length) await this.o.reload(`the agent started: ${labels(serving)} provisioned`);
  }

  private async startEnclave(): Promise<void> {
    this.endpoints = await this.o.enclave.start();
    this.provision?.close();
    this.provision = undefined;
    await withRetries('provisioning channel', this.retries, () => this.channel());
    this.lost = undefined;
    // Before any key goes in: the enclave proves it is the image this agent means to run.
    this.attestation.last = undefined;
    await this.checkAttestation();
  }

  /**
   * Asks the enclave for an attestation document over a fresh nonce and checks
   * it (attestation-check.ts). A failure is logged as an error (again when it
   * changes, else once a minute); while it fails, no token is provisioned.
   * Returns true when the enclave passes after having failed: tokens waiting
   * on it can be provisioned now (retryWaiting).
   */
  async checkAttestation(): Promise<boolean> {
    const wasFailing = this.attestation.last?.ok === false;
    const nonce = crypto.randomBytes(32);
    const first = this.attestation.last === undefined;
    let check: AttestationCheck;
    let source = '';
    try {
      const [h, expected] = await Promise.all([this.call('health', { nonce: nonce.toString('base64') }, 5000, true), this.o.enclave.expected()]);
      source = expected.source;
      check = checkAttestation(h.attestation, nonce, expected);
    } catch (e) {
      check = { ok: false, checkedAt: new Date().toISOString(), failures: [`no attestation: ${(e as Error).message}`] };
    }
    this.attestation.last = check;
    if (check.ok) {
      this.attestation.passed++;
      if (wasFailing) log.info('the enclave passes its attestation check again: tokens are provisioned into it');
      else if (first) log.info(`the enclave attests as its image: ${Object.entries(check.pcrs ?? {}).map(([i, v]) => `PCR${i} ${v.slice(0, 16)}...`).join(', ')} as expected (${source}); the document is fresh and carries the agent's nonce`);
      this.lastAttestationLog.text = '';
      return wasFailing;
    }
    this.attestation.failed++;
    const text = check.failures.join('; ');
    if (text !== this.lastAttestationLog.text || Date.now() - this.lastAttestationLog.at > 60_000) {
      this.lastAttestationLog = { text, at: Date.now() };
      log.error(`the enclave failed its attestation check (${this.attestation.failed} failed so far), so no key goes into it: ${text}`);
    }
    return false;
  }

  /** Why no key may go into the enclave now, or undefined. */
  private attestationRefusal(): string | undefined {
    const last = this.attestation.last;
    return last && !last.ok ? `the enclave failed its attestation check, so no key goes into it: ${last.failures.join('; ')}` : undefined;
  }

  /** Tokens not serving (one that waited on a failing attestation check, say) provisioned now; reloads if any serves. */
  async retryWaiting(cause: string): Promise<string[]> {
    const waiting = [...this.tokens.values()].filter((t) => t.state !== 'serving');
    const done = (await this.provisionMany(waiting.map((t) => ({ t, op: 'add' as const })))).map((t) => t.config.label);
    if (done.length) await this.o.reload(`${cause}: ${labels(done)} provisioned`);
    return done;
  }

  /**
   * The provisioning connection, opened again if it has closed: a dropped
   * connection (the enclave closed it, a flood pushed it out) is not a dead enclave.
   */
  private async channel(): Promise<ProvisionClient> {
    if (!this.endpoints) throw new Error('not started');
    if (this.provision && !this.provision.closed) return this.provision;
    // Callers that find it closed at the same time share one new connection.
    this.connecting ??= (async () => {
      try {
        this.provision?.close();
        const client = await ProvisionClient.connect(parseAddress(this.endpoints!.provisionAddress));
        client.onLost = () => { if (this.provision === client) this.o.onEnclaveLost?.(); };
        this.provision = client;
        return client;
      } finally { this.connecting = undefined; }
    })();
    return this.connecting;
  }

  private async call<K extends ProvisionOp>(op: K, args: ProvisionOps[K]['args'], timeoutMs?: number, probing = false): Promise<ProvisionOps[K]['result']> {
    if (this.lost && !probing) throw new EnclaveUnreachable('the enclave was given up (it did not answer); the health check replaces it');
    let ch: ProvisionClient;
    try { ch = await this.channel(); } catch (e) {
      this.lost ??= 'unreachable';
      throw new EnclaveUnreachable(`the enclave does not answer on ${this.endpoints?.provisionAddress}: ${(e as Error).message}`);
    }
    return ch.op(op, args, timeoutMs);
  }

  private async provisionAll(op: 'add' | 'update'): Promise<void> {
    await this.provisionMany([...this.tokens.values()].map((t) => ({ t, op })));
  }

  /**
   * Several tokens: into the enclave a few at a time (after an enclave restart
   * every token is down until it is back, and each waits mostly on KMS), then
   * each checked and rolled out. Checking after all are in means the PKCS#11
   * module reads the token list once, not once per token (the list changes with
   * every token added, and reading it costs as much as it is long). Returns the
   * tokens rolled out.
   */
  private async provisionMany(items: { t: TokenState; op: 'add' | 'update' }[]): Promise<TokenState[]> {
    const delivered: (typeof items[number] & { started: number })[] = [];
    await eachLimited(items, this.o.config.options.provision_concurrency, async (it) => { const started = performance.now(); if (!this.lost && await this.deliver(it.t, it.op, true)) delivered.push({ ...it, started }); });
    const out: TokenState[] = [];
    for (const it of delivered) if (await this.rollOut(it.t, it.op)) { out.push(it.t); this.provisioned(it.op, it.started); }
    return out;
  }

  /** Fetches (unless `refetch` is false and a bundle is cached), provisions, checks, writes the target. */
  private async provisionToken(t: TokenState, op: 'add' | 'update' | 'refresh', refetch: boolean): Promise<boolean> {
    const started = performance.now();
    const ok = await this.deliver(t, op, refetch) && await this.rollOut(t, op);
    if (ok) this.provisioned(op, started);
    return ok;
  }

  /** A token went into the enclave and passed its check, `started` (performance.now()) ago. */
  private provisioned(op: 'add' | 'update' | 'refresh', started: number): void {
    this.o.onProvisioned?.(op, (performance.now() - started) / 1000);
  }

  /** Step 1: the bundle into the enclave (fetched first unless `refetch` is false and one is cached). */
  private async deliver(t: TokenState, op: 'add' | 'update' | 'refresh', refetch: boolean): Promise<boolean> {
    try {
      const refusal = this.attestationRefusal();
      if (refusal) throw new Error(refusal);
      const src = t.config.source;
      if ('FileDb' in src) {
        // Read once; again only while it has never been read whole.
        if (!t.fileDb) { t.fileDb = readFileDb(src.FileDb.path); t.lastSync = Date.now(); }
      } else if (refetch || !t.bundle) {
        const r = await withRetries(`[${t.config.label}] S3`, this.retries, () => fetchBundle(src, this.ctx!, undefined));
        if (r.changed) { t.bundle = r.bundle; t.etag = r.etag; }
        t.lastSync = Date.now();
      }
      const creds = await this.ctx!.credentials();
      const args: TokenRequest = { label: t.config.label, pin: t.pin, ...(t.fileDb ? { keys: t.fileDb } : { bundle: t.bundle }), credentials: { accessKeyId: creds.accessKeyId, secretAccessKey: creds.secretAccessKey, sessionToken: creds.sessionToken }, region: this.ctx!.region };
      // acm.yaml's enclave.attestation_retry_count: retries of the enclave's attested KMS decrypt.
      await withRetries(`[${t.config.label}] provisioning`, this.o.retries ?? this.o.config.enclave.attestation_retry_count + 1, async () => {
        try { await this.call(op, args); } catch (e) {
          // The enclave may already have it (agent restarted) or lost it (enclave restarted).
          if (e instanceof ProvisionError && e.code === 'TokenExists') await this.call('update', args).catch((u) => this.replaceOnPinChange(u, args));
          else if (e instanceof ProvisionError && e.code === 'NoSuchToken') await this.call('add', args);
          else await this.replaceOnPinChange(e, args);
        }
      }).catch((e) => {
        throw e instanceof ProvisionError ? new ProvisionError(e.code, `the enclave could not take the ${t.fileDb ? 'keys' : 'bundle'} from ${describeSource(t.config).replace(/^\w+ /, '')}: ${e.message}`) : e;
      });
      t.lastRefresh = Date.now();
      return true;
    } catch (e) { return this.failed(t, op, e as Error); }
  }

  /**
   * The enclave never lets update or refresh change a PIN (a PIN change must log
   * every web-server connection out): when acm.yaml's PIN changed, the agent
   * removes the token and adds it again with the new one.
   */
  private async replaceOnPinChange(e: unknown, args: TokenRequest): Promise<void> {
    if (!(e instanceof ProvisionError && e.code === 'PinChange')) throw e;
    log.token(args.label).info('the PIN changed: removing the token and adding it again with the new PIN');
    await this.call('remove', { label: args.label });
    await this.call('add', args);
  }

  /** Step 2: prove it signs through PKCS#11, then point the web server at it. */
  private async rollOut(t: TokenState, op: 'add' | 'update' | 'refresh'): Promise<boolean> {
    try {
      const keys = servedKeys(t);
      await verifyTokenSigns({ address: this.endpoints!.keyAddress, label: t.config.label, pin: t.pin, keys });
      if (op !== 'refresh') this.writeFiles(t, keys[0]);
      t.state = 'serving';
      t.error = undefined;
      const leaf = keys.find((k) => k.certificatePem)?.certificatePem;
      log.token(t.config.label).info(op === 'refresh' ? 'refreshed (re-attested)' : `serving ${leaf ? certificateFacts(leaf).subject : `${keys.length} key${keys.length > 1 ? 's' : ''} without a certificate`}${targetSpec(t.config) ? '' : ' (no target: no web-server file written; nitro-acm status shows its pkcs11: URI)'}`);
      return true;
    } catch (e) { return this.failed(t, op, e as Error); }
  }

  /** The web server's files for the token's first key; a token without a target gets only its PIN file (pinDir). */
  private writeFiles(t: TokenState, key: ServedKey): void {
    const spec = targetSpec(t.config);
    if (!spec) {
      const file = pinFileOf(t.config, this.o.pinDir);
      if (file) { fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 }); writeAtomic(file, t.pin, 0o400); }
      return;
    }
    const openssl = resolveOpenSsl(this.o.config.options, writeAtomic, (l) => log.info(l));
    writeTarget(spec, { label: t.config.label, source: describeSource(t.config), pin: t.pin, ckaId: key.ckaId, certificatePem: key.certificatePem, chainPem: key.chainPem, pinInConfig: this.o.config.options.pin_in_config }, openssl);
  }

  private failed(t: TokenState, op: string, e: Error): false {
    t.error = e.message;
    // A token that was serving keeps serving from the enclave's copy and the last good files.
    if (t.state !== 'serving') t.state = 'failed';
    log.token(t.config.label).error(`${op} failed: ${t.error}`);
    return false;
  }

  /**
   * One poll of every token's source: an unchanged object costs one conditional
   * request. Returns the labels renewed (or serving now after a failure), in
   * acm.yaml's order.
   *
   * S3 sources are polled several at a time (options.sync_concurrency), and
   * each result is handled as soon as it arrives, one token at a time: a renewal
   * is rolled out and the web server reloaded when its own poll sees it, not after
   * the polls of every other token (among 1,000 that took most of a second). A
   * reload under way when another token is rolled out is followed by one more.
   */
  async sync(): Promise<string[]> {
    const renewed = new Set<TokenState>();
    const reload = new CoalescedReload((done) => this.o.reload(`certificate renewed, or serving again after a failure: ${labels(done)}`));
    const rolledOut = (t: TokenState) => { renewed.add(t); reload.add(t.config.label); };
    let handled = Promise.resolve();
    await eachLimited([...this.tokens.values()].filter((t) => !('FileDb' in t.config.source)), this.o.config.options.sync_concurrency, async (t) => {
      const polled = await fetchBundle(t.config.source as Exclude<TokenConfig['source'], { FileDb: unknown }>, this.ctx!, t.state === 'serving' && t.bundle ? t.etag : undefined)
        .then((r) => ({ r }), (error: Error) => ({ error }));
      handled = handled.then(() => this.afterPoll(t, polled, rolledOut));
    });
    await handled;
    for (const t of this.tokens.values()) {
      // FileDb: never re-read (AWS's agent does not either); one that is not serving is tried again.
      if ('FileDb' in t.config.source && t.state !== 'serving' && !this.lost && await this.deliver(t, 'add', false) && await this.rollOut(t, 'add')) rolledOut(t);
    }
    await reload.settled();
    return [...this.tokens.values()].filter((t) => renewed.has(t)).map((t) => t.config.label);
  }

  /** What one S3 poll found, acted on: a changed object (or a token not serving) delivered and rolled out. */
  private async afterPoll(t: TokenState, polled: { r: FetchResult } | { error: Error }, rolledOut: (t: TokenState) => void): Promise<void> {
    try {
      if ('error' in polled) throw polled.error;
      const r = polled.r;
      // A token that is not serving is tried again whether or not its object
      // changed: what failed may have been passing (KMS, the enclave, the challenge).
      const serving = t.state === 'serving';
      t.lastSync = Date.now();
      if (serving) t.error = undefined;
      if (!r.changed && serving) return;
      if (this.lost) return; // the health check provisions every token anew
      const previous = t.bundle;
      if (r.changed) { t.bundle = r.bundle; t.etag = r.etag; }
      const op = serving ? 'update' : 'add';
      const started = performance.now();
      const delivered = await this.deliver(t, op, false);
      if (delivered && await this.rollOut(t, op)) { rolledOut(t); this.provisioned(op, started); return; }
      if (serving && previous) {
        // The renewal stopped half way. The web server still has the previous
        // certificate's files; the enclave must keep its key as the current one
        // (a retired key is dropped after its grace period). The next poll tries
        // the new certificate again.
        t.bundle = previous;
        t.etag = undefined;
        if (delivered) {
          const error = t.error;
          if (await this.deliver(t, 'update', false)) log.token(t.config.label).warn('the enclave serves the previous certificate\'s key again; the renewal is retried at the next poll');
          t.error = error;
        }
      }
    } catch (e) {
      t.error = `sync: ${(e as Error).message}`;
      log.token(t.config.label).warn(`sync: ${(e as Error).message} (${t.state === 'serving' ? 'still serving the current certificate' : 'not serving yet'})`);
    }
  }

  /** Re-attests and re-decrypts every token (the enclave drops tokens not refreshed within its TTL). */
  async refresh(): Promise<void> {
    // A few at a time, like provisioning; a dead enclave ends it (the health check provisions every token anew).
    await eachLimited([...this.tokens.values()].filter((t) => t.bundle || t.fileDb), this.o.config.options.provision_concurrency, async (t) => { if (!this.lost) await this.provisionToken(t, 'refresh', false); });
  }

  /** If the enclave is gone, starts a new one and provisions every token again with the same PINs. */
  async healthCheck(): Promise<'ok' | 'restarted'> {
    // An enclave given up by a failed probe just now is not probed again (a hung
    // one would cost another 5 s timeout).
    if (this.lost !== 'given up' && await this.probe()) return 'ok';
    log.warn(`restarting the enclave: ${this.lostBecause}; starting a new one and provisioning every token again (the web server keeps running)`);
    await this.o.enclave.stop({ force: true }).catch(() => {});
    this.counters.enclaveRestarts++;
    await this.startEnclave();
    await this.provisionAll('add');
    return 'restarted';
  }

  /** Whether the enclave is there and answers within 5 s. Safe to call while other work runs. */
  async probe(): Promise<boolean> {
    if (!await this.o.enclave.running()) { this.lostBecause = 'it is not running'; return false; }
    const answers = () => this.call('health', {}, 5000, true).then(() => { this.lost = undefined; return true; });
    const failed = (e: unknown) => { this.lostBecause = `it runs but its health request failed: ${(e as Error).message}`; return false; };
    try { return await answers(); } catch (e) {
      // A connection that ended is tried once more, anew (the enclave may have
      // closed it); one that did not answer in time means a hung enclave.
      if (!this.provision?.closed) return failed(e);
      try { return await answers(); } catch (e2) { return failed(e2); }
    }
  }
  /** Why the last probe failed, for the restart's log line. */
  private lostBecause = 'it failed its health check';

  /**
   * The enclave failed a probe: work under way stops (calls in flight fail at
   * once, token-by-token loops end) so that the health check can replace it
   * without waiting for every remaining token to time out.
   */
  abandonEnclave(): void {
    this.lost = 'given up';
    this.provision?.close();
  }

  /**
   * Applies an edited acm.yaml as a diff: new tokens are provisioned, removed ones
   * leave the enclave (their files stay on disk), changed ones are provisioned again;
   * tokens that did not change are not touched. Reloads the web server if anything
   * it serves changed.
   */
  async applyConfig(next: AcmConfig): Promise<{ added: string[]; removed: string[]; changed: string[] }> {
    const before = new Map([...this.tokens].map(([l, t]) => [l, JSON.stringify({ ...t.config, line: 0 })]));
    const after = new Map(next.tokens.map((t) => [t.label, JSON.stringify({ ...t, line: 0 })]));
    const added = [...after.keys()].filter((l) => !before.has(l));
    const removed = [...before.keys()].filter((l) => !after.has(l));
    const changed = [...after.keys()].filter((l) => before.has(l) && before.get(l) !== after.get(l));
    this.o.config = next;
    const work: { t: TokenState; op: 'add' | 'update' }[] = [];
    for (const tc of next.tokens) {
      if (!added.includes(tc.label) && !changed.includes(tc.label)) { this.tokens.get(tc.label)!.config = tc; continue; }
      // A changed token's source is read again (a FileDb too: acm.yaml may name another file).
      const t: TokenState = changed.includes(tc.label) ? { ...this.tokens.get(tc.label)!, config: tc, pin: tc.pin ?? this.tokens.get(tc.label)!.pin, fileDb: undefined } : { config: tc, pin: pinFor(tc, this.o.pinDir), state: 'pending', addedAt: Date.now() };
      this.tokens.set(tc.label, t);
      work.push({ t, op: added.includes(tc.label) ? 'add' : 'update' });
    }
    await this.provisionMany(work);
    if (added.length || changed.length) await this.o.reload(`acm.yaml changed: ${[added.length ? `${labels(added)} added` : '', changed.length ? `${labels(changed)} changed` : ''].filter(Boolean).join(', ')}`);
    // Removed tokens leave the enclave only after the reload had time to retire the
    // workers that still use them (a new token may have taken over their stanza).
    if (removed.length) await new Promise((r) => setTimeout(r, this.o.config.options.reload_wait_ms));
    for (const l of removed) {
      try { await this.call('remove', { label: l }); } catch (e) { log.token(l).warn(`remove: ${(e as Error).message}`); }
      this.tokens.delete(l);
      log.token(l).info('removed from acm.yaml: dropped from the enclave (its files are left in place)');
    }
    return { added, removed, changed };
  }

  /**
   * Serving tokens this agent added to the enclave, and when: a web server whose
   * main process started before then cannot load them by a reload (libp11, the
   * OpenSSL pkcs11 engine, reads the token list once, when that process starts).
   */
  addedTokens(): AddedToken[] {
    return [...this.tokens.values()].filter((t) => t.state === 'serving' && t.addedAt !== undefined).map((t) => ({ label: t.config.label, addedAt: t.addedAt! }));
  }

  /** Every token as the agent and the enclave see it; never a PIN or a key. */
  async status(): Promise<AgentStatus> {
    const enclave: AgentStatus['enclave'] = { reachable: false, keyAddress: this.endpoints?.keyAddress, provisionAddress: this.endpoints?.provisionAddress };
    let held = new Map<string, TokenDescription>();
    try {
      const h = await this.call('health', {}, 5000);
      enclave.health = { ok: true, version: h.version, nsm: h.nsm, localMode: h.localMode, tokens: h.tokens, generation: h.generation, memory: h.memory };
      held = new Map((await this.call('describe', {}, 5000)).tokens.map((d) => [d.label, d]));
      enclave.reachable = true;
    } catch (e) { enclave.error = (e as Error).message; }
    const tokens = [...this.tokens.values()].map((t): TokenStatus => {
      const d = held.get(t.config.label);
      const keys = servedKeys(t);
      const leaf = keys.find((k) => k.certificatePem)?.certificatePem;
      const pinFile = this.o.config.options.pin_in_config && targetSpec(t.config) ? undefined : pinFileOf(t.config, this.o.pinDir);
      return {
        label: t.config.label,
        source: describeSource(t.config),
        target: describeTarget(t.config),
        state: t.state,
        error: t.error,
        ...(leaf ? certificateFacts(leaf) : {}),
        uris: keys.map((k) => keyUri(t.config.label, k.ckaId, pinFile && fs.existsSync(pinFile) ? { file: pinFile } : undefined)),
        lastSync: iso(t.lastSync),
        lastRefresh: iso(t.lastRefresh),
        addedAt: iso(t.addedAt),
        inEnclave: d !== undefined,
        enclaveRefreshedAt: d?.refreshedAt,
        retiredKeys: d?.retiredKeys,
        operations: d?.operations,
      };
    });
    return { enclave: { ...enclave, attestation: { ...this.attestation } }, tokens, counters: { ...this.counters } };
  }

  async stop(): Promise<void> {
    this.provision?.close();
    await this.o.enclave.stop();
  }
}
