// The web server the agent serves tokens to: its configuration test, and the
// reload (or start, or restart) policy after the agent wrote its files
// (src/agent/targets.ts writes them).
import { execFile } from 'node:child_process';
import { log } from '../../shared/log.ts';
import type { AcmConfig } from './config.ts';
import type { AddedToken } from './agent.ts';
import { processStartedAt } from './process-start.ts';
import { resolveOpenSsl } from './openssl-path.ts';
import { nginxBinaryUpgrade } from './nginx-upgrade.ts';
import { writeAtomic } from './targets.ts';

const shellQuote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** The last reload of the web server, as nitro-acm status shows it. */
export interface WebServerState { reloadPending: boolean; lastReload?: string; error?: string; configFile?: string }

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

/** The web server's main process as systemd knows it: 0 when it is not running, undefined when systemctl cannot tell. */
async function mainPid(svc: string): Promise<number | undefined> {
  const r = await sh(`systemctl show --property=MainPID --value ${svc}`);
  return r.ok && /^\d+$/.test(r.stdout) ? Number(r.stdout) : undefined;
}

/**
 * Whether httpd still runs, after a reload that reported success: its graceful
 * restart goes on after systemctl returns, and if its parent then cannot load a
 * key, httpd exits and nothing else would say so. Undefined where there is
 * nothing to know: nginx (a reload nginx cannot apply leaves it running on the
 * previous configuration; and during its in-place upgrade systemd's main PID
 * moves from one master to the other), an operator's reload_command, or no
 * systemd.
 */
export async function systemWebServerRunning(config: AcmConfig): Promise<boolean | undefined> {
  if (config.options.service !== 'httpd' || config.options.reload_command) return undefined;
  const pid = await mainPid(config.options.service);
  return pid === undefined ? undefined : pid !== 0;
}

/**
 * `options.reload_command`, else `systemctl reload <service>`: a graceful reload.
 * With `force_start` (AWS's `nginx_force_start`), a web server that is not running
 * is started instead, as AWS's agent does. A web server whose main process started
 * before a token was added is restarted instead, once, as AWS's agent does when it
 * provisions a token (`restart_for_new_tokens`, default on): the OpenSSL pkcs11
 * engine and pkcs11-provider read the token list when that process first uses
 * them, and a reload cannot load a token they did not see. nginx is not
 * restarted but upgraded in place (nginx-upgrade.ts: a new master on the same
 * listening sockets, so no connection is refused); httpd has no such way and is
 * restarted. Renewals only ever reload.
 */
export async function systemReload(config: AcmConfig, added: AddedToken[] = [], upgrade: typeof nginxBinaryUpgrade = nginxBinaryUpgrade): Promise<void> {
  const svc = config.options.service;
  const done = { reload: 'reloaded', start: 'started', restart: 'restarted', upgrade: 'upgraded in place' } as const;
  let action: keyof typeof done = 'reload';
  let pid = 0;
  if (!config.options.reload_command) {
    pid = (await mainPid(svc)) ?? 0;
    const startedAt = pid ? processStartedAt(pid) : undefined;
    const unseen = startedAt === undefined ? [] : added.filter((t) => t.addedAt > startedAt).map((t) => t.label);
    if (!pid && config.options.force_start) {
      action = 'start';
      log.warn(`${svc} is not running: starting it (options.force_start)`);
    } else if (unseen.length && config.options.restart_for_new_tokens) {
      action = svc === 'nginx' ? 'upgrade' : 'restart';
      log.warn(`${action === 'upgrade' ? 'starting a new nginx master in place of' : 'restarting'} ${svc}'s main process (pid ${pid}) once (options.restart_for_new_tokens): ${unseen.join(', ')} added after it started, and a reload cannot load a token that process did not see`);
    } else if (unseen.length) {
      log.warn(`${unseen.join(', ')} added after ${svc}'s main process (pid ${pid}) started: a reload cannot load ${unseen.length > 1 ? 'them' : 'it'}; systemctl restart ${svc} once (options.restart_for_new_tokens is off)`);
    }
    // On the provider path the web server loads keys only with the OpenSSL configuration that loads pkcs11-provider.
    const openssl = resolveOpenSsl(config.options, writeAtomic, (l) => log.info(l));
    const test = openssl.conf ? `OPENSSL_CONF=${shellQuote(openssl.conf)} ${CONFIG_TEST[svc]}` : CONFIG_TEST[svc];
    const t = await sh(test);
    // 127: not installed under that name (a web server built elsewhere); the reload still goes.
    if (!t.ok && t.code !== 127) throw new Error(`"${test}" failed, so ${svc} was not ${done[action]}: ${webServerErrors(t.stderr) || t.message}`);
  }
  if (action === 'upgrade') {
    const u = await upgrade(pid);
    log.info(`${done.upgrade}: nginx master ${u.newMaster} serves, the previous one (${u.oldMaster}) finishes its connections (${u.seconds.toFixed(2)} s)`);
    return;
  }
  const cmd = config.options.reload_command ?? `systemctl ${action} ${svc}`;
  const r = await sh(cmd);
  if (!r.ok) throw new Error(`"${cmd}" failed: ${webServerErrors(r.stderr) || r.message}`);
  log.info(`${done[action]} the web server (${cmd})`);
}
