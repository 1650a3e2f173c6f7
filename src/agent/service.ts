// The long-running agent: starts the enclave and every token, then keeps them
// serving: polls for renewals every sync_interval_secs, re-attests on each token's
// refresh interval, checks the enclave every few seconds, and applies edits of
// acm.yaml as they are saved (an invalid edit is reported and ignored; everything
// keeps serving). Every operation runs one at a time, in order.
import { execFile } from 'node:child_process';
import path from 'node:path';
import chokidar from 'chokidar';
import { log, configureLog } from '../shared/log.ts';
import { loadConfig, ConfigError, type AcmConfig } from './config.ts';

/** What acm.yaml says that nitro-acm reads otherwise than AWS's agent (an unknown key, a number brought into range), each once in the log. */
const logNotes = (c: AcmConfig) => { for (const n of c.notes) log.warn(n); };
import { Agent, type AddedToken, type EnclaveController, type EnclaveEndpoints } from './agent.ts';
import type { Endpoints } from './aws.ts';
import { runEnclave, describeEnclaves, terminateEnclave } from './nitro-cli.ts';
import { ProvisionClient } from '../shared/provision-wire.ts';
import { parseAddress, ENCLAVE_CID } from '../shared/address.ts';
import { processStartedAt } from './process-start.ts';
import { startControlServer, DEFAULT_CONTROL_SOCKET, type ControlHandler, type ControlServer } from './control.ts';

export interface ServiceOptions {
  configFile: string;
  controller: (config: AcmConfig) => EnclaveController;
  endpoints?: Endpoints;
  /** Reloads (or starts, or restarts) the web server; default systemReload. */
  reload?: (config: AcmConfig, added: AddedToken[]) => Promise<void>;
  healthIntervalMs?: number;
  /** The control socket for `nitro-acm status` (default /run/nitro-acm/agent.sock); false for none. */
  controlSocket?: string | false;
  /** The web server's main configuration file, when the agent knows it (local mode): nitro-acm doctor checks it. */
  webServerConfig?: string;
  /** More control operations (local mode adds "renew"). */
  controlHandlers?: (service: RunningService) => Record<string, ControlHandler>;
}

/** The last reload of the web server, as nitro-acm status shows it. */
export interface WebServerState { reloadPending: boolean; lastReload?: string; error?: string; configFile?: string }

export interface RunningService {
  agent: Agent;
  /** Runs fn after every operation queued before it (syncs, refreshes, edits, health checks never interleave). */
  queue<T>(what: string, fn: () => Promise<T>): Promise<T>;
  stop(): Promise<void>;
  idle(): Promise<void>;
}

function sh(cmd: string): Promise<{ ok: boolean; code?: number | string | null; stdout: string; stderr: string; message: string }> {
  return new Promise((resolve) => execFile('/bin/sh', ['-c', cmd], { timeout: 60_000 }, (err, stdout, stderr) => resolve({ ok: !err, code: err?.code, stdout: stdout.trim(), stderr: stderr.trim(), message: err?.message ?? '' })));
}

/**
 * The web server's own configuration test. A reload by signal cannot fail: a
 * configuration the server rejects (a typo in another file, a key it cannot load)
 * leaves it on the previous one and says so only in its error log. Tested first,
 * the reason reaches the agent's log and nitro-acm status.
 */
const CONFIG_TEST = { nginx: 'nginx -t -q', httpd: 'apachectl -t' } as const;

/**
 * What a failed configuration test or reload printed, on one line,
 * without nginx's timestamp and pid, and without a PIN: the engine repeats a key
 * URI it cannot load, pin-value= included (options.pin_in_config).
 */
