// The long-running agent: starts the enclave and every token, then keeps them
// serving: polls for renewals every sync_interval_secs, re-attests on each token's
// refresh interval, checks the enclave every few seconds (that it answers, and
// with a fresh attestation that it is the image it should be), and applies edits of
// acm.yaml as they are saved (an invalid edit is reported and ignored; everything
// keeps serving). Every operation runs one at a time, in order.
import path from 'node:path';
import chokidar from 'chokidar';
import { log, configureLog } from '../../shared/log.ts';
import { loadConfig, ConfigError, type AcmConfig } from './config.ts';

/** What acm.yaml says that nitro-acm reads otherwise than AWS's agent (an unknown key, a number brought into range), each once in the log. */
const logNotes = (c: AcmConfig) => { for (const n of c.notes) log.warn(n); };
import { Agent, type AddedToken } from './agent.ts';
import type { EnclaveController } from './enclave-controller.ts';
import { systemReload, systemWebServerRunning, type WebServerState } from './web-server.ts';
import type { Endpoints } from './aws.ts';
import { startControlServer, DEFAULT_CONTROL_SOCKET, type ControlHandlers, type ControlServer } from './control.ts';
import { AgentMetrics } from './metrics.ts';
import { parseMetricsAddress } from './config.ts';

export interface ServiceOptions {
  configFile: string;
  controller: (config: AcmConfig) => EnclaveController;
  endpoints?: Endpoints;
  /** Reloads (or starts, or restarts) the web server; default systemReload. */
  reload?: (config: AcmConfig, added: AddedToken[]) => Promise<void>;
  /** Whether the web server still runs (undefined: cannot tell); default systemWebServerRunning, none with a `reload` of the caller's own. */
  webServerRunning?: (config: AcmConfig) => Promise<boolean | undefined>;
  healthIntervalMs?: number;
  /** The control socket for `nitro-acm status` (default /run/nitro-acm/agent.sock); false for none. */
  controlSocket?: string | false;
  /** The web server's main configuration file, when the agent knows it (local mode): nitro-acm doctor checks it. */
  webServerConfig?: string;
  /** More control operations (local mode adds "renew"). */
  controlHandlers?: (service: RunningService) => ControlHandlers;
}

export interface RunningService {
  agent: Agent;
  /** Runs fn after every operation queued before it (syncs, refreshes, edits, health checks never interleave). */
  queue<T>(what: string, fn: () => Promise<T>): Promise<T>;
  /** Where the Prometheus metrics are served (options.metrics_address), if they are. */
  metricsUrl?: string;
  stop(): Promise<void>;
  idle(): Promise<void>;
}

