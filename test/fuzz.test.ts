// The PKCS#11 module's fuzz harnesses (p11-module/fuzz/, libFuzzer with ASan and
// UBSan) replay the seed corpus from real enclave traffic and every regression
// input: each input runs once and must not crash, leak or trip a sanitizer.
// Long runs are `npm run fuzz` (figures in docs/RELIABILITY.md).
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { ROOT } from './helpers/enclave.ts';

const built = spawnSync('make', ['-s', '-C', path.join(ROOT, 'p11-module'), 'fuzz'], { encoding: 'utf8' });

for (const harness of ['fuzz_wire', 'fuzz_module']) {
  test(`${harness}: the seed corpus and every regression input run clean under ASan and UBSan`, (t) => {
    t.is(built.status, 0, `make fuzz failed (needs clang): ${built.stderr}`);
    const dirs = [path.join(ROOT, 'p11-module/fuzz/corpus', harness.replace('fuzz_', '')), path.join(ROOT, 'p11-module/fuzz/regressions', harness)];
    const inputs = dirs.flatMap((d) => (fs.existsSync(d) ? fs.readdirSync(d).filter((f) => f !== 'README.md').map((f) => path.join(d, f)) : []));
    t.true(inputs.length >= 3, 'there is a seed corpus');
    const r = spawnSync(path.join(ROOT, 'p11-module/build/fuzz', harness), ['-runs=0', '-timeout=10', ...inputs], { encoding: 'utf8', timeout: 120_000 });
    t.is(r.status, 0, r.stderr.split('\n').filter((l) => /ERROR|SUMMARY|#\d/.test(l)).slice(0, 10).join('\n'));
    t.regex(r.stderr, new RegExp(`Running: |INITED|executed`), 'libFuzzer ran the inputs');
  });
}
