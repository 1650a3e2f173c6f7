// The agent's Prometheus metrics (issue 16 part 3) and the same figures in
// `nitro-acm status`: a scrape after signing through PKCS#11 shows the counts
// rising by exactly what was done, the latency histogram counting the same
// operations, the certificate's expiry, the token's state, the enclave up and
// attested, the reloads and the provisioning time; a killed enclave shows as a
// restart. The text is read back with a parser of the exposition format, so a
// malformed line fails the test.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import pkcs11js from 'pkcs11js';
import { startService } from '../src/agent/service.ts';
import { parseConfig, ConfigError } from '../src/agent/config.ts';
import { freePort } from '../src/local/webservers.ts';
import { formatStatus } from '../src/commands/status.ts';
import { tmpdir, MODULE_PATH } from './helpers/enclave.ts';
import { startTestCloud, type TestCloud } from './helpers/cloud.ts';
import { slotFor } from './helpers/pkcs11.ts';

const dir = tmpdir('metrics');
let tc: TestCloud;
test.before(async () => { tc = await startTestCloud(dir); });
test.after.always(async () => { await tc?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });

const get = (url: string) => new Promise<{ status: number; type: string; body: string }>((resolve, reject) => {
  http.get(url, (res) => { let body = ''; res.on('data', (d) => { body += d; }); res.on('end', () => resolve({ status: res.statusCode!, type: String(res.headers['content-type']), body })); }).on('error', reject);
});

