// Runs the nitro-acm command as a user would (bin/nitro-acm), collecting its output.
import path from 'node:path';
import { spawn } from 'node:child_process';
import { PROJECT_ROOT } from '../../src/paths.ts';

export interface CliResult { status: number | null; stdout: string; stderr: string }

export function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    const p = spawn(path.join(PROJECT_ROOT, 'bin/nitro-acm'), args, { env: { ...process.env, ...env } });
    let stdout = '', stderr = '';
    p.stdout.on('data', (d) => { stdout += d; });
    p.stderr.on('data', (d) => { stderr += d; });
    // 'close', not 'exit': output can still be in flight when the process has exited.
    p.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}
