// acm.yaml files as AWS's agent reads them (test/fixtures/aws: its two examples
// in its layout and spelling, values filled in, and the variations it accepts)
// pass `nitro-acm agent --check`, and are served end to end in local mode: the
// nginx example with a FileDb token (two keys, one without a certificate) and a
// token without a target that is wired into nginx by hand from the URI
// `nitro-acm status` shows; the httpd example through real Apache httpd.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { startService } from '../src/agent/service.ts';
import { registerWithP11Kit } from '../src/local/p11kit.ts';
import { launchNginx, startHttpd, freePort, handshake, fingerprintOf, type RunningServer } from '../src/local/webservers.ts';
import { issueServerCert } from '../src/local/pki.ts';
import { cli } from './helpers/cli.ts';
import { tmpdir, ROOT, MODULE_PATH } from './helpers/enclave.ts';
import { spawnSync } from 'node:child_process';
import { startTestCloud, type TestCloud } from './helpers/cloud.ts';

const FIXTURES = path.join(ROOT, 'test/fixtures/aws');
/** A FileDb label as long as the wire carries (AWS's agent takes any string). */
const LONG_LABEL = `second-key-${'x'.repeat(244)}`;
const dir = tmpdir('aws-configs');
fs.chmodSync(dir, 0o755);
let tc: TestCloud;
test.before(async () => { tc = await startTestCloud(dir); registerWithP11Kit(); });
test.after.always(async () => { await tc?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });

for (const f of ['acm.example.yaml', 'acm-httpd.example.yaml', 'variations.yaml']) {
  test(`agent --check takes AWS's ${f} as it is`, async (t) => {
    const r = await cli(['agent', '--check', '--config', path.join(FIXTURES, f)]);
    t.is(r.status, 0, r.stderr);
    t.regex(r.stdout, /syntax is ok/);
  });
}

test('agent --check --json: the variations read as AWS reads them, with the unknown key noted', async (t) => {
  const r = await cli(['agent', '--check', '--json', '--config', path.join(FIXTURES, 'variations.yaml')]);
  t.is(r.status, 0, r.stderr);
  const j = JSON.parse(r.stdout) as { warnings: string[]; config: { log: { level: string; enable_timestamp: boolean }; enclave: { attestation_retry_count: number }; tokens: { label: string; source: unknown; target?: unknown; pin: string }[] } };
  t.deepEqual(j.config.log, { level: 'trace', enable_timestamp: true });
  t.is(j.config.enclave.attestation_retry_count, 3);
  t.deepEqual(j.config.tokens.map((x) => [x.label, Object.keys(x.source as object)[0], x.target === undefined, x.pin]), [['no-target', 'S3', true, '(set)'], ['filedb', 'FileDb', false, '(generated)'], ['2024', 'Acm', true, '(set)']]);
  t.is(j.warnings.length, 1);
  t.regex(j.warnings[0], /variations\.yaml:\d+: tokens\[2\]: unknown key "shiny_new_key" is ignored/);
});

