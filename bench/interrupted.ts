// A benchmark stopped by Ctrl-C or kill must not leave its servers running or its
// files behind. nginx and httpd run in process groups of their own (so Ctrl-C does
// not reach them), and node runs no 'exit' handler when a signal ends it: here a
// signal ends the run through process.exit, so the 'exit' handlers run (local
// mode's own included), and so do the tasks given to atExit.
import os from 'node:os';

const tasks: (() => void)[] = [];

/**
 * Runs `task` (synchronous: nothing waits in an 'exit' handler) when the benchmark
 * ends, however it ends; the last given runs first. Returns what drops the task,
 * for one whose process was stopped already (its pid could be another's by then).
 */
export function atExit(task: () => void): () => void {
  tasks.push(task);
  return () => { const i = tasks.indexOf(task); if (i >= 0) tasks.splice(i, 1); };
}

process.once('exit', () => {
  for (const task of tasks.splice(0).reverse()) { try { task(); } catch { /* already gone */ } }
});
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(signal, () => {
    process.stderr.write(`bench: stopped by ${signal}; stopping what it started\n`);
    process.exit(128 + os.constants.signals[signal]);
  });
}

/** Kills a process group (a server started detached) or a process, if it is still there. */
export function killGroup(pid: number | undefined): void {
  if (!pid) return;
  try { process.kill(-pid, 'SIGKILL'); } catch { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
}
