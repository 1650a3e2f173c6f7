// acm.yaml: AWS's files load as they are; every mistake is reported with file,
// line and column and what was expected; the example configurations are valid.
import test from 'ava';
import path from 'node:path';
import { parseConfig, loadConfig, ConfigError } from '../src/agent/config.ts';
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
  ['an unknown key', 'enclave:\n  cpus: 2\n', '2:3', /enclave: unknown key "cpus" \(expected one of: cpu_count/],
  ['an unknown top-level key', 'tokenz: []\n', '1:1', /unknown key "tokenz"/],
  ['a wrong type', 'options:\n  sync_interval_secs: often\n', '2:23', /options\.sync_interval_secs: expected an integer, got "often"/],
  ['a number out of range', 'enclave:\n  cpu_count: 0\n', '2:14', /enclave\.cpu_count: 0 is outside 1\.\.64/],
  ['a duplicate label', `tokens:${token()}${token()}`, '10:12', /tokens\[1\]\.label: "www" is already the label of the token at line 2/],
  ['a label over 32 bytes', `tokens:${token('', 'x'.repeat(33))}`, '2:12', /33 bytes; a PKCS#11 token label is at most 32/],
  ['a short PIN', `tokens:${token('    pin: "123"\n')}`, '9:10', /tokens\[0\]\.pin: 3 bytes; a PIN is 4 to 64 bytes/],
  ['a relative path', 'tokens:\n  - label: a\n    source:\n      S3:\n        uri: s3://b/k\n    target:\n      Conf:\n        path: conf/acm.conf\n', '8:15', /tokens\[0\]\.target\.Conf\.path: "conf\/acm\.conf" is a relative path/],
  ['a missing certificate ARN', 'tokens:\n  - label: a\n    source:\n      Acm:\n        bucket: prod\n    target:\n      Conf:\n        path: /x\n', '5:9', /tokens\[0\]\.source\.Acm: missing certificate_arn/],
  ['a malformed certificate ARN', 'tokens:\n  - label: a\n    source:\n      Acm:\n        certificate_arn: abc\n    target:\n      Conf:\n        path: /x\n', '4:7', /is not an ACM certificate ARN/],
  ['two sources', 'tokens:\n  - label: a\n    source:\n      Acm: {certificate_arn: x}\n      S3: {uri: s3://b/k}\n    target:\n      Conf: {path: /x}\n', '4:7', /expected exactly one of Acm or S3/],
  ['a missing target', 'tokens:\n  - label: a\n    source:\n      S3: {uri: "s3://b/k"}\n', '2:5', /tokens\[0\]: missing target/],
  ['an unknown service', 'options:\n  service: caddy\n', '2:12', /"caddy" is not one of nginx, httpd/],
] as const) {
  test(`error for ${name} names file, line, column and what was expected`, (t) => {
    const e = t.throws(() => parseConfig(text, '/etc/nitro_enclaves/acm.yaml'), { instanceOf: ConfigError });
    t.true(e!.message.startsWith(`/etc/nitro_enclaves/acm.yaml:${where}`), e!.message);
    t.regex(e!.message, message);
  });
}