/** Prometheus text exposition, parsed strictly: every sample line is `name{labels} value`, and every name has a TYPE. */
function parseExposition(text: string): { types: Map<string, string>; sample(name: string, labels?: Record<string, string>): number | undefined } {
  const types = new Map<string, string>();
  const samples: { name: string; labels: Record<string, string>; value: number }[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const typed = /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (typed) { types.set(typed[1], typed[2]); continue; }
    if (line.startsWith('# HELP ')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`not an exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    const base = m[1].replace(/_(bucket|sum|count)$/, '');
    if (!types.has(m[1]) && !types.has(base)) throw new Error(`sample without a TYPE: ${line}`);
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return {
    types,
    sample: (name, labels = {}) => samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value,
  };
}

test.serial('metrics: a scrape after signing shows the counts rising; status shows the same figures; a killed enclave is a restart', async (t) => {
  const label = 'metrics-token';
  const cert = await tc.publish(tc.cloud.bucket(), 'bundles/metrics.json', ['metrics.test']);
  const port = await freePort();
  const configFile = path.join(dir, 'acm.yaml');
  const etc = path.join(dir, 'etc');
  fs.mkdirSync(etc, { recursive: true });
  fs.writeFileSync(configFile, `options:\n  metrics_address: 127.0.0.1:${port}\ntokens:\n  - label: ${label}\n    pin: "metrics-pin-0123456789"\n    source:\n      S3:\n        uri: "s3://${tc.cloud.bucket()}/bundles/metrics.json"\n    target:\n      NginxStanza:\n        path: ${etc}/metrics.conf\n`);
  const controller = tc.controller();
  let reloads = 0;
  const service = await startService({ configFile, controller: () => controller, endpoints: tc.endpoints, controlSocket: false, healthIntervalMs: 300, reload: async () => { reloads++; } });
  t.teardown(async () => { await service.stop(); await service.agent.stop(); });
  t.is(service.metricsUrl, `http://127.0.0.1:${port}/metrics`);

  const first = await get(service.metricsUrl!);
  t.is(first.status, 200);
  t.regex(first.type, /^text\/plain; version=0\.0\.4/);
  const m0 = parseExposition(first.body);
  t.is(m0.types.get('nitro_acm_operations_total'), 'counter');
  t.is(m0.types.get('nitro_acm_operation_duration_seconds'), 'histogram');
  t.is(m0.sample('nitro_acm_enclave_up'), 1);
  t.is(m0.sample('nitro_acm_attestation_check_ok'), 1);
  t.true(Math.abs(m0.sample('nitro_acm_attestation_check_timestamp_seconds')! - Date.now() / 1000) < 60, 'the last attestation check is recent');
  t.is(m0.sample('nitro_acm_token_state', { token: label, state: 'serving' }), 1);
  t.is(m0.sample('nitro_acm_token_state', { token: label, state: 'failed' }), 0);
  t.is(m0.sample('nitro_acm_token_in_enclave', { token: label }), 1);
  t.is(m0.sample('nitro_acm_certificate_not_after_seconds', { token: label }), Date.parse(new crypto.X509Certificate(cert).validTo) / 1000);
  t.true(m0.sample('nitro_acm_token_last_sync_timestamp_seconds', { token: label })! > Date.now() / 1000 - 60);
  t.is(m0.sample('nitro_acm_web_server_reloads_total', { result: 'ok' }), reloads);
  t.is(m0.sample('nitro_acm_enclave_restarts_total'), 0);
  t.is(m0.sample('nitro_acm_provisioning_duration_seconds_count', { operation: 'add' }), 1);
  const signsBefore = m0.sample('nitro_acm_operations_total', { token: label, operation: 'sign', result: 'ok' })!;
  t.true(signsBefore >= 1, 'the agent\'s own challenge signature is counted');

  // 25 signatures and one decryption the key refuses, through the real module.
  process.env.NITRO_ACM_KEY_ADDRESS = service.agent.enclaveEndpoints!.keyAddress;
  const p11 = new pkcs11js.PKCS11();
  p11.load(MODULE_PATH);
  // The agent's challenge has this module loaded and initialized in this process already.
  try { p11.C_Initialize(); } catch (e) { if ((e as { code?: number }).code !== pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED) throw e; }
  const s = p11.C_OpenSession(slotFor(p11, label), pkcs11js.CKF_SERIAL_SESSION);
  p11.C_Login(s, pkcs11js.CKU_USER, 'metrics-pin-0123456789');
  p11.C_FindObjectsInit(s, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY }]);
  const [key] = p11.C_FindObjects(s, 1);
  p11.C_FindObjectsFinal(s);
  for (let i = 0; i < 25; i++) {
    p11.C_SignInit(s, { mechanism: pkcs11js.CKM_SHA256_RSA_PKCS }, key);
    p11.C_Sign(s, Buffer.from(`message ${i}`), Buffer.alloc(256));
  }
  p11.C_DecryptInit(s, { mechanism: pkcs11js.CKM_RSA_PKCS }, key);
  t.throws(() => p11.C_Decrypt(s, Buffer.alloc(256, 7), Buffer.alloc(256)), undefined, 'a ciphertext that is no PKCS#1 block does not decrypt');

  await new Promise((r) => setTimeout(r, 1100)); // past the scrape cache
  const m1 = parseExposition((await get(service.metricsUrl!)).body);
  t.is(m1.sample('nitro_acm_operations_total', { token: label, operation: 'sign', result: 'ok' }), signsBefore + 25, 'every signature counted once');
  t.is(m1.sample('nitro_acm_operations_total', { token: label, operation: 'decrypt', result: 'failed' }), 1, 'the refused decryption counted as failed');
  t.is(m1.sample('nitro_acm_operations_total', { token: label, operation: 'decrypt', result: 'ok' }), 0);
  const count = m1.sample('nitro_acm_operation_duration_seconds_count', { token: label })!;
  t.is(count, signsBefore + 26, 'the latency histogram counts the same operations');
  t.is(m1.sample('nitro_acm_operation_duration_seconds_bucket', { token: label, le: '+Inf' }), count);
  const sum = m1.sample('nitro_acm_operation_duration_seconds_sum', { token: label })!;
  t.true(sum > 0 && sum / count < 0.1, `mean latency ${(sum / count * 1e6).toFixed(0)} us is plausible for RSA-2048`);
  t.true(m1.sample('nitro_acm_operation_duration_seconds_bucket', { token: label, le: '0.00005' })! <= m1.sample('nitro_acm_operation_duration_seconds_bucket', { token: label, le: '0.1' })!, 'buckets are cumulative');

  // nitro-acm status shows the same figures.
  const text = formatStatus({ ...(await service.agent.status()), configFile, socket: 'test' });
  t.regex(text, new RegExp(`operations {3}${signsBefore + 25} signatures, 0 decryptions \\(1 failed\\); p50 <= \\S+ \\S+, p99 <= \\S+ \\S+ \\(since the enclave started\\)`));
  t.regex(text, /since the agent started: 0 enclave restart\(s\), \d+ web-server reload\(s\)/);

  // The enclave killed: a restart, counted; its counts start again from zero (a Prometheus counter reset).
  await controller.process!.stop('SIGKILL');
  const t0 = Date.now();
  let m2 = parseExposition((await get(service.metricsUrl!)).body);
  while (m2.sample('nitro_acm_enclave_restarts_total') !== 1 || m2.sample('nitro_acm_token_in_enclave', { token: label }) !== 1) {
    if (Date.now() - t0 > 30_000) { t.fail('no restart seen in the metrics within 30 s'); break; }
    await new Promise((r) => setTimeout(r, 300));
    m2 = parseExposition((await get(service.metricsUrl!)).body);
  }
  t.is(m2.sample('nitro_acm_enclave_up'), 1);
  t.true(m2.sample('nitro_acm_operations_total', { token: label, operation: 'sign', result: 'ok' })! < signsBefore + 25, 'the new enclave counts from zero');

  // Anything but GET /metrics is refused; garbage, oversized headers and a flood of idle connections get nowhere.
  t.is((await get(service.metricsUrl!.replace('/metrics', '/'))).status, 404);
  const rawReply = (bytes: string | Buffer) => new Promise<string>((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let text = '';
    s.on('data', (d) => { text += d; });
    s.on('close', () => resolve(text));
    s.on('error', () => resolve(text));
    s.end(bytes);
  });
  t.regex(await rawReply(crypto.randomBytes(2000)), /^(HTTP\/1\.1 400|$)/, 'random bytes: a 400 or a closed connection');
  t.regex(await rawReply(`GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(64 * 1024)}\r\n\r\n`), /^HTTP\/1\.1 431/, 'headers over 16 KiB: 431');
  t.regex(await rawReply('POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 404/);
  const idle = await Promise.all(Array.from({ length: 40 }, () => new Promise<net.Socket>((resolve) => { const s = net.connect(port, '127.0.0.1', () => resolve(s)); s.on('error', () => resolve(s)); })));
  await new Promise((r) => setTimeout(r, 200));
  for (const s of idle) s.destroy();
  await new Promise((r) => setTimeout(r, 200));
  t.is((await get(service.metricsUrl!)).status, 200, 'serving again once a flood of idle connections is gone');
});

test('metrics: options.metrics_address is host:port, and a bad one names the line', (t) => {
  for (const good of ['127.0.0.1:9633', 'localhost:9633', '[::1]:9633', '0.0.0.0:1']) t.is(parseConfig(`options:\n  metrics_address: "${good}"\n`, 'acm.yaml').options.metrics_address, good);
  for (const bad of ['9633', '127.0.0.1', '127.0.0.1:0', '127.0.0.1:70000', 'http://127.0.0.1:9633/metrics']) {
    const e = t.throws(() => parseConfig(`options:\n  service: nginx\n  metrics_address: "${bad}"\n`, 'acm.yaml'), { instanceOf: ConfigError });
    t.regex(e!.message, new RegExp(`^acm\\.yaml:3:\\d+: options\\.metrics_address: "${bad.replace(/[.:/[\]]/g, '\\$&')}" is not host:port`));
  }
  t.is(parseConfig('options:\n  service: nginx\n', 'acm.yaml').options.metrics_address, undefined, 'off unless set');
});

test.serial('metrics: an address the agent cannot listen on is an error in the log, and the agent serves on', async (t) => {
  const blocker = http.createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', () => r()));
  t.teardown(() => blocker.close());
  const port = (blocker.address() as { port: number }).port;
  const cert = await tc.publish(tc.cloud.bucket(), 'bundles/metrics2.json', ['metrics2.test']);
  t.truthy(cert);
  const configFile = path.join(dir, 'acm-taken.yaml');
  fs.writeFileSync(configFile, `options:\n  metrics_address: 127.0.0.1:${port}\ntokens:\n  - label: metrics-two\n    source:\n      S3:\n        uri: "s3://${tc.cloud.bucket()}/bundles/metrics2.json"\n`);
  const controller = tc.controller(); // the same key address: one process loads the module once
  const lines: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: never[]) => { lines.push(String(chunk)); return write(chunk, ...rest); }) as typeof process.stderr.write;
  let service;
  try {
    service = await startService({ configFile, controller: () => controller, endpoints: tc.endpoints, controlSocket: false, reload: async () => {} });
  } finally { process.stderr.write = write; }
  t.teardown(async () => { await service?.stop(); await service?.agent.stop(); });
  t.is(service.metricsUrl, undefined);
  t.is(service.agent.tokens.get('metrics-two')!.state, 'serving', service.agent.tokens.get('metrics-two')!.error);
  t.true(lines.some((l) => l.includes(`metrics: cannot listen on 127.0.0.1:${port}`) && l.includes('EADDRINUSE')), lines.join(''));
});
