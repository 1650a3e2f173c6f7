// The nitro-acm command.
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { log } from './shared/log.ts';

interface Command { summary: string; help: string; run(argv: string[]): Promise<number> }

const DEFAULT_STATE = process.getuid?.() === 0 ? '/var/lib/nitro-acm/local' : path.join(os.homedir(), '.local/state/nitro-acm/local');
const DEFAULT_RUNTIME = process.getuid?.() === 0 ? '/run/nitro-acm/local' : path.join(os.tmpdir(), `nitro-acm-local-${process.getuid?.() ?? 0}`);

const commands: Record<string, Command> = {
  local: {
    summary: 'run the key path on this machine: enclave app, PKCS#11 module, nginx on https://localhost:8443',
    help: `Usage: nitro-acm local [--port N] [--state-dir DIR] [--runtime-dir DIR]

Local mode, for trying nitro-acm and for development: makes a demo CA and a
certificate for localhost on the first run, starts the enclave app with the key,
registers the PKCS#11 module with p11-kit (/etc/pkcs11/modules/nitro-acm.module,
so run it as root), and starts nginx serving https://localhost:PORT with the key
in the enclave app. Prints the curl command that proves it. Ctrl-C stops it.

Options:
  --port N           HTTPS port (default 8443)
  --state-dir DIR    demo CA, key and PIN (default ${DEFAULT_STATE})
  --runtime-dir DIR  socket, nginx prefix, chain/PIN/stanza files (default ${DEFAULT_RUNTIME})
  -h, --help         this text
`,
    async run(argv) {
      const { values } = parseArgs({ args: argv, options: { port: { type: 'string', default: '8443' }, 'state-dir': { type: 'string', default: DEFAULT_STATE }, 'runtime-dir': { type: 'string', default: DEFAULT_RUNTIME }, help: { type: 'boolean', short: 'h' } }, strict: true });
      if (values.help) { process.stdout.write(this.help); return 0; }
      const port = Number(values.port);
      if (!Number.isInteger(port) || port < 1 || port > 65535) { log.error(`--port: expected 1..65535, got "${values.port}"`); return 2; }
      const { runLocal } = await import('./local/local-mode.ts');
      const local = await runLocal({ port, stateDir: path.resolve(values['state-dir']!), runtimeDir: path.resolve(values['runtime-dir']!) });
      process.stdout.write(`\nnitro-acm local mode is serving ${local.url}\nProve it (the handshake is signed by the enclave app):\n\n  ${local.curl}\n\nCtrl-C stops.\n`);
      await new Promise<void>((resolve) => {
        const stop = () => { void local.stop().then(resolve); };
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
      });
      return 0;
    },
  },
};

function usage(): string {
  const width = Math.max(...Object.keys(commands).map((c) => c.length));
  return `Usage: nitro-acm COMMAND [options]\n\nCommands:\n${Object.entries(commands).map(([n, c]) => `  ${n.padEnd(width)}  ${c.summary}`).join('\n')}\n\nnitro-acm COMMAND --help describes each.\n`;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '-h' || name === '--help' || name === 'help') { process.stdout.write(usage()); return name ? 0 : 2; }
  const cmd = commands[name];
  if (!cmd) { process.stderr.write(`nitro-acm: unknown command "${name}"\n\n${usage()}`); return 2; }
  try {
    return await cmd.run(rest);
  } catch (e) {
    const err = e as Error & { code?: string };
    if (err.code?.startsWith('ERR_PARSE_ARGS')) { process.stderr.write(`nitro-acm ${name}: ${err.message}\n\n${cmd.help}`); return 2; }
    log.error(`${name}: ${err.message}`);
    return 1;
  }
}

main(process.argv.slice(2)).then((code) => process.exit(code));
