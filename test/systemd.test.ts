// The systemd unit passes `systemd-analyze verify` (with stand-ins for the units
// and the command it refers to, in a scratch root) and says what operators rely on.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { ROOT, tmpdir } from './helpers/enclave.ts';

const UNIT = path.join(ROOT, 'config/nitro-enclaves-acm.service');

test('systemd-analyze verify is clean', (t) => {
  const root = tmpdir('systemd');
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  fs.mkdirSync(path.join(root, 'lib/systemd'), { recursive: true });
  fs.cpSync('/lib/systemd/system', path.join(root, 'lib/systemd/system'), { recursive: true, verbatimSymlinks: true });
  const etc = path.join(root, 'etc/systemd/system');
  fs.mkdirSync(etc, { recursive: true });
  for (const u of ['nitro-enclaves-allocator', 'nitro-enclaves-vsock-proxy', 'nginx', 'httpd', 'apache2']) {
    fs.writeFileSync(path.join(etc, `${u}.service`), '[Unit]\nDescription=stand-in\n[Service]\nExecStart=/bin/true\n');
  }
  fs.mkdirSync(path.join(root, 'usr/bin'), { recursive: true });
  fs.writeFileSync(path.join(root, 'usr/bin/nitro-acm'), '#!/bin/sh\n', { mode: 0o755 });
  fs.copyFileSync(UNIT, path.join(etc, 'nitro-enclaves-acm.service'));
  const r = spawnSync('systemd-analyze', [`--root=${root}`, 'verify', path.join(etc, 'nitro-enclaves-acm.service')], { encoding: 'utf8' });
  t.is(r.status, 0, r.stdout + r.stderr);
  t.is((r.stdout + r.stderr).trim(), '');
});

test('the unit restarts on failure, checks acm.yaml first, and orders itself before the web servers', (t) => {
  const unit = fs.readFileSync(UNIT, 'utf8');
  t.regex(unit, /^Restart=on-failure$/m);
  t.regex(unit, /^ExecStartPre=\/usr\/bin\/nitro-acm agent --check --config \/etc\/nitro_enclaves\/acm\.yaml$/m);
  t.regex(unit, /^Before=nginx\.service httpd\.service apache2\.service$/m);
  t.regex(unit, /^After=.*nitro-enclaves-allocator\.service/m);
  t.notRegex(unit, /RuntimeDirectory=/, 'no directory systemd would delete on stop');
  // bench/agent.ts measures the idle agent with the unit's Environment= lines, read one assignment a line.
  t.regex(unit, /^Environment=MALLOC_ARENA_MAX=1$/m);
});
