// Processes from /proc: when one started (nitro-acm doctor and the agent compare
// it with when a token was added: a web server's main process started before a
// token existed cannot load that token's key by a reload), and the running ones
// with their parent, name and command line (doctor, nginx's in-place upgrade).
import fs from 'node:fs';
import path from 'node:path';

/**
 * When a process started (ms since the epoch), from /proc; undefined if it is not
 * running. Counted back from /proc/uptime (10 ms steps) rather than from the boot
 * time in /proc/stat (whole seconds): the agent compares it with a token added a
 * moment before a restart.
 */
export function processStartedAt(pid: number, proc = '/proc'): number | undefined {
  try {
    const stat = fs.readFileSync(path.join(proc, String(pid), 'stat'), 'utf8');
    const ticks = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]); // field 22, starttime
    const uptime = Number(fs.readFileSync(path.join(proc, 'uptime'), 'utf8').split(' ')[0]);
    const startedAt = Date.now() - (uptime - ticks / 100) * 1000; // USER_HZ is 100 for /proc on Linux
    return Number.isFinite(startedAt) ? Math.round(startedAt) : undefined;
  } catch { return undefined; }
}

export interface ProcessEntry { pid: number; ppid: number; comm: string; cmdline: string }

/** Every running process (those that end while being read are left out). */
export function listProcesses(proc = '/proc'): ProcessEntry[] {
  const out: ProcessEntry[] = [];
  for (const d of fs.readdirSync(proc)) {
    if (!/^\d+$/.test(d)) continue;
    try {
      let ppid = 0;
      try { const stat = fs.readFileSync(path.join(proc, d, 'stat'), 'utf8'); ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]); } catch { /* no stat: its parent is unknown */ }
      out.push({
        pid: Number(d),
        ppid,
        comm: fs.readFileSync(path.join(proc, d, 'comm'), 'utf8').trim(),
        cmdline: fs.readFileSync(path.join(proc, d, 'cmdline'), 'utf8').split('\0').filter(Boolean).join(' '),
      });
    } catch { /* gone meanwhile */ }
  }
  return out;
}