export function webServerErrors(stderr: string): string {
  return [...new Set(stderr.split('\n'))]
    .filter((l) => l.trim() && !/test failed$/.test(l))
    .map((l) => l.replace(/^\d{4}\/\d\d\/\d\d [\d:]+ (\[\w+\]) \d+#\d+: /, '$1 ').replace(/pin-value=[^;&"'\s]*/g, 'pin-value=(hidden)'))
    .join('; ');
}

/**
 * `options.reload_command`, else `systemctl reload <service>`: a graceful reload.
 * With `force_start` (AWS's `nginx_force_start`), a web server that is not running
 * is started instead, as AWS's agent does. A web server whose main process started
 * before a token was added is restarted instead, once, as AWS's agent does when it
 * provisions a token (`restart_for_new_tokens`, default on): the OpenSSL pkcs11
 * engine reads the token list when that process starts, and a reload cannot load
 * a token it did not see. Renewals only ever reload.
 */
export async function systemReload(config: AcmConfig, added: AddedToken[] = []): Promise<void> {
  const svc = config.options.service;
  const done = { reload: 'reloaded', start: 'started', restart: 'restarted' } as const;
  let action: keyof typeof done = 'reload';
  if (!config.options.reload_command) {
    const pid = Number((await sh(`systemctl show --property=MainPID --value ${svc}`)).stdout) || 0;
    const startedAt = pid ? processStartedAt(pid) : undefined;
    const unseen = startedAt === undefined ? [] : added.filter((t) => t.addedAt > startedAt).map((t) => t.label);
    if (!pid && config.options.force_start) {
      action = 'start';
      log.warn(`${svc} is not running: starting it (options.force_start)`);
    } else if (unseen.length && config.options.restart_for_new_tokens) {
      action = 'restart';
      log.warn(`restarting ${svc} once (options.restart_for_new_tokens): ${unseen.join(', ')} added after its main process (pid ${pid}) started, and a reload cannot load a token that process did not see`);
    } else if (unseen.length) {
      log.warn(`${unseen.join(', ')} added after ${svc}'s main process (pid ${pid}) started: a reload cannot load ${unseen.length > 1 ? 'them' : 'it'}; systemctl restart ${svc} once (options.restart_for_new_tokens is off)`);
    }
    const test = CONFIG_TEST[svc];
    const t = await sh(test);
    // 127: not installed under that name (a web server built elsewhere); the reload still goes.
    if (!t.ok && t.code !== 127) throw new Error(`"${test}" failed, so ${svc} was not ${done[action]}: ${webServerErrors(t.stderr) || t.message}`);
  }
  const cmd = config.options.reload_command ?? `systemctl ${action} ${svc}`;
  const r = await sh(cmd);
  if (!r.ok) throw new Error(`"${cmd}" failed: ${webServerErrors(r.stderr) || r.message}`);
  log.info(`${done[action]} the web server (${cmd})`);
}

export async function startService(o: ServiceOptions): Promise<RunningService> {
  let config = loadConfig(o.configFile);
  configureLog({ level: config.log.level, timestamps: config.log.enable_timestamp });
  logNotes(config);
  const reload = o.reload ?? systemReload;
  const healthMs = o.healthIntervalMs ?? 5000;
  // A failed reload leaves the web server on its previous files and keys (the
  // enclave keeps a renewed token's old key for a grace period): retried with
  // every health check until it works, and shown by nitro-acm status.
  const webServer: WebServerState = { reloadPending: false, configFile: o.webServerConfig };
  const doReload = async () => {
    try {
      await reload(config, agent.addedTokens());
      Object.assign(webServer, { reloadPending: false, lastReload: new Date().toISOString(), error: undefined });
    } catch (e) {
      Object.assign(webServer, { reloadPending: true, error: (e as Error).message });
      log.error(`${(e as Error).message}; the web server keeps its previous configuration; retrying every ${healthMs / 1000} s`);
    }
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
      if (webServer.reloadPending) await doReload();
      await agent.healthCheck();
    });
  };
  // The enclave is probed outside the queue, so a long refresh or sync cannot
  // hold up noticing it is dead or hung; a failed probe stops that work and
  // queues the replacement next.
  let probing = false;
  const probe = async () => {
    if (probing || healthQueued || !started) return;
    probing = true;
    try {
      if (await agent.probe()) { if (webServer.reloadPending) checkHealth(); return; }
      agent.abandonEnclave();
      checkHealth();
    } finally { probing = false; }
  };
  // The provisioning connection ending is the first sign of a dead enclave: check
  // at once instead of at the next health check (every handshake fails meanwhile).
  const socket = o.controlSocket ?? DEFAULT_CONTROL_SOCKET;
  // Beside the control socket (root only): the PIN files of tokens without a target.
  const pinDir = socket === false ? undefined : path.join(path.dirname(socket), 'pins');
  const agent = new Agent({ config, enclave: o.controller(config), endpoints: o.endpoints, reload: doReload, pinDir, onEnclaveLost: () => { if (started) void probe(); } });
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
  const service: RunningService = {
    agent,
    queue,
    idle: () => chain.then(() => undefined),
    async stop() {
      started = false; // a lost provisioning connection from here on is the stop's doing
      for (const t of timers) clearInterval(t);
      await watcher.close();
      await control?.close();
      await chain;
      // The enclave keeps serving: a restarted agent finds it and provisions it again.
      log.info('agent stopped; the enclave and every written file stay in place');
    },
  };
  control = socket === false ? undefined : await startControlServer(socket, {
    status: async () => ({ ...(await agent.status()), configFile: o.configFile, webServer: { ...webServer } }),
    sync: async () => ({ renewed: await queue('sync', () => agent.sync()) }),
    ...o.controlHandlers?.(service),
  }).catch(async (e) => { await service.stop(); throw e; });
  log.info(`agent running: ${agent.tokens.size} tokens; watching ${o.configFile}${control ? `; status on ${control.path}` : ''}`);
  return service;
}


/** Production: the enclave image under nitro-cli, reused if it is already running. */
export class NitroCliEnclaveController implements EnclaveController {
  private id?: string;
  constructor(private readonly c: AcmConfig['enclave'], private readonly name = 'nitro-acm') {}

  async start(): Promise<EnclaveEndpoints> {
    const running = (await describeEnclaves().catch(() => [])).find((e) => e.EnclaveName === this.name && e.State === 'RUNNING');
    const info = running ?? await runEnclave({ eifPath: this.c.image_path, cpuCount: this.c.cpu_count, memoryMib: this.c.memory_mib, name: this.name, cid: ENCLAVE_CID });
    this.id = info.EnclaveID;
    log.info(`${running ? 'found' : 'started'} enclave ${info.EnclaveID} (CID ${info.EnclaveCID})`);
    const ep = { keyAddress: `vsock:cid=${info.EnclaveCID};port=${this.c.p11kit_port}`, provisionAddress: `vsock:cid=${info.EnclaveCID};port=${this.c.rpc_port}` };
    // Booting takes a moment: wait for the provisioning channel, up to boot_timeout_ms.
    const deadline = Date.now() + this.c.boot_timeout_ms;
    for (;;) {
      try { (await ProvisionClient.connect(parseAddress(ep.provisionAddress), 1000)).close(); return ep; } catch (e) {
        if (Date.now() > deadline) throw new Error(`enclave ${info.EnclaveID} did not answer on ${ep.provisionAddress} within ${this.c.boot_timeout_ms} ms: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  async running(): Promise<boolean> {
    const all = await describeEnclaves().catch(() => []);
    return all.some((e) => e.EnclaveID === this.id && e.State === 'RUNNING');
  }

  async stop(): Promise<void> {
    if (this.id) await terminateEnclave(this.id).catch((e) => log.warn(`terminate-enclave: ${(e as Error).message}`));
  }
}
