// The key channel defined once: scripts/wire-vectors.ts makes golden vectors from
// the TypeScript side (requests, token lists, addresses) into
// test/vectors/key-wire.txt, and the C module's wire.c and conn.c must give the
// same bytes, fields and verdicts for every one (p11-module/tests/vectors_test.c,
// under ASan and UBSan). A change on one side that the other does not follow
// fails here.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { ROOT, tmpdir } from './helpers/enclave.ts';
import { wireVectors, VECTORS_FILE } from '../scripts/wire-vectors.ts';
import { decodeTokenList } from '../shared/key-wire.ts';
import { DecodeError } from '../shared/bytes.ts';

const BIN = path.join(ROOT, 'p11-module/build/asan/vectors_test');

test.before(() => {
  const make = spawnSync('make', ['-C', path.join(ROOT, 'p11-module'), 'build/asan/vectors_test'], { encoding: 'utf8' });
  if (make.status !== 0) throw new Error(make.stdout + make.stderr);
});

test('the committed vectors are what the TypeScript side makes now (run scripts/wire-vectors.ts after a format change)', (t) => {
  t.is(fs.readFileSync(VECTORS_FILE, 'utf8'), wireVectors());
});

test('the C module encodes, decodes and parses every vector as TypeScript does', (t) => {
  const r = spawnSync(BIN, [VECTORS_FILE], { encoding: 'utf8' });
  t.is(r.status, 0, r.stdout + r.stderr);
  t.regex(r.stdout, /^(\d+) passed, 0 failed$/m);
  t.is(Number(/(\d+) passed/.exec(r.stdout)![1]), wireVectors().trim().split('\n').length);
});

test('a vector the C side does not match is reported (the check can fail)', (t) => {
  const dir = tmpdir('wire-vectors');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const lines = wireVectors().trim().split('\n');
  const bad = [
    lines.find((l) => l.startsWith('login '))!.replace(/.$/, (c) => (c === '0' ? '1' : '0')),
    'address vsock:cid=16;cid=17;port=1 vsock:17:1',
    lines.find((l) => l.startsWith('tokenlist ') && !l.endsWith(' -'))!.replace(/ \S+$/, ' malformed'),
  ];
  const file = path.join(dir, 'bad.txt');
  fs.writeFileSync(file, bad.join('\n') + '\n');
  const r = spawnSync(BIN, [file], { encoding: 'utf8' });
  t.is(r.status, 1);
  t.regex(r.stdout, /0 passed, 3 failed/);
});

test('every token list the vectors call malformed (EC keys with a bad curve or point among them) is refused by the TypeScript decoder too', (t) => {
  const malformed = fs.readFileSync(VECTORS_FILE, 'utf8').split('\n').filter((l) => l.startsWith('tokenlist ') && l.endsWith(' malformed'));
  t.true(malformed.length >= 7);
  for (const l of malformed) t.throws(() => decodeTokenList(Buffer.from(l.split(' ')[1], 'hex')), { instanceOf: DecodeError }, l.slice(0, 60));
});
