// The README's quick start as a new user meets it (issue 12): the Node.js check
// that install-deps.sh makes before any package work, and scripts/as-root.sh,
// which lets `install-deps.sh`, `npm start` and `npm test` work as typed both as
// root without sudo and as a user with sudo.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { ROOT, tmpdir } from './helpers/enclave.ts';
import { NOBODY } from './helpers/unprivileged.ts';

type Run = { status: number; out: string };
function run(file: string, args: string[], opts: { env?: NodeJS.ProcessEnv; uid?: number } = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(file, args, { env: opts.env, uid: opts.uid, gid: opts.uid, cwd: '/', timeout: 20_000 }, (err, stdout, stderr) => {
      resolve({ status: err ? (typeof err.code === 'number' ? err.code : -1) : 0, out: `${stdout}${stderr}` });
    });
  });
}

/** A directory with a `node` that reports `version` (and an `npm`), readable by everyone; removed after the test. */
function fakeNode(t: ExecutionContext, version: string): string {
  const dir = tmpdir('fake-node');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.chmodSync(dir, 0o755);
  fs.writeFileSync(path.join(dir, 'node'), `#!/bin/sh\necho ${version}\n`, { mode: 0o755 });
  fs.writeFileSync(path.join(dir, 'npm'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  return dir;
}

// check-node.sh implements package.json's "engines" rule; the test holds both to it.
const ENGINES = '>=20.11 <21 || >=22';
test('package.json asks for the Node.js versions check-node.sh accepts', (t) => {
  t.is(JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).engines.node, ENGINES);
});

for (const [version, wanted] of [['18.19.0', false], ['20.10.1', false], ['20.11.0', true], ['20.20.0', true], ['21.7.3', false], ['22.0.0', true], ['24.1.0', true]] as const) {
  test(`check-node.sh ${wanted ? 'accepts' : 'refuses'} Node.js ${version} (${ENGINES})`, async (t) => {
    const dir = fakeNode(t, version);
    const r = await run('/bin/bash', [path.join(ROOT, 'scripts/check-node.sh')], { env: { PATH: `${dir}:/usr/bin:/bin` } });
    t.is(r.status, wanted ? 0 : 1, r.out);
    if (!wanted) {
      t.regex(r.out, new RegExp(`Node\\.js ${version.replace(/\./g, '\\.')} is on PATH \\(${dir}/node\\)`));
      t.regex(r.out, /needs Node\.js 20\.11 or later, or 22 or later/);
    } else t.is(r.out, '');
  });
}

test('check-node.sh says so when there is no node at all', async (t) => {
  const r = await run('/bin/bash', [path.join(ROOT, 'scripts/check-node.sh')], { env: { PATH: '/nonexistent' } });
  t.is(r.status, 1);
  t.regex(r.out, /'node' is not on PATH\. It needs Node\.js 20\.11 or later/);
});

test('install-deps.sh stops at the Node.js check before it touches a package', async (t) => {
  const dir = fakeNode(t, '18.19.0');
  const r = await run('/bin/bash', [path.join(ROOT, 'scripts/install-deps.sh')], { env: { PATH: `${dir}:/usr/bin:/bin` } });
  t.is(r.status, 1, r.out);
  t.regex(r.out, /Node\.js 18\.19\.0 is on PATH/);
  t.notRegex(r.out, /apt-get|install-deps: done/);
});

test('as-root.sh runs the command as it is for root, with no sudo needed', async (t) => {
  const r = await run('/bin/bash', [path.join(ROOT, 'scripts/as-root.sh'), 'id', '-u'], { env: { PATH: '/usr/bin:/bin' } });
  t.is(r.status, 0, r.out);
  t.is(r.out.trim(), '0');
});

test('as-root.sh goes through sudo for a user, keeping PATH, and says why', async (t) => {
  const dir = tmpdir('fake-sudo');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.chmodSync(dir, 0o755);
  // A stand-in for sudo that shows what it was asked to run.
  fs.writeFileSync(path.join(dir, 'sudo'), '#!/bin/sh\necho "sudo $*"\n', { mode: 0o755 });
  const r = await run('/bin/bash', [path.join(ROOT, 'scripts/as-root.sh'), 'npm', 'run', 'test:suite'], { env: { PATH: `${dir}:/usr/bin:/bin` }, uid: NOBODY });
  t.is(r.status, 0, r.out);
  t.regex(r.out, /^nitro-acm: 'npm run test:suite' needs root; running it with sudo$/m);
  t.regex(r.out, new RegExp(`^sudo env PATH=${dir}:/usr/bin:/bin npm run test:suite$`, 'm'));
});

test('as-root.sh tells a user without sudo to run it as root', async (t) => {
  const r = await run('/bin/bash', [path.join(ROOT, 'scripts/as-root.sh'), 'npm', 'start'], { env: { PATH: '/usr/bin:/bin' }, uid: NOBODY });
  t.is(r.status, 1, r.out);
  t.regex(r.out, /^nitro-acm: 'npm start' needs root, and sudo is not installed: run it as root$/m);
});

test('the README quick start is the two lines .ci/run runs, with no sudo in them', (t) => {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const block = /## Quick start[^\n]*\n+```sh\n([\s\S]*?)```/.exec(readme)?.[1].trim().split('\n');
  t.deepEqual(block, ['bash scripts/install-deps.sh && npm ci && npm start', 'npm test']);
  const ci = fs.readFileSync(path.join(ROOT, '.ci/run'), 'utf8');
  t.regex(ci, /bash scripts\/install-deps\.sh/);
  t.regex(ci, /npm start/);
  t.regex(ci, /^npm test$/m);
});
