// acm.yaml: AWS's files load as they are; every mistake is reported with file,
// line and column and what was expected; the example configurations are valid.
import test from 'ava';
import path from 'node:path';
import fs from 'node:fs';
import os from 'node:os';
import { spawnSync } from 'node:child_process';
import { parseConfig, loadConfig, ConfigError, configWarnings } from '../src/agent/config.ts';
import { ROOT } from './helpers/enclave.ts';

test('the shipped examples load, with AWS defaults filled in', (t) => {
  const c = loadConfig(path.join(ROOT, 'config/acm.example.yaml'));
  t.is(c.options.sync_interval_secs, 600);
  t.is(c.enclave.p11kit_port, 9999);
  t.is(c.tokens[0].label, 'nginx-acm-token');
  t.is(c.tokens[0].refresh_interval_secs, 43200);
  t.deepEqual(c.tokens[0].target, { NginxStanza: { path: '/etc/pki/nginx/nginx-acm.conf', user: 'nginx' } });
  const h = loadConfig(path.join(ROOT, 'config/acm-httpd.example.yaml'));
  t.is(h.options.service, 'httpd');
  t.is(h.enclave.boot_timeout_ms, 5000);
});

test("the user guide's two-token nginx file (with its nginx_ aliases) loads", (t) => {
  const c = parseConfig(`
options:
  nginx_force_start: true
  nginx_reload_wait_ms: 2000
tokens:
  - label: nginx-acm-token
    source:
      Acm:
        certificate_arn: "arn:aws:acm:us-east-1:123456789012:certificate/d4c3b2a1-e5d0-4d51-95d9-1927fEXAMPLE"
    target:
      NginxStanza:
        path: /etc/pki/nginx/nginx-acm.conf
        user: nginx
  - label: token_2_name
    source:
      Acm:
        certificate_arn: "arn:aws:acm:us-east-1:123456789012:certificate/00000000-0000-0000-0000-000000000002"
    target:
      NginxStanza:
        path: /etc/pki/nginx/nginx-acm-2.conf
        user: nginx
`, 'acm.yaml');
  t.is(c.tokens.length, 2);
  t.true(c.options.force_start);
  t.is(c.options.reload_wait_ms, 2000);
});

const token = (extra = '', label = 'www') => `
  - label: ${label}
    source:
      Acm:
        certificate_arn: "arn:aws:acm:us-east-1:123456789012:certificate/abc"
    target:
      NginxStanza:
        path: /etc/nginx/acm.conf
${extra}`;

for (const [name, text, where, message] of [
  ['broken YAML', 'tokens:\n  - label: [x\n', '3:1', /YAML: Flow sequence .* must .* end with a \]/],
  ['a wrong type', 'options:\n  sync_interval_secs: often\n', '2:23', /options\.sync_interval_secs: expected an integer, got "often"/],
  ['a negative number', 'enclave:\n  cpu_count: -1\n', '2:14', /enclave\.cpu_count: -1 is outside 0\.\.9007199254740991/],
  ['a port over 32 bits', 'enclave:\n  rpc_port: 4294967296\n', '2:13', /enclave\.rpc_port: 4294967296 is outside 0\.\.4294967295/],
  ['a log level AWS does not have', 'log:\n  level: Verbose\n', '2:10', /log\.level: "Verbose" is not one of Error, Warn, Info, Debug, Trace \(or the same in lowercase\)$/],
  ['an unknown source kind', 'tokens:\n  - label: a\n    source:\n      File: {path: /x}\n', '4:7', /unknown kind "File" \(expected Acm or S3 or FileDb\)/],
  ['a duplicate label', `tokens:${token()}${token()}`, '10:12', /tokens\[1\]\.label: "www" is already the label of the token at line 2/],
  ['a label over 32 bytes', `tokens:${token('', 'x'.repeat(33))}`, '2:12', /33 bytes; a PKCS#11 token label is at most 32/],
  ['an empty PIN', `tokens:${token('    pin: ""\n')}`, '9:10', /tokens\[0\]\.pin: 0 bytes; a PIN is 1 to 255 bytes/],
  ['a PIN over 255 bytes', `tokens:${token(`    pin: ${'7'.repeat(256)}\n`)}`, '9:10', /tokens\[0\]\.pin: 256 bytes; a PIN is 1 to 255 bytes/],
  ['a relative path', 'tokens:\n  - label: a\n    source:\n      S3:\n        uri: s3://b/k\n    target:\n      Conf:\n        path: conf/acm.conf\n', '8:15', /tokens\[0\]\.target\.Conf\.path: "conf\/acm\.conf" is a relative path/],
  ['a missing certificate ARN', 'tokens:\n  - label: a\n    source:\n      Acm:\n        bucket: prod\n    target:\n      Conf:\n        path: /x\n', '5:9', /tokens\[0\]\.source\.Acm: missing certificate_arn/],
  ['a malformed certificate ARN', 'tokens:\n  - label: a\n    source:\n      Acm:\n        certificate_arn: abc\n    target:\n      Conf:\n        path: /x\n', '4:7', /is not an ACM certificate ARN/],
  ['two sources', 'tokens:\n  - label: a\n    source:\n      Acm: {certificate_arn: x}\n      S3: {uri: s3://b/k}\n    target:\n      Conf: {path: /x}\n', '4:7', /expected exactly one of Acm or S3/],
  ['a missing source', 'tokens:\n  - label: a\n', '2:5', /tokens\[0\]: missing source \(Acm: \{certificate_arn\}, S3: \{uri\} or FileDb: \{path\}\)/],
  ['a relative FileDb path', 'tokens:\n  - label: a\n    source:\n      FileDb: {path: keys.json}\n', '4:22', /tokens\[0\]\.source\.FileDb\.path: "keys\.json" is a relative path/],
  ['an unknown service', 'options:\n  service: caddy\n', '2:12', /"caddy" is not one of nginx, httpd/],
] as const) {
  test(`error for ${name} names file, line, column and what was expected`, (t) => {
    const e = t.throws(() => parseConfig(text, '/etc/nitro_enclaves/acm.yaml'), { instanceOf: ConfigError });
    t.true(e!.message.startsWith(`/etc/nitro_enclaves/acm.yaml:${where}`), e!.message);
    t.regex(e!.message, message);
  });
}

