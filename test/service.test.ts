// The agent as a service: started from an acm.yaml file, it serves the token;
// a broken edit is reported with its line and column and ignored while the token
// keeps serving; a valid edit adding a token is applied without a restart.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { startService } from '../src/agent/service.ts';
import { tmpdir } from './helpers/enclave.ts';
import { startTestCloud, type TestCloud } from './helpers/cloud.ts';

const dir = tmpdir('service');
fs.chmodSync(dir, 0o755);
let tc: TestCloud;
test.before(async () => { tc = await startTestCloud(dir); });
test.after.always(async () => { await tc?.stop(); fs.rmSync(dir, { recursive: true, force: true }); });

test('service: serves acm.yaml, ignores a broken edit, applies a valid one', async (t) => {
  for (const name of ['one', 'two']) await tc.publish(tc.cloud.bucket(), `${name}.json`, [`${name}.test`]);
  const etc = path.join(dir, 'etc');
  fs.mkdirSync(etc);
  const file = path.join(dir, 'acm.yaml');
  const tokenYaml = (name: string) => `  - label: ${name}\n    source:\n      S3:\n        uri: "s3://${tc.cloud.bucket()}/${name}.json"\n    target:\n      NginxStanza:\n        path: ${etc}/${name}.conf\n`;
  fs.writeFileSync(file, `log:\n  level: info\ntokens:\n${tokenYaml('one')}`);
  let reloads = 0;
  const service = await startService({
    configFile: file,
    controller: () => tc.controller(),
    endpoints: tc.endpoints,
    controlSocket: path.join(dir, 'agent.sock'),
    reload: async () => { reloads++; },
  });
  t.teardown(async () => { await service.stop(); await service.agent.stop(); });
  t.is(service.agent.tokens.get('one')!.state, 'serving');
  t.true(fs.existsSync(`${etc}/one.conf`));
  t.is(reloads, 1);

  // A broken edit: reported, ignored, nothing stops.
  const stderr: string[] = [];
  const write = process.stderr.write.bind(process.stderr);
  (process.stderr as unknown as { write: (s: string) => boolean }).write = (s: string) => { stderr.push(String(s)); return write(s); };
  t.teardown(() => { (process.stderr as unknown as { write: typeof write }).write = write; });
  fs.writeFileSync(file, `tokens:\n${tokenYaml('one')}    pin: 12\n`);
  const until = Date.now() + 10_000;
  while (!stderr.join('').includes('edit is ignored') && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
  await service.idle();
  t.regex(stderr.join(''), new RegExp(`${file}:9:10: tokens\\[0\\]\\.pin: 2 bytes; a PIN is 4 to 64 bytes; the edit is ignored and everything keeps serving`));
  t.is(service.agent.tokens.get('one')!.state, 'serving');

  // A valid edit adding a token: applied without a restart.
  fs.writeFileSync(file, `tokens:\n${tokenYaml('one')}${tokenYaml('two')}`);
  const until2 = Date.now() + 15_000;
  while (service.agent.tokens.get('two')?.state !== 'serving' && Date.now() < until2) await new Promise((r) => setTimeout(r, 100));
  await service.idle();
  t.is(service.agent.tokens.get('two')?.state, 'serving');
  t.true(fs.existsSync(`${etc}/two.conf`));
  t.is(service.agent.tokens.get('one')!.state, 'serving');
  t.is(reloads, 2);
});

// The production reload: `systemctl reload <service>`; with force_start (AWS's
// nginx_force_start) a web server that is not running is started instead; the
// web server's configuration test runs first. A stand-in systemctl and nginx
// record what they are asked.
test.serial('systemReload: tests the configuration, reloads a running web server, starts a stopped one only with force_start, reports a failure', async (t) => {
  const bin = path.join(dir, 'bin');
  fs.mkdirSync(bin, { recursive: true });
  const calls = path.join(bin, 'calls');
  fs.writeFileSync(path.join(bin, 'systemctl'), `#!/bin/sh\necho "$*" >> ${calls}\ncase "$1" in\n  is-active) [ -e ${bin}/active ] && exit 0; exit 3;;\n  reload) [ -e ${bin}/active ] && exit 0; echo "nginx.service is not active, cannot reload." >&2; exit 1;;\nesac\nexit 0\n`, { mode: 0o755 });
  fs.writeFileSync(path.join(bin, 'nginx'), `#!/bin/sh\necho "nginx $*" >> ${calls}\nif [ -e ${bin}/broken ]; then echo '2026/12/01 10:00:36 [emerg] 4242#4242: unknown directive "ssl_certificat" in /etc/nginx/conf.d/site.conf:7' >&2; echo 'nginx: configuration file /etc/nginx/nginx.conf test failed' >&2; exit 1; fi\nexit 0\n`, { mode: 0o755 });
  const path0 = process.env.PATH;
  process.env.PATH = `${bin}:${path0}`;
  t.teardown(() => { process.env.PATH = path0; });
  const { systemReload } = await import('../src/agent/service.ts');
  const { parseConfig } = await import('../src/agent/config.ts');
  const config = (extra: string) => parseConfig(`options:\n  service: nginx\n${extra}tokens: []\n`, 'acm.yaml');
  const run = async (extra: string) => { fs.rmSync(calls, { force: true }); const r = await systemReload(config(extra)).then(() => 'ok', (e: Error) => e.message); return { r, calls: fs.readFileSync(calls, 'utf8').trim().split('\n') }; };

  fs.writeFileSync(path.join(bin, 'active'), '');
  t.deepEqual(await run('  nginx_force_start: true\n'), { r: 'ok', calls: ['is-active --quiet nginx', 'nginx -t -q', 'reload nginx'] }, 'running: tested, reloaded');
  fs.writeFileSync(path.join(bin, 'broken'), '');
  t.deepEqual(await run(''), { r: '"nginx -t -q" failed, so nginx was not reloaded: [emerg] unknown directive "ssl_certificat" in /etc/nginx/conf.d/site.conf:7', calls: ['nginx -t -q'] }, 'a configuration nginx rejects: not reloaded, and the error names the file and line');
  t.deepEqual(await run('  reload_command: "systemctl reload nginx"\n'), { r: 'ok', calls: ['reload nginx'] }, 'an operator\'s reload_command runs as it is');
  fs.rmSync(path.join(bin, 'broken'));
  fs.rmSync(path.join(bin, 'active'));
  t.deepEqual(await run('  nginx_force_start: true\n'), { r: 'ok', calls: ['is-active --quiet nginx', 'nginx -t -q', 'start nginx'] }, 'stopped, force_start: started');
  const off = await run('');
  t.deepEqual(off.calls, ['nginx -t -q', 'reload nginx'], 'stopped, no force_start: only a reload is tried');
  t.is(off.r, '"systemctl reload nginx" failed: nginx.service is not active, cannot reload.');
});
