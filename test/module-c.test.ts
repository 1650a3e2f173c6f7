// The module's C API tests (p11-module/tests/api_test.c), in a plain build and in
// an AddressSanitizer + UndefinedBehaviorSanitizer build: NULL arguments, short
// buffers, templates, 8 threads on one connection, fork after login.
import test from 'ava';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { startEnclave, ROOT, type EnclaveFixture } from './helpers/enclave.ts';

let fx: EnclaveFixture;
test.before(async () => {
  const make = spawnSync('make', ['-C', path.join(ROOT, 'p11-module'), 'tests'], { encoding: 'utf8' });
  if (make.status !== 0) throw new Error(make.stdout + make.stderr);
  fx = await startEnclave([{ label: 'capi', pin: '86420000', names: ['capi.test'] }], { prefix: 'capi' });
});
test.after.always(async () => { await fx?.cleanup(); });

for (const [name, dir] of [['plain build', 'build'], ['ASan+UBSan build', 'build/asan']]) {
  test(`C API checks pass (${name})`, (t) => {
    const bin = path.join(ROOT, 'p11-module', dir, 'api_test');
    const mod = path.join(ROOT, 'p11-module', dir, 'nitro-acm-p11.so');
    const r = spawnSync(bin, [mod, 'capi', '86420000'], {
      encoding: 'utf8',
      timeout: 120_000,
      env: { ...process.env, NITRO_ACM_KEY_ADDRESS: fx.address, ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=0:exitcode=99', UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1' },
    });
    const out = `${r.stdout}${r.stderr}`;
    t.notRegex(out, /ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:/, out);
    t.regex(out, /^\d+ passed, 0 failed$/m, out);
    t.is(r.status, 0, out);
  });
}
