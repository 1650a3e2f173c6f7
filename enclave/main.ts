// The enclave app: holds tokens in memory and serves the key channel.
// In a real enclave it listens on vsock; in local mode (development, tests) on a
// unix socket, and only there may it load plaintext keys from files.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { parseAddress, formatAddress, DEFAULT_KEY_PORT, VSOCK_CID_ANY, type Address } from '../src/shared/address.ts';
import { log, configureLog } from '../src/shared/log.ts';
import { KeyStore, KeyMaterialError } from './keystore.ts';
import { KeyServer } from './key-server.ts';

const HELP = `Usage: nitro-acm-enclave [options]

The nitro-acm enclave app: keeps TLS private keys in memory and serves PKCS#11
signing to the nitro-acm PKCS#11 module over the key channel.

Options:
  --key-address ADDR        where to serve the key channel
                            (default vsock:cid=${VSOCK_CID_ANY};port=${DEFAULT_KEY_PORT})
  --threads N               key worker threads (default: the CPUs the enclave has, ${os.availableParallelism()} here)
  --local                   local mode: development and tests only, never in production
  --insecure-plaintext-keys FILE
                            local mode only: load tokens from a JSON file
                            {"tokens":[{"label","pin","key","certificate","chain"?}]}
                            whose key/certificate/chain are PEM file paths
  -h, --help                this text
`;

interface PlaintextTokenFile { tokens: { label: string; pin: string; key: string; certificate: string; chain?: string }[] }

export function loadPlaintextTokens(store: KeyStore, file: string): void {
  let parsed: PlaintextTokenFile;
  try { parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as PlaintextTokenFile; } catch (e) { throw new Error(`${file}: ${(e as Error).message}`); }
  if (!Array.isArray(parsed?.tokens)) throw new Error(`${file}: expected {"tokens": [...]}`);
  const dir = path.dirname(file);
  const read = (p: string) => fs.readFileSync(path.resolve(dir, p), 'utf8');
  parsed.tokens.forEach((t, i) => {
    const where = `${file}: tokens[${i}]`;
    for (const f of ['label', 'pin', 'key', 'certificate'] as const) {
      if (typeof t[f] !== 'string' || t[f] === '') throw new Error(`${where}.${f}: expected a non-empty string`);
    }
    try {
      store.put(t.label, Buffer.from(t.pin), { privateKeyPem: read(t.key), certificatePem: read(t.certificate), chainPem: t.chain ? read(t.chain) : '' });
    } catch (e) {
      throw new Error(`${where} (${t.label}): ${e instanceof KeyMaterialError ? e.message : (e as Error).message}`);
    }
    log.token(t.label).info('token loaded from plaintext files (local mode)');
  });
}

async function main(): Promise<number> {
  let args;
  try {
    args = parseArgs({
      options: {
        'key-address': { type: 'string' },
        threads: { type: 'string' },
        local: { type: 'boolean', default: false },
        'insecure-plaintext-keys': { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
    }).values;
  } catch (e) {
    process.stderr.write(`nitro-acm-enclave: ${(e as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (args.help) { process.stdout.write(HELP); return 0; }
  configureLog({});
  if (args['insecure-plaintext-keys'] && !args.local) {
    log.error('--insecure-plaintext-keys is refused outside local mode: a real enclave gets keys only through KMS with attestation');
    return 2;
  }
  const threads = args.threads ? Number(args.threads) : os.availableParallelism();
  if (!Number.isInteger(threads) || threads < 1 || threads > 256) { log.error(`--threads: expected an integer 1..256, got "${args.threads}"`); return 2; }
  let keyAddress: Address;
  try { keyAddress = parseAddress(args['key-address'] ?? `vsock:cid=${VSOCK_CID_ANY};port=${DEFAULT_KEY_PORT}`); } catch (e) { log.error(`--key-address: ${(e as Error).message}`); return 2; }

  if (args.local) log.warn('LOCAL MODE: simulated enclave for development and tests; keys live in an ordinary process');
  const store = new KeyStore();
  if (args['insecure-plaintext-keys']) {
    try { loadPlaintextTokens(store, args['insecure-plaintext-keys']); } catch (e) { log.error((e as Error).message); return 1; }
  }
  const keys = new KeyServer(store, { threads });
  try { await keys.listen(keyAddress); } catch (e) { log.error(`key channel: cannot listen on ${formatAddress(keyAddress)}: ${(e as Error).message}`); return 1; }
  const expiry = setInterval(() => store.expireRetired(), 30_000);
  expiry.unref();
  log.info(`key channel listening on ${formatAddress(keyAddress)} with ${keys.threads} key worker threads, ${store.labels().length} tokens`);
  const stop = async (sig: string) => {
    log.info(`${sig}: stopping`);
    await keys.close();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  return -1; // keep running
}

main().then((code) => { if (code >= 0) process.exit(code); }, (e) => { log.error(String(e?.stack ?? e)); process.exit(1); });