/** A fixture as a test's acm.yaml: its absolute paths moved under `etc`, its users made ones this machine has. */
function adapt(file: string, etc: string): string {
  return fs.readFileSync(path.join(FIXTURES, file), 'utf8')
    .replace(/\/etc\/pki\/nginx\/|\/etc\/httpd\/conf\.d\//g, `${etc}/`)
    .replace(/user: (nginx|apache)/g, 'user: www-data');
}

async function stopAll(...things: ({ stop(): Promise<void> } | undefined)[]) { for (const x of things) await x?.stop(); }

test.serial("AWS's nginx example, a FileDb token and a token without a target, served by real nginx", async (t) => {
  const etc = path.join(dir, 'etc-nginx');
  fs.mkdirSync(etc);
  const arn = 'arn:aws:acm:us-east-1:123456789012:certificate/aws-example-nginx';
  const exampleCert = await tc.publish(tc.cloud.bucket(), tc.acmKey(arn), ['nginx-acm-token.test']);
  const byHandCert = await tc.publish(tc.cloud.bucket(), 'bundles/by-hand.json', ['by-hand.test']);
  // A FileDb as AWS's agent reads it: KMS ciphertexts of PEM keys, ids and labels of its own; the second key has no certificate.
  const first = issueServerCert(tc.ca, ['filedb.test']), second = issueServerCert(tc.ca, ['unused.test']);
  const ciphertext = async (keyPem: string, certPem: string) => (JSON.parse(await tc.seal(certPem, keyPem)) as { encryptedPrivateKey: string }).encryptedPrivateKey;
  const fileDb = path.join(dir, 'filedb.json');
  fs.writeFileSync(fileDb, JSON.stringify([
    { id: 1, label: 'acm-key', encrypted_pem_b64: await ciphertext(first.keyPem, first.certPem), cert_pem: first.certPem + tc.ca.certPem },
    { id: 2, label: LONG_LABEL, encrypted_pem_b64: await ciphertext(second.keyPem, second.certPem), cert_pem: null, unknown_field: 'ignored' },
  ]));
  const configFile = path.join(dir, 'acm-nginx.yaml');
  fs.writeFileSync(configFile, `${adapt('acm.example.yaml', etc).replace('\noptions:', '\nlog:\n  level: Trace\n\noptions:')}  - label: filedb
    source:
      FileDb:
        path: ${fileDb}
    target:
      NginxStanza:
        path: ${etc}/filedb.conf
  - label: by-hand
    source:
      S3:
        uri: "s3://${tc.cloud.bucket()}/bundles/by-hand.json"
`);
  const socket = path.join(dir, 'agent-nginx.sock');
  let nginx: RunningServer | undefined;
  const controller = tc.controller();
  const service = await startService({ configFile, controller: () => controller, endpoints: tc.endpoints, controlSocket: socket, reload: async () => { nginx?.reload(); } });
  t.teardown(async () => { await stopAll(nginx, service); await service.agent.stop(); });

  const st = await cli(['status', '--socket', socket, '--json']);
  t.is(st.status, 0, st.stderr);
  const report = JSON.parse(st.stdout) as { tokens: { label: string; state: string; target: string; uris: string[] }[] };
  const byLabel = new Map(report.tokens.map((x) => [x.label, x]));
  t.deepEqual(report.tokens.map((x) => [x.label, x.state]), [['nginx-acm-token', 'serving'], ['filedb', 'serving'], ['by-hand', 'serving']]);
  t.deepEqual(byLabel.get('filedb')!.uris.map((u) => u.replace(/\?.*/, '')), ['pkcs11:token=filedb;id=%01;type=private', 'pkcs11:token=filedb;id=%02;type=private'], "the FileDb's own ids");
  const pinFile = path.join(dir, 'pins', `${Buffer.from('by-hand').toString('hex')}.pin`);
  t.is(byLabel.get('by-hand')!.uris[0].replace(/id=[^;]+/, 'id=X'), `pkcs11:token=by-hand;id=X;type=private?pin-source=file:${pinFile}`);
  t.regex(byLabel.get('by-hand')!.target, /^none/);
  // The FileDb's ids and labels, as a PKCS#11 tool sees them.
  const objects = spawnSync('pkcs11-tool', ['--module', MODULE_PATH, '--token-label', 'filedb', '--login', '--pin', fs.readFileSync(path.join(etc, 'filedb.pin'), 'utf8'), '--list-objects', '--type', 'privkey'], { encoding: 'utf8', env: { ...process.env, NITRO_ACM_KEY_ADDRESS: service.agent.enclaveEndpoints!.keyAddress } });
  t.is(objects.status, 0, objects.stderr);
  t.deepEqual([...objects.stdout.matchAll(/label:\s+(\S+)\n\s+ID:\s+(\S+)/g)].map((m) => [m[1], m[2]]), [['acm-key', '01'], [LONG_LABEL, '02']]);
  t.is(fs.statSync(pinFile).mode & 0o777, 0o400);
  t.false(fs.existsSync(path.join(etc, 'by-hand.conf')), 'no web-server file for a token without a target');
  const text = await cli(['status', '--socket', socket]);
  t.regex(text.stdout, /^by-hand: SERVING\n[\s\S]*?\n {2}target {7}none[^\n]*\n {2}uri {10}pkcs11:token=by-hand;id=%[0-9a-f%]+;type=private\?pin-source=file:/m);

  // The token without a target, wired by hand with the URI status printed.
  const byHandChain = path.join(dir, 'by-hand.pem');
  fs.writeFileSync(byHandChain, byHandCert + tc.ca.certPem);
  fs.writeFileSync(path.join(etc, 'by-hand-manual.conf'), `ssl_certificate ${byHandChain};\nssl_certificate_key "engine:pkcs11:${byLabel.get('by-hand')!.uris[0]}";\n`);
  const port = await freePort();
  const prefix = path.join(dir, 'nginx');
  fs.mkdirSync(path.join(prefix, 'tmp'), { recursive: true });
  const site = (name: string, include: string) => `  server {\n    listen 127.0.0.1:${port} ssl;\n    server_name ${name}.test;\n    include ${include};\n    location / { return 200 "${name}\\n"; }\n  }\n`;
  fs.writeFileSync(path.join(prefix, 'nginx.conf'), `daemon off;\nworker_processes 1;\nerror_log ${prefix}/error.log notice;\npid ${prefix}/nginx.pid;\nssl_engine pkcs11;\nenv NITRO_ACM_KEY_ADDRESS;\nevents { worker_connections 64; }\nhttp {\n  access_log off;\n  client_body_temp_path ${prefix}/tmp;\n${site('nginx-acm-token', `${etc}/nginx-acm.conf`)}${site('filedb', `${etc}/filedb.conf`)}${site('by-hand', `${etc}/by-hand-manual.conf`)}}\n`);
  nginx = await launchNginx({ prefix, conf: path.join(prefix, 'nginx.conf'), port, env: { NITRO_ACM_KEY_ADDRESS: service.agent.enclaveEndpoints!.keyAddress } });
  for (const [name, cert] of [['nginx-acm-token', exampleCert], ['filedb', first.certPem], ['by-hand', byHandCert]]) {
    const h = await handshake(port, { servername: `${name}.test`, ca: tc.ca.certPem, timeoutMs: 5000 });
    t.is(h.fingerprint256, fingerprintOf(cert), `${name} serves its certificate with its key in the enclave`);
    t.true(h.body.endsWith(`\r\n\r\n${name}\n`), h.body);
  }
});

test.serial("AWS's httpd example served by real Apache httpd", async (t) => {
  const etc = path.join(dir, 'etc-httpd');
  fs.mkdirSync(etc);
  const arn = 'arn:aws:acm:us-east-1:123456789012:certificate/aws-example-httpd';
  const cert = await tc.publish(tc.cloud.bucket(), tc.acmKey(arn), ['httpd-acm-token.test']);
  const configFile = path.join(dir, 'acm-httpd.yaml');
  fs.writeFileSync(configFile, adapt('acm-httpd.example.yaml', etc));
  const socket = path.join(dir, 'agent-httpd.sock');
  let httpd: RunningServer | undefined;
  const controller = tc.controller() // the same address: the agent's PKCS#11 module talks to one enclave a process;
  const service = await startService({ configFile, controller: () => controller, endpoints: tc.endpoints, controlSocket: socket, reload: async () => { httpd?.reload(); } });
  t.teardown(async () => { await stopAll(httpd, service); await service.agent.stop(); });
  t.is(service.agent.tokens.get('httpd-acm-token')!.state, 'serving');
  const port = await freePort();
  httpd = await startHttpd({ dir: path.join(dir, 'httpd'), port, env: { NITRO_ACM_KEY_ADDRESS: service.agent.enclaveEndpoints!.keyAddress }, sites: [{ serverName: 'httpd-acm-token.test', include: `${etc}/httpd-acm.conf` }] });
  const h = await handshake(port, { servername: 'httpd-acm-token.test', ca: tc.ca.certPem, timeoutMs: 5000 });
  t.is(h.fingerprint256, fingerprintOf(cert));
});

test('a bad FileDb is refused naming the file, the entry and the field', async (t) => {
  const { parseFileDb } = await import('../shared/bundle.ts');
  const { readFileDb } = await import('../src/agent/source.ts');
  t.throws(() => parseFileDb('{"id": 1}', 'db.json'), { message: /^db\.json: expected a JSON array of keys/ });
  t.throws(() => parseFileDb('[]', 'db.json'), { message: 'db.json: 0 keys; a token holds 1 to 16' });
  t.throws(() => parseFileDb('[{"id": 256, "label": "k", "encrypted_pem_b64": "AAAA"}]', 'db.json'), { message: /^db\.json: key \[0\]: "id" must be an integer 0\.\.255/ });
  t.throws(() => parseFileDb('[{"id": 1, "label": "k", "encrypted_pem_b64": "AAAA"}, {"id": 2, "label": "k2", "encrypted_pem_b64": "%%"}]', 'db.json'), { message: /^db\.json: key \[1\]: "encrypted_pem_b64" must be base64/ });
  t.throws(() => parseFileDb('[{"id": 1, "label": "k", "encrypted_pem_b64": "AAAA", "cert_pem": "nope"}]', 'db.json'), { message: /^db\.json: key \[0\]: "cert_pem" is not a PEM certificate/ });
  t.throws(() => readFileDb(path.join(dir, 'missing.json')), { message: `${path.join(dir, 'missing.json')}: cannot read the FileDb: no such file` });
  t.throws(() => readFileDb(dir), { message: `${dir}: the FileDb is not a regular file` });
});

test('a FileDb key without a certificate cannot be a target: the error says what to do, and nothing is written', async (t) => {
  const { writeTarget } = await import('../src/agent/targets.ts');
  const etc = path.join(dir, 'etc-nocert');
  fs.mkdirSync(etc);
  t.throws(() => writeTarget({ kind: 'NginxStanza', path: `${etc}/x.conf` }, { label: 'x', source: 'FileDb /db.json', pin: '0123456789abcdef', ckaId: Buffer.from([1]), chainPem: '' }), { message: /x\.conf: the token's first key has no certificate \(its FileDb entry has no cert_pem\).*leave target out/ });
  t.deepEqual(fs.readdirSync(etc), []);
});