// AWS's agent (serde) skips keys it does not know and takes any integer of the
// field's width: so does nitro-acm, with a note naming the line, so that every
// file it accepts loads here too.
test('unknown keys are ignored as AWS ignores them, each noted with its line', (t) => {
  const c = parseConfig(`enclave:\n  cpus: 2\ntokenz: []\ntokens:${token('    refresh_intervall_secs: 60\n')}`, '/etc/nitro_enclaves/acm.yaml');
  t.is(c.enclave.cpu_count, 2);
  t.is(c.tokens[0].refresh_interval_secs, 43_200);
  t.deepEqual(c.notes, [
    '/etc/nitro_enclaves/acm.yaml:2: enclave: unknown key "cpus" is ignored (known: cpu_count, memory_mib, image_path, boot_timeout_ms, p11kit_port, rpc_port, attestation_retry_count, attestation_check_every)',
    '/etc/nitro_enclaves/acm.yaml:3: top level: unknown key "tokenz" is ignored (known: enclave, log, options, tokens)',
    '/etc/nitro_enclaves/acm.yaml:12: tokens[0]: unknown key "refresh_intervall_secs" is ignored (known: label, pin, source, target, refresh_interval_secs)',
  ]);
});

test('a number AWS takes but nitro-acm cannot work with is brought into range, with a note', (t) => {
  const c = parseConfig(`enclave:\n  cpu_count: 0\noptions:\n  sync_interval_secs: 1\ntokens:${token('    refresh_interval_secs: 0\n')}`, 'acm.yaml');
  t.is(c.enclave.cpu_count, 1);
  t.is(c.options.sync_interval_secs, 10);
  t.is(c.tokens[0].refresh_interval_secs, 60);
  t.deepEqual(c.notes, [
    'acm.yaml:2: enclave.cpu_count: 0 is outside what nitro-acm works with (1..64); using 1',
    'acm.yaml:4: options.sync_interval_secs: 1 is outside what nitro-acm works with (10..604800); using 10',
    'acm.yaml:13: tokens[0].refresh_interval_secs: 0 is outside what nitro-acm works with (60..172800); using 60',
  ]);
});

test("log.level in AWS's spelling (Error..Trace) and in lowercase", (t) => {
  for (const [given, read] of [['Error', 'error'], ['Warn', 'warn'], ['Info', 'info'], ['Debug', 'debug'], ['Trace', 'trace'], ['trace', 'trace'], ['info', 'info']]) {
    t.is(String(parseConfig(`log:\n  level: ${given}\n`, 'acm.yaml').log.level), read, given);
  }
});

test("defaults are AWS's: force_start on, no timestamps, 12 h refresh, the prod bucket", (t) => {
  const c = parseConfig(`enclave:\n  cpu_count: 2\n  memory_mib: 256\ntokens:${token()}`, 'acm.yaml');
  t.true(c.options.force_start);
  t.false(c.log.enable_timestamp);
  t.is(c.log.level, 'info');
  t.is(c.options.reload_wait_ms, 1000);
  t.is(c.options.sync_interval_secs, 600);
  t.is(c.tokens[0].refresh_interval_secs, 43_200);
  t.deepEqual(c.enclave, { cpu_count: 2, memory_mib: 256, image_path: '/usr/share/nitro_enclaves/nitro-acm/nitro-acm.eif', boot_timeout_ms: 5000, p11kit_port: 9999, rpc_port: 10000, attestation_retry_count: 5, attestation_check_every: 1 });
  t.is(c.options.service, 'nginx');
});

