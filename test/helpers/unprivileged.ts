// Runs a small script as an unprivileged user (nobody), the way a local attacker
// on the parent instance would: for tests of who may use which channel.
import { execFile } from 'node:child_process';

export const NOBODY = 65534;

/**
 * Runs `body` (the body of an async function given `net`, `fs` and `args`) in a
 * fresh Node process as uid/gid nobody; resolves with what it returns, as JSON.
 */
export function runAsNobody<T>(body: string, args: unknown = null, timeoutMs = 20_000): Promise<T> {
  const code = `const net = require('node:net'); const fs = require('node:fs'); const args = JSON.parse(process.argv[1]);
(async () => { ${body} })().then((r) => { process.stdout.write(JSON.stringify(r ?? null)); }, (e) => { process.stderr.write(String(e && e.stack || e)); process.exit(1); });`;
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['-e', code, JSON.stringify(args)], { uid: NOBODY, gid: NOBODY, timeout: timeoutMs, cwd: '/' }, (err, stdout, stderr) => {
      if (err) { reject(new Error(`as nobody: ${err.message}\n${stderr}`)); return; }
      resolve(JSON.parse(stdout) as T);
    });
  });
}

/**
 * Script body: connects to a unix socket, sends `args.frames` (base64), and says
 * what came back: {connected, reply (base64 of everything received), closedByServer}.
 */
export const SEND_AND_SEE = `
  return await new Promise((resolve) => {
    const s = net.connect(args.path);
    let got = Buffer.alloc(0), connected = false;
    s.on('connect', () => { connected = true; for (const f of args.frames) s.write(Buffer.from(f, 'base64')); });
    s.on('data', (d) => { got = Buffer.concat([got, d]); });
    s.on('error', () => {});
    s.on('close', () => resolve({ connected, reply: got.toString('base64'), closedByServer: true }));
    setTimeout(() => { s.destroy(); resolve({ connected, reply: got.toString('base64'), closedByServer: false }); }, args.waitMs ?? 1500);
  });`;
