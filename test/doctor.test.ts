// nitro-acm doctor on installs broken the ways they break in practice: no
// "ssl_engine pkcs11;", a stanza included nowhere or outside a server block, the
// agent not running, files missing, Amazon Linux 2023 without the engine in
// openssl.cnf. Each finding names the problem and its fix; a good install is in
// test/local-mode.test.ts.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { doctor, nginxDirectives } from '../src/commands/doctor.ts';
import { registerWithP11Kit, P11KIT_MODULE_FILE } from '../src/local/p11kit.ts';
import { cli } from './helpers/cli.ts';
import { tmpdir } from './helpers/enclave.ts';

const dir = tmpdir('doctor');
// p11-kit must list the module (other tests write the same file; keep theirs).
test.before(() => { if (!fs.existsSync(P11KIT_MODULE_FILE)) registerWithP11Kit(); });
test.after.always(() => fs.rmSync(dir, { recursive: true, force: true }));

function nginxConf(name: string, body: { top?: string; http?: string; server?: string }): string {
  const prefix = path.join(dir, name);
  fs.mkdirSync(prefix, { recursive: true });
  const file = path.join(prefix, 'nginx.conf');
  fs.writeFileSync(file, `error_log ${prefix}/error.log;\npid ${prefix}/nginx.pid;\n${body.top ?? ''}\nevents {}\nhttp {\n  access_log off;\n  client_body_temp_path ${prefix};\n  proxy_temp_path ${prefix};\n  fastcgi_temp_path ${prefix};\n  uwsgi_temp_path ${prefix};\n  scgi_temp_path ${prefix};\n${body.http ?? ''}\n  server {\n    listen 127.0.0.1:1;\n${body.server ?? ''}\n  }\n}\n`);
  return file;
}

function acmYaml(stanzas: string[]): string {
  const file = path.join(dir, `acm-${stanzas.length}.yaml`);
  fs.writeFileSync(file, `tokens:\n${stanzas.map((s, i) => `  - label: t${i}\n    source:\n      S3:\n        uri: "s3://bucket/t${i}.json"\n    target:\n      NginxStanza:\n        path: ${s}\n`).join('')}`);
  return file;
}

test('nginx -T parsing: directives with the blocks they sit in, comments and quotes handled', (t) => {
  const ds = nginxDirectives('# configuration file /etc/nginx/nginx.conf:\nssl_engine pkcs11; # the engine\nhttp {\n server {\n  include "/etc/pki/nginx/a b.conf";\n }\n include /x.conf;\n}\n');
  t.deepEqual(ds, [
    { name: 'ssl_engine', args: ['pkcs11'], blocks: [] },
    { name: 'include', args: ['/etc/pki/nginx/a b.conf'], blocks: ['http', 'server'] },
    { name: 'include', args: ['/x.conf'], blocks: ['http'] },
  ]);
});

test('a broken nginx install: every problem found, each with its fix; exit 1', async (t) => {
  const notIncluded = path.join(dir, 'stanza-a.conf');
  const outside = path.join(dir, 'stanza-b.conf');
  for (const f of [notIncluded, outside]) fs.writeFileSync(f, '# written by nitro-acm\n');
  const conf = nginxConf('broken', { http: `  include ${outside};` });
  const osRelease = path.join(dir, 'os-release');
  fs.writeFileSync(osRelease, 'NAME="Amazon Linux"\nVERSION="2023"\nID="amzn"\nVERSION_ID="2023"\n');
  const opensslConf = path.join(dir, 'openssl.cnf');
  fs.writeFileSync(opensslConf, '[openssl_init]\nproviders = provider_sect\n');
  const f = await doctor({ configFile: acmYaml([notIncluded, outside]), socket: path.join(dir, 'no-agent.sock'), webServerConf: conf, opensslConf, osRelease });
  const byCheck = Object.fromEntries(f.map((x) => [x.check, x]));
  t.is(byCheck['nginx -t'].verdict, 'ok');
  t.is(byCheck.ssl_engine.verdict, 'fail');
  t.regex(byCheck.ssl_engine.detail, /no top-level "ssl_engine pkcs11;"/);
  t.regex(byCheck.ssl_engine.fix!, /add "ssl_engine pkcs11;" at the top level of .*nginx\.conf/);
  t.is(byCheck['stanza t0'].verdict, 'fail');
  t.regex(byCheck['stanza t0'].detail, /stanza-a\.conf is not included anywhere/);
  t.regex(byCheck['stanza t0'].fix!, /inside the server \{ \} block/);
  t.regex(byCheck['stanza t1'].detail, /stanza-b\.conf is included outside any server block \(in http\)/);
  t.is(byCheck['openssl.cnf'].verdict, 'fail', 'Amazon Linux 2023 needs the engine in openssl.cnf');
  t.regex(byCheck['openssl.cnf'].fix!, /engine_id = pkcs11/);
  t.is(byCheck['files t0'].verdict, 'fail');
  t.regex(byCheck['files t0'].detail, /stanza-a\.chain\.pem is missing; .*stanza-a\.pin is missing/);
  t.is(byCheck.agent.verdict, 'fail');
  t.regex(byCheck.agent.detail, /no-agent\.sock: no agent is running there/);
  t.regex(byCheck.agent.fix!, /systemctl start nitro-enclaves-acm/);

  // The same from the command line, as an operator runs it.
  const r = await cli(['doctor', '--config', acmYaml([notIncluded, outside]), '--socket', path.join(dir, 'no-agent.sock'), '--nginx-conf', conf]);
  t.is(r.status, 1);
  t.regex(r.stdout, /^FAIL {2}ssl_engine: .*\n {6}fix: add "ssl_engine pkcs11;"/m);
  t.regex(r.stdout, /\d+ problems found\n$/);
});

test('a correct nginx configuration passes the nginx checks; a broken acm.yaml is reported with its line', async (t) => {
  const stanza = path.join(dir, 'stanza-ok.conf');
  fs.writeFileSync(stanza, '# written by nitro-acm\n');
  const conf = nginxConf('good', { top: 'ssl_engine pkcs11;', server: `    include ${stanza};` });
  const f = await doctor({ configFile: acmYaml([stanza]), socket: path.join(dir, 'no-agent.sock'), webServerConf: conf });
  const byCheck = Object.fromEntries(f.map((x) => [x.check, x]));
  t.is(byCheck.ssl_engine.verdict, 'ok');
  t.is(byCheck['stanza t0'].verdict, 'ok');
  t.is(byCheck['openssl engine'].verdict, 'ok');
  t.is(byCheck['p11-kit'].verdict, 'ok');

  const bad = path.join(dir, 'bad.yaml');
  fs.writeFileSync(bad, 'tokens:\n  - label: x\n    pin: 12\n');
  const b = await doctor({ configFile: bad, socket: path.join(dir, 'no-agent.sock') });
  t.is(b.length, 1);
  t.is(b[0].verdict, 'fail');
  t.regex(b[0].detail, /bad\.yaml:3:\d+: /);
  t.regex(b[0].fix!, /nitro-acm agent --check --config .*bad\.yaml/);
});