test('a token without a target, a FileDb source, and scalars AWS reads as strings', (t) => {
  const c = parseConfig(`tokens:
  - label: 2024
    pin: 0123456789
    source:
      FileDb:
        path: /etc/nitro_enclaves/keys.json
  - label: s3-only
    source:
      S3: {uri: "s3://bucket/key.json"}
    target: ~
`, 'acm.yaml');
  t.is(c.tokens[0].label, '2024');
  t.is(c.tokens[0].pin, '0123456789', 'the PIN as written, leading zero kept');
  t.deepEqual(c.tokens[0].source, { FileDb: { path: '/etc/nitro_enclaves/keys.json' } });
  t.is(c.tokens[0].target, undefined);
  t.is(c.tokens[1].target, undefined);
  t.deepEqual(c.notes, []);
});

test('enclave.memory_mib below what the image needs: agent --check warns with the figure to set, from the EIF size', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nitro-acm-memory-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const eif = path.join(dir, 'nitro-acm.eif');
  fs.writeFileSync(eif, '');
  fs.truncateSync(eif, 110 * 1048576); // sparse: the size of a nitro-acm EIF (101 MiB image, kernel and init)
  const file = path.join(dir, 'acm.yaml');
  const write = (mib: number, tokens = 1) => fs.writeFileSync(file, `enclave:\n  cpu_count: 2\n  memory_mib: ${mib}\n  image_path: ${eif}\ntokens:\n${Array.from({ length: tokens }, (_, i) => `  - label: t${i}\n    source:\n      S3:\n        uri: s3://b/k${i}.json\n    target:\n      NginxStanza:\n        path: /etc/pki/nginx/nitro-acm/t${i}.conf\n`).join('')}`);
  write(256); // AWS's example value
  const r = spawnSync(path.join(ROOT, 'bin/nitro-acm'), ['agent', '--check', '--config', file], { encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  t.regex(r.stderr, new RegExp(`warning: ${file}: enclave\\.memory_mib is 256: nitro-cli refuses less than 4 times the image \\(110 MiB: at least 440 MiB, error E26\\); the agent starts the enclave with 448 MiB instead\\. Set memory_mib: 448`));
  write(512);
  t.deepEqual(configWarnings(loadConfig(file), file), []);
  write(512, 1000); // 1,000 tokens still fit 512 MiB
  t.deepEqual(configWarnings(loadConfig(file), file), []);
  write(448, 1024);
  t.deepEqual(configWarnings(loadConfig(file), file), [], 'the floor dominates up to the token cap');
  // No image here: nothing can be said, nothing is warned.
  fs.rmSync(eif);
  write(256);
  t.deepEqual(configWarnings(loadConfig(file), file), []);
});

test('options.sync_concurrency: 48 by default, 1..64, apart from provision_concurrency, a number outside brought into range with a note', (t) => {
  const d = parseConfig('options:\n  provision_concurrency: 4\n', 'acm.yaml');
  t.is(d.options.sync_concurrency, 48);
  t.is(d.options.provision_concurrency, 4);
  t.is(parseConfig('options:\n  sync_concurrency: 8\n', 'acm.yaml').options.sync_concurrency, 8);
  const low = parseConfig('options:\n  sync_concurrency: 0\n', 'acm.yaml');
  t.is(low.options.sync_concurrency, 1);
  t.deepEqual(low.notes, ['acm.yaml:2: options.sync_concurrency: 0 is outside what nitro-acm works with (1..64); using 1']);
  t.throws(() => parseConfig('options:\n  sync_concurrency: -3x\n', 'acm.yaml'), { instanceOf: ConfigError, message: /^acm\.yaml:2:21: options\.sync_concurrency: expected an integer/ });
});

test('options.provision_concurrency: 16 by default, 1..64, a number outside brought into range with a note', (t) => {
  t.is(parseConfig('options:\n  service: nginx\n', 'acm.yaml').options.provision_concurrency, 16);
  t.is(parseConfig('options:\n  provision_concurrency: 4\n', 'acm.yaml').options.provision_concurrency, 4);
  const high = parseConfig('options:\n  provision_concurrency: 500\n', 'acm.yaml');
  t.is(high.options.provision_concurrency, 64);
  t.deepEqual(high.notes, ['acm.yaml:2: options.provision_concurrency: 500 is outside what nitro-acm works with (1..64); using 64']);
  t.throws(() => parseConfig('options:\n  provision_concurrency: many\n', 'acm.yaml'), { instanceOf: ConfigError, message: 'acm.yaml:2:26: options.provision_concurrency: expected an integer, got "many"' });
});
