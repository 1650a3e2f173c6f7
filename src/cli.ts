// The nitro-acm command.
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { log, routeProcessWarnings, configureLog, LOG_FORMATS, type LogFormat } from '../shared/log.ts';

interface Command { summary: string; help: string; run(argv: string[]): Promise<number> }

const DEFAULT_STATE = process.getuid?.() === 0 ? '/var/lib/nitro-acm/local' : path.join(os.homedir(), '.local/state/nitro-acm/local');
const DEFAULT_RUNTIME = process.getuid?.() === 0 ? '/run/nitro-acm/local' : path.join(os.tmpdir(), `nitro-acm-local-${process.getuid?.() ?? 0}`);

/** This command as the user can type it again (bin/nitro-acm sets it; from npm start, npx finds it). */
const SELF = process.env.NITRO_ACM_SELF ?? 'npx nitro-acm';

function kv(pairs: string[] | undefined, what: string): Record<string, string> | undefined {
  if (!pairs?.length) return undefined;
  return Object.fromEntries(pairs.map((p) => {
    const i = p.indexOf('=');
    if (i <= 0) throw new Error(`${what}: expected key=value, got "${p}"`);
    return [p.slice(0, i), p.slice(i + 1)];
  }));
}

const commands: Record<string, Command> = {
  agent: {
    summary: 'the nitro-acm service; --check validates acm.yaml like nginx -t',
    help: `Usage: nitro-acm agent [--config FILE] [--control-socket PATH] [--log-format text|json]
       nitro-acm agent --check [--config FILE] [--json]

Runs the service (what nitro-enclaves-acm.service starts): reads the
configuration (default /etc/nitro_enclaves/acm.yaml), starts the enclave image with
nitro-cli (or finds it running), provisions every token through KMS with
attestation, writes the web server's files and reloads it; then polls for renewals,
re-attests, watches the enclave and applies edits of the file as they are saved.

--check reads the configuration, prints the tokens it would serve, and exits
non-zero with the file, line and column of the first error, like nginx -t. Every
acm.yaml that AWS's ACM for Nitro Enclaves accepts is accepted, with its defaults;
what it would ignore (an unknown key) or that nitro-acm reads otherwise (a number
outside what it works with) is a warning naming the line. --json prints what was
read, the warnings, or the error.

--control-socket is where nitro-acm status reads the agent (default
/run/nitro-acm/agent.sock, root only).

--log-format json writes one JSON object a line to stderr ({"time", "level",
"token" when the line is about one, "message"}) for log shippers; text (the
default) is "TIME LEVEL [token] message", acm.yaml's log.enable_timestamp
deciding the time. NITRO_ACM_LOG_FORMAT=json does the same for every command.
Every web-server reload, restart or in-place upgrade, enclave restart and token
state change is logged at info or above with its cause.
`,
    async run(argv) {
      const { values } = parseArgs({ args: argv, options: { check: { type: 'boolean' }, config: { type: 'string' }, json: { type: 'boolean' }, 'control-socket': { type: 'string' }, 'log-format': { type: 'string' }, help: { type: 'boolean', short: 'h' } }, strict: true });
      if (values.help) { process.stdout.write(this.help); return 0; }
      const logFormat = values['log-format'];
      if (logFormat !== undefined) {
        if (!(LOG_FORMATS as readonly string[]).includes(logFormat)) { process.stderr.write(`nitro-acm agent: --log-format: expected ${LOG_FORMATS.join(' or ')}, got "${logFormat}"\n`); return 2; }
        configureLog({ format: logFormat as LogFormat });
      }
      const { loadConfig, ConfigError, DEFAULT_CONFIG, configWarnings, describeSource, describeTarget } = await import('./agent/config.ts');
      const file = values.config ?? DEFAULT_CONFIG;
      if (!values.check) {
        const { startService } = await import('./agent/service.ts');
        const { NitroCliEnclaveController } = await import('./agent/enclave-controller.ts');
        let service;
        try { service = await startService({ configFile: file, controller: (c) => new NitroCliEnclaveController(c.enclave), controlSocket: values['control-socket'] }); } catch (e) {
          if (e instanceof ConfigError) { log.error(e.message); return 1; }
          throw e;
        }
        await new Promise<void>((resolve) => { const stop = () => void service.stop().then(resolve); process.once('SIGINT', stop); process.once('SIGTERM', stop); });
        return 0;
      }
      try {
        const c = loadConfig(file);
        const warnings = configWarnings(c, file);
        if (values.json) { process.stdout.write(JSON.stringify({ ok: true, file, warnings, config: { ...c, tokens: c.tokens.map(({ pin, ...t }) => ({ ...t, pin: pin ? '(set)' : '(generated)' })) } }, null, 2) + '\n'); return 0; }
        process.stdout.write(`${file}: syntax is ok, ${c.tokens.length} token${c.tokens.length === 1 ? '' : 's'} (service ${c.options.service}, sync every ${c.options.sync_interval_secs} s)\n`);
        for (const t of c.tokens) {
          process.stdout.write(`  ${t.label}: ${describeSource(t)} -> ${describeTarget(t)} (refresh every ${t.refresh_interval_secs} s)\n`);
        }
        for (const w of warnings) process.stderr.write(`nitro-acm: warning: ${w}\n`);
        return 0;
      } catch (e) {
        if (e instanceof ConfigError) {
          if (values.json) process.stdout.write(JSON.stringify({ ok: false, file: e.file, line: e.line, column: e.col, error: e.detail }, null, 2) + '\n');
          else process.stderr.write(`nitro-acm: ${e.message}\nnitro-acm: configuration file ${file} test failed\n`);
          return 1;
        }
        throw e;
      }
    },
  },
  status: {
    summary: 'what the running agent serves: per token certificate, expiry, key, last sync and refresh, state; enclave health',
    help: `Usage: nitro-acm status [--socket PATH] [--json]

Asks the running agent (nitro-acm agent, or nitro-acm local) through its control
socket. For every token: label, source, target, certificate subject, names (SANs),
not-after, key type, the pkcs11: URI of each key (to wire a web server or tool by
hand, as for a token without a target), last sync, last refresh, state (serving,
pending, failed) and the last error; and whether the enclave answers. Exits 0 when the enclave is healthy and
every token serves, 1 otherwise, 2 when no agent answers.

  --socket PATH  the agent's control socket (default $NITRO_ACM_CONTROL_SOCKET, else
                 /run/nitro-acm/agent.sock, or
                 /run/nitro-acm/local/agent.sock when only local mode runs)
  --json         machine-readable output
`,
    async run(argv) {
      const { values } = parseArgs({ args: argv, options: { socket: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, strict: true });
      if (values.help) { process.stdout.write(this.help); return 0; }
      const { readStatus, formatStatus, statusExitCode, findControlSocket } = await import('./commands/status.ts');
      let r;
      try { r = await readStatus(values.socket ?? findControlSocket()); } catch (e) {
        if (values.json) process.stdout.write(JSON.stringify({ ok: false, error: (e as Error).message }, null, 2) + '\n');
        else process.stderr.write(`nitro-acm status: ${(e as Error).message}\n`);
        return 2;
      }
      process.stdout.write(values.json ? JSON.stringify(r, null, 2) + '\n' : formatStatus(r));
      return statusExitCode(r);
    },
  },
  assess: {
    summary: 'a security assessment of this instance from live probes: PCRs and the KMS key policies that bind them, a direct decrypt from the parent (must be BLOCKED), debug mode, attestation checks',
    help: `Usage: nitro-acm assess [--socket PATH] [--json | --markdown]

Asks the running agent to assess this instance's Nitro Enclave set-up from live
probes, not from configuration alone:
  - the enclave image (build date, size) and what it measures to: PCR0, PCR1,
    PCR2 (PCR8 when signed), and PCR3/PCR4 from the instance role and instance id
  - for each token's sealed private key: a KMS Decrypt from the parent with the
    instance role and no attestation document, which must be refused (BLOCKED);
    the key policy (GetKeyPolicy, where the role may read it) and which PCRs its
    kms:RecipientAttestation conditions bind, to this image's values or not. ACM
    certificates are sealed under a key ACM manages, whose policy cannot be read
  - debug mode (the attestation document; nitro-cli describe-enclaves), vsock as
    the only channel, nonce and chain verification of the agent's attestation
    checks, and whether PCR8 would spare key-policy changes on image updates
Each finding is PASS, WARN, FAIL or INFO, with the fix. Exits 0 when nothing
FAILs, 1 otherwise, 2 when no agent answers. The probe's decrypt, if KMS ever
allows it, is wiped at once: no key is kept or shown.

  --socket PATH  the agent's control socket (as for nitro-acm status)
  --json         machine-readable output
  --markdown     the report as Markdown ("Nitro Enclave Security Assessment")
`,
    async run(argv) {
      const { values } = parseArgs({ args: argv, options: { socket: { type: 'string' }, json: { type: 'boolean' }, markdown: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, strict: true });
      if (values.help) { process.stdout.write(this.help); return 0; }
      if (values.json && values.markdown) { process.stderr.write('nitro-acm assess: --json and --markdown do not go together\n'); return 2; }
      const { findControlSocket } = await import('./commands/status.ts');
      const { readAssessment, formatAssessment, formatAssessmentMarkdown, assessExitCode } = await import('./commands/assess.ts');
      let a;
      try { a = await readAssessment(values.socket ?? findControlSocket()); } catch (e) {
        if (values.json) process.stdout.write(JSON.stringify({ ok: false, error: (e as Error).message }, null, 2) + '\n');
        else process.stderr.write(`nitro-acm assess: ${(e as Error).message}\n`);
        return 2;
      }
      process.stdout.write(values.json ? JSON.stringify(a, null, 2) + '\n' : values.markdown ? formatAssessmentMarkdown(a) : formatAssessment(a));
      return assessExitCode(a);
    },
  },
  doctor: {
    summary: 'check what breaks installs in practice (engine, p11-kit, nginx/httpd config, files, enclave), each finding with its fix',
    help: `Usage: nitro-acm doctor [--config FILE] [--socket PATH] [--web-server-conf FILE] [--openssl-conf FILE] [--json]

Checks, and for each problem says how to fix it:
  - acm.yaml is valid
  - the OpenSSL pkcs11 engine loads; on Amazon Linux 2023 (OpenSSL 3) openssl.cnf
    configures it
  - p11-kit lists the nitro-acm module
  - nginx: nginx -t passes, "ssl_engine pkcs11;" is at the top level, every
    NginxStanza file is included inside a server block
  - httpd: "SSLCryptoDevice pkcs11" is set, every Conf file has the key line
  - each token's files exist, are not world-readable and belong to user/group
  - vsock-proxy forwards port 8000 to KMS (nitro-enclaves-vsock-proxy.service)
  - the agent answers and the enclave is reachable; every token serves
Exits 1 if anything fails.

  --config FILE        acm.yaml (default: the one the running agent serves, else
                       /etc/nitro_enclaves/acm.yaml)
  --socket PATH        the agent's control socket (default as nitro-acm status)
  --web-server-conf FILE
                       nginx's or httpd's main file (default: the one the running
                       agent names (local mode), else nginx's own, /etc/httpd or
                       /etc/apache2); --nginx-conf is the same
  --openssl-conf FILE  (default: OPENSSL_CONF, else OPENSSLDIR/openssl.cnf)
  --json               machine-readable findings
`,
    async run(argv) {
      const { values } = parseArgs({ args: argv, options: { config: { type: 'string' }, socket: { type: 'string' }, 'web-server-conf': { type: 'string' }, 'nginx-conf': { type: 'string' }, 'openssl-conf': { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, strict: true });
      if (values.help) { process.stdout.write(this.help); return 0; }
      const { doctor, formatFindings } = await import('./commands/doctor.ts');
      const { findControlSocket } = await import('./commands/status.ts');
      const findings = await doctor({ configFile: values.config, socket: values.socket ?? findControlSocket(), webServerConf: values['web-server-conf'] ?? values['nginx-conf'], opensslConf: values['openssl-conf'] });
      process.stdout.write(values.json ? JSON.stringify({ ok: !findings.some((f) => f.verdict === 'fail'), findings }, null, 2) + '\n' : formatFindings(findings));
      return findings.some((f) => f.verdict === 'fail') ? 1 : 0;
    },
  },
  'verify-attestation': {
    summary: 'verify a Nitro attestation document and print its module id, time and PCRs',
    help: `Usage: nitro-acm verify-attestation FILE [--root PEM] [--at TIME] [--json]

Verifies an attestation document (raw CBOR, hex or base64): the COSE_Sign1
signature, and the certificate chain to the AWS Nitro Enclaves root G1 shipped
with nitro-acm (pinned by its SHA-256 fingerprint), or to --root. Certificates
must be valid at the document's own time, or at --at (ISO 8601, or "now").
Prints module id, timestamp and PCRs; exits 0 only if the document verifies.

  --root PEM   trust this root instead of the AWS one (e.g. local mode's simulated NSM root)
  --at TIME    check validity at this time instead of the document's timestamp
  --json       machine-readable output
`,
    async run(argv) {
      const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { root: { type: 'string' }, at: { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, strict: true });
      if (values.help) { process.stdout.write(this.help); return 0; }
      if (positionals.length !== 1) { process.stderr.write(this.help); return 2; }
      const { verifyAttestationFile, formatVerifyReport } = await import('./commands/attestation-tools.ts');
      const r = verifyAttestationFile(positionals[0], { root: values.root, at: values.at });
      process.stdout.write(values.json ? JSON.stringify(r, null, 2) + '\n' : formatVerifyReport(r));
      return r.verified ? 0 : 1;
    },
  },
  pcrs: {
    summary: 'PCR3/PCR4 for a role ARN and instance id, with a KMS key-policy condition block',
    help: `Usage: nitro-acm pcrs [--role-arn ARN] [--instance-id ID] [--json]

Computes PCR3 (the parent instance's IAM role ARN) and PCR4 (its instance id) as
the Nitro hypervisor measures them (SHA-384 over 48 zero bytes and the string), and
prints a Condition block for the KMS key policy. Add PCR0 (and PCR1, PCR2, PCR8)
from the enclave image's measurements (image-measurements.json).
`,
    async run(argv) {
      const { values } = parseArgs({ args: argv, options: { 'role-arn': { type: 'string' }, 'instance-id': { type: 'string' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, strict: true });
      if (values.help) { process.stdout.write(this.help); return 0; }
      if (!values['role-arn'] && !values['instance-id']) { process.stderr.write(`nitro-acm pcrs: give --role-arn and/or --instance-id\n\n${this.help}`); return 2; }
      if (values['role-arn'] && !/^arn:aws[a-z-]*:iam::\d{12}:role\/.+/.test(values['role-arn'])) { process.stderr.write(`nitro-acm pcrs: --role-arn "${values['role-arn']}" is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)\n`); return 2; }
      if (values['instance-id'] && !/^i-[0-9a-f]{8,17}$/.test(values['instance-id'])) { process.stderr.write(`nitro-acm pcrs: --instance-id "${values['instance-id']}" is not an EC2 instance id (i-0123456789abcdef0)\n`); return 2; }
      const { pcrReport } = await import('./commands/attestation-tools.ts');
      const r = pcrReport(values['role-arn'], values['instance-id']);
      if (values.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
      else process.stdout.write(Object.entries(r.pcrs).map(([k, v]) => `${k} ${v}`).join('\n') + `\n\nKMS key policy condition:\n"Condition": ${JSON.stringify(r.condition, null, 2)}\n`);
      return 0;
    },
  },
  seal: {
    summary: 'encrypt a certificate\'s private key under a KMS key into a bundle (file or S3)',
    help: `Usage: nitro-acm seal --certificate PEM --key PEM [--chain PEM] --kms-key-id KEY
                     (--out FILE | --s3 s3://BUCKET/KEY) [--region R] [--endpoint URL]
                     [--encryption-context k=v ...]

Makes a bundle for an S3 token source: the certificate and chain as PEM, the
private key encrypted with KMS Encrypt under KEY, whose key policy should allow
kms:Decrypt only to your enclave's measurements (see nitro-acm pcrs). Uses the
default AWS credential chain. Run it where the private key already is, not on the
parent instance. Refuses a key that does not belong to the certificate.
`,
    async run(argv) {
      const { values } = parseArgs({ args: argv, options: { certificate: { type: 'string' }, key: { type: 'string' }, chain: { type: 'string' }, 'kms-key-id': { type: 'string' }, out: { type: 'string' }, s3: { type: 'string' }, region: { type: 'string' }, endpoint: { type: 'string' }, 'encryption-context': { type: 'string', multiple: true }, help: { type: 'boolean', short: 'h' } }, strict: true });
      if (values.help) { process.stdout.write(this.help); return 0; }
      for (const f of ['certificate', 'key', 'kms-key-id'] as const) if (!values[f]) { process.stderr.write(`nitro-acm seal: --${f} is required\n\n${this.help}`); return 2; }
      const { seal } = await import('./commands/seal.ts');
      const r = await seal({ certificate: values.certificate!, key: values.key!, chain: values.chain, kmsKeyId: values['kms-key-id']!, out: values.out, s3: values.s3, region: values.region, endpoint: values.endpoint, encryptionContext: kv(values['encryption-context'], '--encryption-context') });
      log.info(`sealed ${values.certificate} under ${values['kms-key-id']} into ${r.written}`);
      return 0;
    },
  },
  'local-cloud': {
    summary: 'run the local stand-ins for IMDS, IAM, S3 and KMS on loopback (local mode)',
    help: `Usage: nitro-acm local-cloud [--state-dir DIR] [--port N] [--https-port N] [--kms-proxy-socket PATH] [--nsm-root PEM]

Runs the local cloud that local mode and the tests use: IMDSv2, IAM GetRole, S3
and KMS (with key policies and attestation-based Decrypt) speaking the real wire
protocols, so the real AWS SDK clients work with only endpoints and credentials
changed. State persists in --state-dir. Prints the environment to use it. KMS
trusts attestation documents from the AWS root and, when given, --nsm-root.
`,
    async run(argv) {
      const { values } = parseArgs({ args: argv, options: { 'state-dir': { type: 'string', default: DEFAULT_STATE }, port: { type: 'string', default: '0' }, 'https-port': { type: 'string', default: '0' }, 'kms-proxy-socket': { type: 'string' }, 'nsm-root': { type: 'string' }, help: { type: 'boolean', short: 'h' } }, strict: true });
      if (values.help) { process.stdout.write(this.help); return 0; }
      const { startLocalCloud } = await import('./local/cloud/server.ts');
      const fs = await import('node:fs');
      const { X509Certificate } = await import('node:crypto');
      const roots = values['nsm-root'] ? [new X509Certificate(fs.readFileSync(values['nsm-root']))] : [];
      const cloud = await startLocalCloud({ stateDir: path.resolve(values['state-dir']!), httpPort: Number(values.port), httpsPort: Number(values['https-port']), kmsProxySocket: values['kms-proxy-socket'], attestationRoots: () => roots });
      const id = cloud.identity;
      process.stdout.write(`# the instance role (as the agent sees it through IMDS):\nexport AWS_EC2_METADATA_SERVICE_ENDPOINT=${cloud.endpoint}\nexport AWS_ENDPOINT_URL=${cloud.endpoint}\nexport AWS_REGION=${id.region}\n# an administrator (for CreateKey, seal):\n#   AWS_ACCESS_KEY_ID=${id.admin.accessKeyId} AWS_SECRET_ACCESS_KEY=<in ${path.resolve(values['state-dir']!)}/cloud/identity.json>\n# ACM bucket: ${cloud.bucket()}  role: ${id.roleArn}  instance: ${id.instanceId}\n`);
      await new Promise<void>((resolve) => { const stop = () => void cloud.stop().then(resolve); process.once('SIGINT', stop); process.once('SIGTERM', stop); });
      return 0;
    },
  },
  local: {
    summary: 'run everything on this machine: local cloud, enclave app, agent, nginx (or httpd) on https://localhost:8443; renew on demand',
    help: `Usage: nitro-acm local [--port N] [--httpd] [--openssl engine|provider] [--key-type TYPE] [--state-dir DIR] [--runtime-dir DIR]
       nitro-acm local renew LABEL [--runtime-dir DIR] [--json]

Local mode, for trying nitro-acm and for development (no AWS account, no Nitro
hardware): a local cloud on loopback (IMDS, IAM, S3, KMS), a demo CA and a
certificate for localhost sealed into the local S3 under a KMS key whose policy
pins the enclave app's PCR0 (first run; kept in the state directory), the enclave
app with a simulated NSM, the agent service on a generated acm.yaml, the PKCS#11
module registered with p11-kit (/etc/pkcs11/modules/nitro-acm.module, so run it as
root), and nginx (or Apache httpd with --httpd) serving https://localhost:PORT
with the key in the enclave app. Prints the curl command that proves it. Ctrl-C
stops everything; files are kept.

"renew LABEL" asks a running local mode to issue a new certificate for the token
into the local S3 and roll it out as a real renewal (the agent fetches, the
enclave decrypts, the web server reloads gracefully), and prints how long it took
until the new certificate was served. nitro-acm status shows the token.

Options:
  --port N           HTTPS port (default 8443)
  --httpd            serve with Apache httpd (event MPM, mod_ssl) instead of nginx
  --openssl PATH     how the web server's OpenSSL reaches the key: engine (the
                     pkcs11 engine, libp11; default) or provider (pkcs11-provider,
                     OpenSSL 3; the only way with OpenSSL 4)
  --key-type TYPE    the demo certificate's key: rsa-2048 (default), rsa-4096,
                     ec-p256, ec-p384 (ACM's key types)
  --state-dir DIR    demo CA, local cloud state (default ${DEFAULT_STATE})
  --runtime-dir DIR  sockets, acm.yaml, web server prefix, chain/PIN/stanza files
                     (default ${DEFAULT_RUNTIME})
  --json             (renew) machine-readable output
  -h, --help         this text
`,
    async run(argv) {
      const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { port: { type: 'string', default: '8443' }, httpd: { type: 'boolean' }, openssl: { type: 'string', default: 'engine' }, 'key-type': { type: 'string', default: 'rsa-2048' }, 'state-dir': { type: 'string', default: DEFAULT_STATE }, 'runtime-dir': { type: 'string', default: DEFAULT_RUNTIME }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, strict: true });
      if (values.help) { process.stdout.write(this.help); return 0; }
      if (positionals[0] === 'renew') {
        if (positionals.length !== 2) { process.stderr.write(`nitro-acm local renew: give the token's label (local mode serves "localhost")\n\n${this.help}`); return 2; }
        const { controlCall } = await import('./agent/control.ts');
        type RenewReport = import('./agent/control.ts').RenewReport;
        const socket = path.join(path.resolve(values['runtime-dir']!), 'agent.sock');
        let r: RenewReport;
        try { r = await controlCall(socket, 'renew', { label: positionals[1] }, 120_000); } catch (e) {
          process.stderr.write(`nitro-acm local renew: ${(e as Error).message}\n`);
          return 1;
        }
        if (values.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
        else process.stdout.write(`${r.label}: renewed; the web server serves the new certificate ${r.seconds.toFixed(2)} s after it was put in S3\n  previous ${r.previous}\n  now      ${r.fingerprint} (not after ${r.notAfter})\n`);
        return 0;
      }
      if (positionals.length) { process.stderr.write(`nitro-acm local: unknown subcommand "${positionals[0]}" (expected renew)\n\n${this.help}`); return 2; }
      if (values.openssl !== 'engine' && values.openssl !== 'provider') { log.error(`--openssl: expected engine or provider, got "${values.openssl}"`); return 2; }
      const { DEMO_KEY_TYPES } = await import('./local/local-mode.ts');
      const keyType = DEMO_KEY_TYPES.find((k) => k === values['key-type']);
      if (!keyType) { log.error(`--key-type: expected ${DEMO_KEY_TYPES.join(', ')}, got "${values['key-type']}"`); return 2; }
      const port = Number(values.port);
      if (!Number.isInteger(port) || port < 1 || port > 65535) { log.error(`--port: expected 1..65535, got "${values.port}"`); return 2; }
      const { runLocal } = await import('./local/local-mode.ts');
      const local = await runLocal({ port, stateDir: path.resolve(values['state-dir']!), runtimeDir: path.resolve(values['runtime-dir']!), server: values.httpd ? 'httpd' : 'nginx', openssl: values.openssl, keyType });
      process.stdout.write(`\nnitro-acm local mode is serving ${local.url} (${values.httpd ? 'Apache httpd' : 'nginx'})\nProve it (the handshake is signed by the enclave app):\n\n  ${local.curl}\n\nWatch a renewal:  ${SELF} local renew localhost${values['runtime-dir'] === DEFAULT_RUNTIME ? '' : ` --runtime-dir ${values['runtime-dir']}`}\nSee the token:    ${SELF} status${values['runtime-dir'] === DEFAULT_RUNTIME ? '' : ` --socket ${local.controlSocket}`}\nCheck the set-up: ${SELF} doctor${values['runtime-dir'] === DEFAULT_RUNTIME ? '' : ` --socket ${local.controlSocket}`}\n${local.service.metricsUrl ? `metrics: ${local.service.metricsUrl}\n` : ''}Ctrl-C stops.\n`);
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

routeProcessWarnings();
// Exit only once stdout and stderr are flushed: writes to a pipe are asynchronous,
// and process.exit would cut off what a script is reading (a --json report).
const flushAndExit = (code: number) => process.stdout.write('', () => process.stderr.write('', () => process.exit(code)));
main(process.argv.slice(2)).then(flushAndExit);
