// The enclave app: holds tokens in memory and serves the key channel.
// In a real enclave it listens on vsock; in local mode (development, tests) on a
// unix socket, and only there may it load plaintext keys from files.
import fs from 'node:fs';
import os from 'node:os';
import { parseArgs } from 'node:util';
import { parseAddress, formatAddress, DEFAULT_KEY_PORT, VSOCK_CID_ANY, type Address } from '../shared/address.ts';
import { log, configureLog, routeProcessWarnings } from '../shared/log.ts';
import { KeyStore } from './keystore.ts';
import { KeyServer } from './key-server.ts';
import { ProvisionServer } from './provision-server.ts';
import { DeviceNsm, type Nsm } from './nsm.ts';

/**
 * Local mode's code (enclave/local-only.ts), or undefined in the production
 * image: scripts/build-eif.ts defines NITRO_ACM_BUILD there, so the bundler
 * drops this import and the file with it.
 */
const localOnly = () => (process.env.NITRO_ACM_BUILD === 'production-image' ? undefined : import('./local-only.ts'));
import { DEFAULT_PROVISION_PORT } from '../shared/address.ts';

const HELP = `Usage: nitro-acm-enclave [options]

The nitro-acm enclave app: keeps TLS private keys in memory and serves PKCS#11
signing to the nitro-acm PKCS#11 module over the key channel.

Options:
  --key-address ADDR        where to serve the key channel
                            (default vsock:cid=${VSOCK_CID_ANY};port=${DEFAULT_KEY_PORT})
  --provision-address ADDR  where to serve the provisioning channel
                            (default vsock:cid=${VSOCK_CID_ANY};port=${DEFAULT_PROVISION_PORT})
  --kms-proxy ADDR          the parent's KMS proxy (default vsock:cid=3;port=8000)
  --token-ttl-hours N       drop a token not refreshed for this long (default 48)
  --threads N               key worker threads (default: the CPUs the enclave has, ${os.availableParallelism()} here)
  --local                   local mode: development and tests only, never in production
  Local mode only:
  --nsm-sim-dir DIR         simulated NSM: its root of trust (made on first use)
  --nsm-sim-role-arn ARN    simulated PCR3 (the parent's IAM role)
  --nsm-sim-instance-id ID  simulated PCR4 (the parent's instance id)
  --nsm-sim-debug           simulated debug mode (all PCRs zero)
  --nsm-sim-signing-cert PEM  simulated PCR8 (a signed enclave image's certificate)
  --kms-ca FILE             an extra CA for KMS's TLS certificate (the local cloud's)
  --insecure-plaintext-keys FILE
                            local mode only: load tokens from a JSON file
                            {"tokens":[{"label","pin","key","certificate","chain"?}]}
                            whose key/certificate/chain are PEM file paths
  -h, --help                this text
`;

