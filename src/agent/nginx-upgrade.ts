// nginx's binary upgrade as a restart that drops no connection: a token added to
// acm.yaml after nginx's master process started cannot be loaded by a reload
// (the pkcs11 engine and pkcs11-provider both read the token list once, when
// the process's OpenSSL first uses them), so a new master must load it. SIGUSR2
// makes nginx start a new master from its own binary with the listening sockets
// it already holds; once that master runs its workers, SIGQUIT makes the old
// master stop accepting and finish what its workers serve. No moment is without
// a process accepting on the port, unlike `systemctl restart`. Under systemd this
// needs nginx.service's Type=forking with PIDFile= (Debian's and Amazon Linux's
// are): systemd follows the new master through the PID file. The new master
// keeps only the environment nginx.conf names with `env` (OPENSSL_CONF on the
// provider path).
import { listProcesses } from './process-start.ts';

const alive = (pid: number) => { try { process.kill(pid, 0); return true; } catch { return false; } };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface UpgradeResult { oldMaster: number; newMaster: number; seconds: number }

/**
 * Replaces the nginx master `oldMaster` by a new one without closing its
 * listening sockets; resolves once the new master's workers run and the old
 * master was told to finish. If no new master with workers appears within
 * `timeoutMs` (its configuration fails, say; nginx says why in its error log),
 * the old one is left serving and the promise rejects.
 */
export async function nginxBinaryUpgrade(oldMaster: number, { timeoutMs = 10_000, proc = '/proc' } = {}): Promise<UpgradeResult> {
  const t0 = performance.now();
  if (!alive(oldMaster)) throw new Error(`nginx master ${oldMaster} is not running`);
  // nginx ignores SIGUSR2 in a master whose own previous master still finishes its connections (an upgrade just before).
  const parentOf = (pid: number) => listProcesses(proc).find((p) => p.pid === pid)?.ppid ?? 0;
  for (const end = Date.now() + timeoutMs; ; await sleep(50)) {
    const parent = listProcesses(proc).find((p) => p.pid === parentOf(oldMaster));
    if (!parent || !/^nginx: master process/.test(parent.cmdline)) break;
    if (Date.now() > end) throw new Error(`nginx master ${oldMaster} cannot be upgraded yet: the master before it (pid ${parent.pid}) still finishes its connections`);
  }
  process.kill(oldMaster, 'SIGUSR2');
  let newMaster: number | undefined;
  for (const end = Date.now() + timeoutMs; Date.now() < end; await sleep(25)) {
    const ps = listProcesses(proc);
    const master = ps.find((p) => p.ppid === oldMaster && /^nginx: master process/.test(p.cmdline));
    if (master && ps.some((p) => p.ppid === master.pid && /^nginx: worker process/.test(p.cmdline))) { newMaster = master.pid; break; }
  }
  if (!newMaster) {
    throw new Error(`nginx did not start a new master with workers within ${timeoutMs / 1000} s of SIGUSR2 (its error log says why); the previous master (pid ${oldMaster}) keeps serving`);
  }
  process.kill(oldMaster, 'SIGQUIT');
  return { oldMaster, newMaster, seconds: (performance.now() - t0) / 1000 };
}
