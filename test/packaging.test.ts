// Packaging: `npm run rpm` builds an RPM whose contents, permissions, relations
// and scriptlets are right (checked with rpm -qlp / -qp --scripts), whose agent
// runs from the package's JavaScript alone (unpacked with rpm2cpio into a scratch
// root: no TypeScript, no tsx, no dev dependencies), and that rpm installs,
// verifies and upgrades in a scratch root of its own.
// `npm run build:eif` makes a Docker build context holding exactly what the enclave
// needs, and turns the documented nitro-cli output into image-measurements.json
// (stand-ins for docker and nitro-cli; neither can build here).
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { ROOT, tmpdir } from './helpers/enclave.ts';
import { makeEnclaveContext } from '../scripts/build-eif.ts';
import { ENCLAVE_NODE_FLAGS } from '../enclave/node-flags.ts';

const dir = tmpdir('packaging');
test.after.always(() => fs.rmSync(dir, { recursive: true, force: true }));

function sh(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}, cwd = ROOT) {
  const r = spawnSync(cmd, args, { cwd, env: { ...process.env, ...env }, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, timeout: 600_000 });
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

test.serial('npm run rpm: the package installs what an operator needs, with the right modes and scriptlets', (t) => {
  const out = path.join(dir, 'rpm');
  // Other test files run enclave apps from the checkout's addon meanwhile: building
  // the package must not take it away (node-gyp rebuild deleted the build
  // directory first, and an enclave app starting then failed to load it).
  const addon = path.join(ROOT, 'shared/native/build/Release/native.node');
  const before = fs.statSync(addon);
  const b = sh('bash', ['scripts/build-rpm.sh'], { NITRO_ACM_RPM_DIR: out, NITRO_ACM_EIF_DIR: path.join(dir, 'no-eif') });
  t.is(b.status, 0, b.stderr);
  const after = fs.statSync(addon);
  t.deepEqual([after.ino, after.mtimeMs], [before.ino, before.mtimeMs], 'the checkout\'s addon, unchanged since it was built, is left as it was');
  const rpm = b.stdout.trim().split('\n').pop()!;
  t.regex(path.basename(rpm), /^nitro-acm-\d+\.\d+\.\d+-1\.x86_64\.rpm$/);
  t.regex(b.stderr, /WARNING: no enclave image/, 'says clearly that this package has no enclave image');

  // File list: rpm -qlp.
  const files = sh('rpm', ['-qlp', rpm]).stdout.trim().split('\n');
  for (const f of ['/usr/bin/nitro-acm', '/usr/lib/nitro-acm/src/cli.js', '/usr/lib/nitro-acm/enclave/main.js', '/usr/lib/nitro-acm/shared/native/build/Release/native.node',
    '/usr/lib/nitro-acm/templates/nginx-stanza.conf', '/usr/lib/nitro-acm/shared/trust/aws_nitro_enclaves_root_g1.pem', '/usr/lib64/pkcs11/nitro-acm-p11.so',
    '/usr/share/p11-kit/modules/nitro-acm.module', '/usr/lib/systemd/system/nitro-enclaves-acm.service', '/etc/nitro_enclaves/acm.example.yaml',
    '/etc/nitro_enclaves/acm-httpd.example.yaml', '/usr/share/doc/nitro-acm/operations.md', '/usr/share/licenses/nitro-acm/LICENSE',
    '/usr/lib/nitro-acm/node_modules/@aws-sdk/client-kms/package.json', '/usr/lib/nitro-acm/node_modules/pkcs11js/package.json']) t.true(files.includes(f), `${f} is packaged`);
  t.false(files.includes('/etc/nitro_enclaves/acm.yaml'), 'an operator\'s acm.yaml is never shipped (so never overwritten)');
  const ours = files.filter((f) => f.startsWith('/usr/lib/nitro-acm/') && !f.includes('/node_modules/'));
  t.deepEqual(ours.filter((f) => f.endsWith('.ts')), [], 'no TypeScript sources of ours');
  t.deepEqual(ours.filter((f) => /\/(test|bench)\//.test(f)), [], 'no tests or benchmarks');
  for (const dev of ['ava', 'typescript', 'tsx', 'esbuild', '@types/node']) t.false(files.some((f) => f.startsWith(`/usr/lib/nitro-acm/node_modules/${dev}/`)), `dev dependency ${dev} is not packaged`);

  // Modes and config files.
  const modes = new Map(sh('rpm', ['-qp', '--qf', '[%{FILEMODES:perms} %{FILENAMES}\\n]', rpm]).stdout.trim().split('\n').map((l) => { const [m, f] = l.split(' '); return [f, m]; }));
  t.is(modes.get('/usr/bin/nitro-acm'), '-rwxr-xr-x');
  t.is(modes.get('/usr/lib64/pkcs11/nitro-acm-p11.so'), '-rwxr-xr-x');
  t.is(modes.get('/etc/nitro_enclaves/acm.example.yaml'), '-rw-r--r--');
  t.is(modes.get('/usr/lib/systemd/system/nitro-enclaves-acm.service'), '-rw-r--r--');
  t.deepEqual(sh('rpm', ['-qpc', rpm]).stdout.trim().split('\n').sort(), ['/etc/nitro_enclaves/acm-httpd.example.yaml', '/etc/nitro_enclaves/acm.example.yaml']);
  t.regex(sh('rpm', ['-qp', '--qf', '[%{FILEFLAGS:fflags} %{FILENAMES}\\n]', rpm]).stdout, /^cn \/etc\/nitro_enclaves\/acm\.example\.yaml$/m, 'config(noreplace)');

  // Relations.
  const requires = sh('rpm', ['-qp', '--requires', rpm]).stdout;
  for (const r of [/^nodejs >= 20$/m, /^p11-kit$/m, /^openssl-pkcs11$/m, /^aws-nitro-enclaves-cli$/m]) t.regex(requires, r);
  t.notRegex(requires, /perl|python/, 'no automatic requirements from node_modules');
  t.regex(sh('rpm', ['-qp', '--conflicts', rpm]).stdout, /^aws-nitro-enclaves-acm$/m);

  // Scriptlets, as Fedora-family packages handle units.
  const scripts = sh('rpm', ['-qp', '--scripts', rpm]).stdout;
  t.regex(scripts, /postinstall scriptlet[\s\S]*if \[ \$1 -eq 1 \][\s\S]*systemctl --no-reload preset nitro-enclaves-acm\.service/);
  t.regex(scripts, /preuninstall scriptlet[\s\S]*if \[ \$1 -eq 0 \][\s\S]*systemctl --no-reload disable --now nitro-enclaves-acm\.service[\s\S]*nitro-cli terminate-enclave --enclave-name nitro-acm/);
  t.regex(scripts, /postuninstall scriptlet[\s\S]*systemctl daemon-reload[\s\S]*if \[ \$1 -ge 1 \][\s\S]*systemctl try-restart nitro-enclaves-acm\.service/);

  // The p11-kit registration names the installed module and the enclave's fixed CID.
  const root = path.join(dir, 'root');
  fs.mkdirSync(root);
  t.is(spawnSync('/bin/sh', ['-c', `rpm2cpio '${rpm}' | cpio -idm --quiet`], { cwd: root }).status, 0);
  const moduleFile = fs.readFileSync(path.join(root, 'usr/share/p11-kit/modules/nitro-acm.module'), 'utf8');
  t.regex(moduleFile, /^module: \/usr\/lib64\/pkcs11\/nitro-acm-p11\.so$/m);
  t.regex(moduleFile, /^x-init-reserved: vsock:cid=16;port=9999 timeout-ms=\d+$/m);

  // The packaged agent runs on its own JavaScript: --help, and a check of the shipped example.
  const node = (args: string[]) => sh(process.execPath, [path.join(root, 'usr/lib/nitro-acm/src/cli.js'), ...args], { NODE_OPTIONS: '' }, root);
  const help = node(['--help']);
  t.is(help.status, 0, help.stderr);
  t.regex(help.stdout, /^Usage: nitro-acm COMMAND/m);
  const check = node(['agent', '--check', '--config', path.join(root, 'etc/nitro_enclaves/acm.example.yaml')]);
  t.is(check.status, 0, check.stderr);
  t.regex(check.stdout, /syntax is ok, 1 token/);
  const enclaveHelp = sh(process.execPath, [path.join(root, 'usr/lib/nitro-acm/enclave/main.js'), '--help'], {}, root);
  t.is(enclaveHelp.status, 0, enclaveHelp.stderr);

  // rpm itself installs it (into a scratch root with its own database; no
  // dependencies or scriptlets, which need Amazon Linux), verifies it, and an
  // upgrade keeps an acm.yaml the operator wrote.
  const sysroot = path.join(dir, 'sysroot');
  const rpmIn = (args: string[]) => sh('rpm', ['--root', sysroot, '--dbpath', '/var/lib/rpm', ...args]);
  fs.mkdirSync(sysroot);
  t.is(rpmIn(['--initdb']).status, 0);
  const inst = rpmIn(['-i', '--nodeps', '--noscripts', '--nosignature', rpm]);
  t.is(inst.status, 0, inst.stderr);
  t.regex(rpmIn(['-q', 'nitro-acm']).stdout, /^nitro-acm-\d+\.\d+\.\d+-1\.x86_64$/m);
  const verify = rpmIn(['-V', '--nodeps', '--noscripts', 'nitro-acm']);
  t.is(verify.status, 0, `rpm -V: ${verify.stdout}${verify.stderr}`);
  fs.writeFileSync(path.join(sysroot, 'etc/nitro_enclaves/acm.yaml'), 'tokens: []\n');
  fs.appendFileSync(path.join(sysroot, 'etc/nitro_enclaves/acm.example.yaml'), '# edited by the operator\n');
  const again = rpmIn(['-U', '--replacepkgs', '--nodeps', '--noscripts', '--nosignature', rpm]);
  t.is(again.status, 0, again.stderr);
  t.is(fs.readFileSync(path.join(sysroot, 'etc/nitro_enclaves/acm.yaml'), 'utf8'), 'tokens: []\n', 'acm.yaml untouched by an upgrade');
  t.regex(fs.readFileSync(path.join(sysroot, 'etc/nitro_enclaves/acm.example.yaml'), 'utf8'), /# edited by the operator\n$/, 'an edited example stays (config noreplace)');
});

test('build:eif: the build context holds exactly the enclave app bundle, the addon source, the Dockerfile and its filesystem script', async (t) => {
  const ctx = path.join(dir, 'context');
  const files = await makeEnclaveContext(ctx);
  const chunks = files.filter((f) => /^app\/chunk-\w+\.js$/.test(f));
  t.deepEqual(files.filter((f) => !chunks.includes(f)), ['Dockerfile', 'app/key-worker.js', 'app/main.js', 'native/native.c', 'rootfs.sh']);
  const app = files.filter((f) => f.startsWith('app/')).map((f) => fs.readFileSync(path.join(ctx, f), 'utf8')).join('\n');
  // The agent, local mode, tests and the PKCS#11 module are not in the enclave.
  for (const absent of ['startService', 'chokidar', 'writeTarget', 'startLocalCloud', 'graphene', 'pkcs11js']) t.false(app.includes(absent), `${absent} is not in the enclave image`);
  // Nor is local mode's code (issue 13): no simulated NSM, no plaintext-key loader to be switched on in a real enclave.
  for (const absent of ['SimulatedNsm', 'simulatedNsmRoot', 'nitro-acm simulated kernel', 'function loadPlaintextTokens', 'token loaded from plaintext files']) t.false(app.includes(absent), `${absent} (local mode) is not in the enclave image`);
  t.true(app.includes('DeviceNsm') || app.includes('/dev/nsm'), 'the real NSM is');
  t.true(app.includes('KMSClient') || app.includes('DecryptCommand'), 'the KMS client is bundled');
  // The bundle runs as the image's CMD would: the app answers --help with node alone.
  fs.copyFileSync(path.join(ROOT, 'shared/native/build/Release/native.node'), path.join(ctx, 'app/native.node'));
  const r = sh(process.execPath, [path.join(ctx, 'app/main.js'), '--help'], {}, ctx);
  t.is(r.status, 0, r.stderr);
  t.regex(r.stdout, /--key-address/);
  // And refuses local mode, which it does not have.
  const local = sh(process.execPath, [path.join(ctx, 'app/main.js'), '--local', '--key-address', `unix:path=${path.join(ctx, 'k.sock')}`], {}, ctx);
  t.is(local.status, 2, local.stderr);
  t.regex(local.stderr, /--local is refused: this is the production enclave image, built without local mode/);
  const docker = fs.readFileSync(path.join(ctx, 'Dockerfile'), 'utf8');
  t.regex(docker, /^FROM scratch$/m);
  t.regex(docker, /^RUN cp \/build\/native\.node \/build\/app\/native\.node \\\n && sh \/build\/rootfs\.sh \/usr\/local\/bin\/node \/build\/app \/rootfs$/m);
  // The image's command: node with the enclave app's flags (as local mode runs it), then the app.
  const cmd = JSON.parse(/^CMD (\[.*\])$/m.exec(docker)![1]) as string[];
  t.deepEqual(cmd, ['/usr/local/bin/node', ...ENCLAVE_NODE_FLAGS, '/app/main.js']);

  // The image's filesystem as rootfs.sh makes it, from this machine's node (the
  // official build, as node:20-bookworm-slim has): the app runs in it with
  // nothing else (chroot), as far as a machine without /dev/nsm lets it.
  const rootfs = path.join(dir, 'rootfs');
  const made = sh('sh', [path.join(ctx, 'rootfs.sh'), process.execPath, path.join(ctx, 'app'), rootfs]);
  t.is(made.status, 0, made.stderr);
  const clean = { PATH: '/usr/local/bin' };
  const help = spawnSync('/usr/sbin/chroot', [rootfs, ...cmd, '--help'], { encoding: 'utf8', env: clean });
  t.is(help.status, 0, help.stderr);
  t.regex(help.stdout, /--key-address/);
  const run = spawnSync('/usr/sbin/chroot', [rootfs, ...cmd], { encoding: 'utf8', env: clean });
  t.is(run.status, 1);
  t.regex(run.stderr, /cannot open \/dev\/nsm \(ENOENT\)/, 'got as far as the NSM device, the addon loaded');
  t.is(run.stderr.split('\n').filter((l) => l.trim()).length, 1, `nothing else missing: ${run.stderr}`);
  const imageFiles = (fs.readdirSync(rootfs, { recursive: true }) as string[]).filter((f) => fs.statSync(path.join(rootfs, f)).isFile());
  t.deepEqual(imageFiles.filter((f) => !f.startsWith('app/') && !f.startsWith('lib')).sort(), ['usr/local/bin/node']);
  const mib = imageFiles.reduce((n, f) => n + fs.statSync(path.join(rootfs, f)).size, 0) / 1048576;
  t.log(`enclave image filesystem: ${imageFiles.length} files, ${mib.toFixed(1)} MiB`);
  t.true(mib < 120, `${mib.toFixed(1)} MiB`);
});

test('build:eif: measurements from nitro-cli build-enclave land in image-measurements.json; without Docker it says so', (t) => {
  // Stand-ins: docker that "builds", nitro-cli that prints the documented build-enclave output.
  const bin = path.join(dir, 'bin');
  fs.mkdirSync(bin, { recursive: true });
  fs.writeFileSync(path.join(bin, 'docker'), '#!/bin/sh\necho "docker $*" >> "$(dirname "$0")/calls"\nexit 0\n', { mode: 0o755 });
  const pcr = (c: string) => c.repeat(96);
  fs.writeFileSync(path.join(bin, 'nitro-cli'), `#!/bin/sh\necho "nitro-cli $*" >> "$(dirname "$0")/calls"\n[ "$1" = "--version" ] && { echo "Nitro CLI 1.4.2"; exit 0; }\necho "Start building the Enclave Image..."\necho "Enclave Image successfully created."\ncat <<'JSON'\n{\n  "Measurements": {\n    "HashAlgorithm": "Sha384 { ... }",\n    "PCR0": "${pcr('a')}",\n    "PCR1": "${pcr('b')}",\n    "PCR2": "${pcr('c')}",\n    "PCR8": "${pcr('d')}"\n  }\n}\nJSON\n`, { mode: 0o755 });
  const out = path.join(dir, 'eif');
  const r = sh(process.execPath, ['--import', 'tsx', 'scripts/build-eif.ts', '--out', out, '--private-key', '/keys/k.pem', '--signing-certificate', '/keys/c.pem'], { PATH: `${bin}:${process.env.PATH}`, NITRO_CLI: path.join(bin, 'nitro-cli') });
  t.is(r.status, 0, r.stderr);
  const m = JSON.parse(fs.readFileSync(path.join(out, 'image-measurements.json'), 'utf8')) as { Measurements: Record<string, string> };
  t.deepEqual([m.Measurements.PCR0, m.Measurements.PCR1, m.Measurements.PCR2, m.Measurements.PCR8], [pcr('a'), pcr('b'), pcr('c'), pcr('d')]);
  const calls = fs.readFileSync(path.join(bin, 'calls'), 'utf8');
  t.regex(calls, new RegExp(`^docker build -t nitro-acm-enclave:\\S+ ${out}/context$`, 'm'));
  t.regex(calls, new RegExp(`^nitro-cli build-enclave --docker-uri nitro-acm-enclave:\\S+ --output-file ${out}/nitro-acm.eif --private-key /keys/k.pem --signing-certificate /keys/c.pem$`, 'm'));

  // This machine's docker client cannot build: the context is made and the message says what to run where.
  const none = sh(process.execPath, ['--import', 'tsx', 'scripts/build-eif.ts', '--out', path.join(dir, 'eif2')], { PATH: `/nonexistent:${process.env.PATH}`.replace(`${bin}:`, '') });
  t.is(none.status, 3);
  t.regex(none.stderr, /Docker cannot build images here \(.+\)\.\nThe build context is ready in \S+eif2\/context; on a machine with Docker and nitro-cli:\n {2}docker build -t nitro-acm-enclave:\S+ \S+\n {2}nitro-cli build-enclave/);
  t.true(fs.existsSync(path.join(dir, 'eif2/context/app/main.js')));
});