export async function startService(o: ServiceOptions): Promise<RunningService> {
  let config = loadConfig(o.configFile);
  configureLog({ level: config.log.level, timestamps: config.log.enable_timestamp });
  logNotes(config);
  const reload = o.reload ?? systemReload;
  const webServerRunning = o.webServerRunning ?? (o.reload ? undefined : systemWebServerRunning);
  const healthMs = o.healthIntervalMs ?? 5000;
  // A failed reload leaves the web server on its previous files and keys (the
  // enclave keeps a renewed token's old key for a grace period): retried with
  // every health check until it works, and shown by nitro-acm status.
  const webServer: WebServerState = { reloadPending: false, configFile: o.webServerConfig };
  let failedCause = '';
  // A reload that worked is followed for a while: httpd's graceful restart goes on
  // after systemctl returns, and if its parent then cannot load a key, httpd exits.
  const WATCH_AFTER_RELOAD_MS = 60_000;
  let watchUntil = 0;
  // Each reload is logged with why it happens (AWS's users could not tell why their web servers restarted: aws-nitro-enclaves-acm PR #146).
  const doReload = async (cause: string) => {
    log.info(`reloading the web server: ${cause}`);
    agent.counters.reloads++;
    try {
      await reload(config, agent.addedTokens());
      Object.assign(webServer, { reloadPending: false, lastReload: new Date().toISOString(), error: undefined });
      watchUntil = Date.now() + WATCH_AFTER_RELOAD_MS;
    } catch (e) {
      agent.counters.reloadFailures++;
      failedCause = cause;
      Object.assign(webServer, { reloadPending: true, error: (e as Error).message });
      log.error(`${(e as Error).message}; the web server keeps its previous configuration; retrying every ${healthMs / 1000} s`);
    }
  };
  // A web server gone since the reload counts as a failed reload: retried with the
  // health checks, which start it again (options.force_start, on by default) or
  // keep reporting it in nitro-acm status.
  const checkStillRunning = async () => {
    if (!webServerRunning || Date.now() > watchUntil || webServer.reloadPending) return;
    const reloadAt = webServer.lastReload;
    // (A reload that ended meanwhile makes the answer stale.)
    if (await webServerRunning(config) !== false || webServer.lastReload !== reloadAt) return;
    const svc = config.options.service;
    agent.counters.reloadFailures++;
    failedCause = `${svc} stopped after the reload`;
    Object.assign(webServer, { reloadPending: true, error: `${svc} is not running since the reload at ${webServer.lastReload}: its main process exited (journalctl -u ${svc} says why)` });
    log.error(`${webServer.error}; ${config.options.force_start ? 'starting it again' : 'not starting it: options.force_start is off'}`);
    checkHealth();
  };
  // One operation at a time: a sync, a refresh, an edit and a health check never interleave.
  let chain: Promise<unknown> = Promise.resolve();
  const queue = <T>(what: string, fn: () => Promise<T>): Promise<T> => {
    const result = chain.then(fn);
    chain = result.catch((e) => log.error(`${what}: ${(e as Error).message}`));
    return result;
  };
  let started = false;
  let healthQueued = false;
  const checkHealth = () => {
    if (healthQueued) return;
    healthQueued = true;
    void queue('health', async () => {
      healthQueued = false;
      // A probe that was under way when the service stopped must not start a new enclave after it.
      if (!started) return;
      if (webServer.reloadPending) await doReload(`retrying the reload that failed (${failedCause})`);
      await agent.healthCheck();
    });
  };
  // The enclave is probed outside the queue, so a long refresh or sync cannot
  // hold up noticing it is dead or hung; a failed probe stops that work and
  // queues the replacement next.
  let probing = false;
  let probes = 0;
  const probe = async () => {
    if (probing || healthQueued || !started) return;
    probing = true;
    try {
      await checkStillRunning();
      const answers = await agent.probe();
      if (!started) return; // stopped meanwhile: the enclave was stopped on purpose
      if (answers) {
        if (webServer.reloadPending) checkHealth();
        // Every attestation_check_every probes the enclave also proves what it is (a fresh attestation document).
        if (++probes % config.enclave.attestation_check_every === 0 && await agent.checkAttestation()) {
          void queue('attestation', () => agent.retryWaiting('the enclave passes its attestation check again'));
        }
        return;
      }
      agent.abandonEnclave();
      checkHealth();
    } finally { probing = false; }
  };
  // The provisioning connection ending is the first sign of a dead enclave: check
  // at once instead of at the next health check (every handshake fails meanwhile).
  const socket = o.controlSocket ?? DEFAULT_CONTROL_SOCKET;
  // Beside the control socket (root only): the PIN files of tokens without a target.
  const pinDir = socket === false ? undefined : path.join(path.dirname(socket), 'pins');
  const metrics = new AgentMetrics(() => agent.status());
  const agent = new Agent({ config, enclave: o.controller(config), endpoints: o.endpoints, reload: doReload, pinDir, onEnclaveLost: () => { if (started) void probe(); }, onProvisioned: (op, s) => metrics.provisioning.observe({ operation: op }, s) });
  await agent.start();
  started = true;
  const timers = [
    setInterval(() => void queue('sync', () => agent.sync()), config.options.sync_interval_secs * 1000),
    setInterval(() => void queue('refresh', () => agent.refresh()), Math.min(...config.tokens.map((t) => t.refresh_interval_secs), 43_200) * 1000),
    setInterval(() => void probe(), healthMs),
  ];
  const watcher = chokidar.watch(o.configFile, { ignoreInitial: true, awaitWriteFinish: { stabilityThreshold: 200, pollInterval: 50 } });
  watcher.on('all', (event) => {
    if (event !== 'change' && event !== 'add') return;
    void queue('configuration', async () => {
      let next: AcmConfig;
      try { next = loadConfig(o.configFile); } catch (e) {
        if (e instanceof ConfigError) { log.error(`${e.message}; the edit is ignored and everything keeps serving`); return; }
        throw e;
      }
      logNotes(next);
      // Before the diff is applied: the reload it ends with follows the edited options.
      config = next;
      const d = await agent.applyConfig(next);
      log.info(`${o.configFile} applied: ${d.added.length} added, ${d.removed.length} removed, ${d.changed.length} changed`);
    });
  });
  await new Promise<void>((r) => watcher.once('ready', () => r()));
  let control: ControlServer | undefined;
  // Metrics are for watching, not serving: an address that cannot be had is an error in the log, and everything else runs on.
  const metricsAddress = config.options.metrics_address ? parseMetricsAddress(config.options.metrics_address) : undefined;
  const metricsServer = metricsAddress ? await metrics.serve(metricsAddress).catch((e: Error) => { log.error(`metrics: cannot listen on ${config.options.metrics_address}: ${e.message}; the agent runs without them`); return undefined; }) : undefined;
  if (metricsServer) log.info(`metrics: ${metricsServer.url}`);
  const service: RunningService = {
    metricsUrl: metricsServer?.url,
    agent,
    queue,
    idle: () => chain.then(() => undefined),
    async stop() {
      started = false; // a lost provisioning connection from here on is the stop's doing
      for (const t of timers) clearInterval(t);
      await watcher.close();
      await control?.close();
      await metricsServer?.close();
      await chain;
      // The enclave keeps serving: a restarted agent finds it and provisions it again.
      log.info('agent stopped; the enclave and every written file stay in place');
    },
  };
  control = socket === false ? undefined : await startControlServer(socket, {
    status: async () => ({ ...(await agent.status()), configFile: o.configFile, webServer: { ...webServer } }),
    sync: async () => ({ renewed: await queue('sync', () => agent.sync()) }),
    // Loaded when asked: its KMS client is ~2 MiB an idle agent need not hold.
    assess: async () => (await import('./assess.ts')).assess(agent, config),
    ...o.controlHandlers?.(service),
  }).catch(async (e) => { await service.stop(); throw e; });
  log.info(`agent running: ${agent.tokens.size} tokens; watching ${o.configFile}${control ? `; status on ${control.path}` : ''}`);
  return service;
}