async function main(): Promise<number> {
  let args;
  try {
    args = parseArgs({
      options: {
        'key-address': { type: 'string' },
        'provision-address': { type: 'string' },
        'kms-proxy': { type: 'string' },
        'token-ttl-hours': { type: 'string' },
        'nsm-sim-dir': { type: 'string' },
        'nsm-sim-role-arn': { type: 'string' },
        'nsm-sim-instance-id': { type: 'string' },
        'nsm-sim-debug': { type: 'boolean', default: false },
        'nsm-sim-signing-cert': { type: 'string' },
        'kms-ca': { type: 'string' },
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
  for (const localOnly of ['insecure-plaintext-keys', 'nsm-sim-dir', 'nsm-sim-role-arn', 'nsm-sim-instance-id', 'nsm-sim-signing-cert', 'kms-ca'] as const) {
    if (args[localOnly] && !args.local) {
      log.error(`--${localOnly} is refused outside local mode: a real enclave gets keys only through KMS with attestation, from the real NSM`);
      return 2;
    }
  }
  const ttlHours = Number(args['token-ttl-hours'] ?? 48);
  if (!(ttlHours > 0)) { log.error(`--token-ttl-hours: expected a positive number, got "${args['token-ttl-hours']}"`); return 2; }
  const threads = args.threads ? Number(args.threads) : os.availableParallelism();
  if (!Number.isInteger(threads) || threads < 1 || threads > 256) { log.error(`--threads: expected an integer 1..256, got "${args.threads}"`); return 2; }
  let keyAddress: Address, provisionAddress: Address, kmsProxy: Address;
  try { keyAddress = parseAddress(args['key-address'] ?? `vsock:cid=${VSOCK_CID_ANY};port=${DEFAULT_KEY_PORT}`); } catch (e) { log.error(`--key-address: ${(e as Error).message}`); return 2; }
  try { provisionAddress = parseAddress(args['provision-address'] ?? `vsock:cid=${VSOCK_CID_ANY};port=${DEFAULT_PROVISION_PORT}`); } catch (e) { log.error(`--provision-address: ${(e as Error).message}`); return 2; }
  try { kmsProxy = parseAddress(args['kms-proxy'] ?? 'vsock:cid=3;port=8000'); } catch (e) { log.error(`--kms-proxy: ${(e as Error).message}`); return 2; }
  const local = args.local ? await localOnly() : undefined;
  if (args.local && !local) { log.error('--local is refused: this is the production enclave image, built without local mode'); return 2; }
  let nsm: Nsm | undefined;
  try {
    nsm = local && args['nsm-sim-dir']
      ? local.simulatedNsm({ dir: args['nsm-sim-dir'], roleArn: args['nsm-sim-role-arn'], instanceId: args['nsm-sim-instance-id'], debug: args['nsm-sim-debug'], signingCertFile: args['nsm-sim-signing-cert'] })
      : DeviceNsm.open();
  } catch (e) {
    if (!args.local) { log.error((e as Error).message); return 1; }
    nsm = undefined; // local mode without a simulated NSM: plaintext keys only, no provisioning channel
  }
  let kmsCa: string | undefined;
  if (args['kms-ca']) { try { kmsCa = fs.readFileSync(args['kms-ca'], 'utf8'); } catch (e) { log.error(`--kms-ca: ${(e as Error).message}`); return 2; } }

  if (args.local) log.warn('LOCAL MODE: simulated enclave for development and tests; keys live in an ordinary process');
  const store = new KeyStore();
  if (local && args['insecure-plaintext-keys']) {
    try { local.loadPlaintextTokens(store, args['insecure-plaintext-keys']); } catch (e) { log.error((e as Error).message); return 1; }
  }
  const keys = new KeyServer(store, { threads });
  try { await keys.listen(keyAddress); } catch (e) { log.error(`key channel: cannot listen on ${formatAddress(keyAddress)}: ${(e as Error).message}`); return 1; }
  let provision: ProvisionServer | undefined;
  if (args['provision-address'] || !args.local) {
    if (!nsm) { log.error('the provisioning channel needs an NSM (local mode: --nsm-sim-dir)'); return 2; }
    provision = new ProvisionServer({ store, nsm, kms: { proxy: kmsProxy, extraCa: kmsCa }, localMode: args.local, keysServed: () => keys.settled(), operationStats: () => keys.operationStats() });
    try { await provision.listen(provisionAddress); } catch (e) { log.error(`provisioning channel: cannot listen on ${formatAddress(provisionAddress)}: ${(e as Error).message}`); return 1; }
    log.info(`provisioning channel listening on ${formatAddress(provisionAddress)} (NSM: ${nsm.kind})`);
  }
  const expiry = setInterval(() => {
    store.expireRetired();
    for (const l of store.expireStale(ttlHours * 3600_000)) log.token(l).warn(`dropped: not refreshed for ${ttlHours} h`);
  }, 30_000);
  expiry.unref();
  log.info(`key channel listening on ${formatAddress(keyAddress)} with ${keys.threads} key worker threads, ${store.labels().length} tokens, at most ${keys.maxConnections} connections`);
  const stop = async (sig: string) => {
    log.info(`${sig}: stopping`);
    await Promise.all([keys.close(), provision?.close()]);
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
  return -1; // keep running
}

routeProcessWarnings();
// Whoever reads the logs may go away (the agent that started a local-mode enclave
// app is killed; a console detaches): losing log lines must not stop the keys
// being served, so a broken stdout or stderr is ignored.
for (const stream of [process.stdout, process.stderr]) stream.on('error', () => {});
main().then((code) => { if (code >= 0) process.exit(code); }, (e) => { log.error(String(e?.stack ?? e)); process.exit(1); });
