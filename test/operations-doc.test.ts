// docs/operations.md stays true: every shell block is marked either
// "<!-- test: run -->" (run here, each "$ " line in turn, and must exit as the
// mark says) or "<!-- test: skip: why -->"; every JSON block parses. The run
// blocks execute in a scratch directory that stands in for /etc/nitro_enclaves
// (holding the shipped examples), with `nitro-acm` on the PATH and "sudo" dropped.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { ROOT, tmpdir } from './helpers/enclave.ts';

const DOC = path.join(ROOT, 'docs/operations.md');
interface Block { lang: string; body: string; mark: string; line: number }

function blocks(text: string): Block[] {
  const out: Block[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const open = /^\s*```(\w*)\s*$/.exec(lines[i]);
    if (!open) continue;
    let j = i + 1;
    while (j < lines.length && !/^\s*```\s*$/.test(lines[j])) j++;
    let k = i - 1;
    while (k >= 0 && lines[k].trim() === '') k--;
    out.push({ lang: open[1], body: lines.slice(i + 1, j).join('\n'), mark: k >= 0 ? lines[k].trim() : '', line: i + 1 });
    i = j;
  }
  return out;
}

const all = blocks(fs.readFileSync(DOC, 'utf8'));

test('every shell block says whether the tests run it, and why not', (t) => {
  const sh = all.filter((b) => b.lang === 'sh');
  t.true(sh.length > 10);
  for (const b of sh) t.regex(b.mark, /^<!-- test: (run(, exit \d+: .+)?|skip: .+) -->$/, `docs/operations.md:${b.line}: a shell block needs <!-- test: run --> or <!-- test: skip: why -->`);
});

test('every JSON block (IAM and KMS policies) is valid JSON', (t) => {
  const json = all.filter((b) => b.lang === 'json');
  t.true(json.length >= 3);
  for (const b of json) t.notThrows(() => JSON.parse(b.body), `docs/operations.md:${b.line}`);
});

test('the commands marked "run" work as written', (t) => {
  const etc = tmpdir('opsdoc');
  t.teardown(() => fs.rmSync(etc, { recursive: true, force: true }));
  for (const f of ['acm.example.yaml', 'acm-httpd.example.yaml']) fs.copyFileSync(path.join(ROOT, 'config', f), path.join(etc, f));
  const env = {
    ...process.env,
    PATH: `${path.join(ROOT, 'bin')}:${process.env.PATH}`,
    // No agent runs here; the module must not wait on a vsock peer that does not exist.
    NITRO_ACM_KEY_ADDRESS: `unix:path=${path.join(etc, 'no-enclave.sock')}`,
    // Nor may a local mode running on this machine answer for the agent.
    NITRO_ACM_CONTROL_SOCKET: path.join(etc, 'no-agent.sock'),
  };
  const run = all.filter((b) => b.lang === 'sh' && b.mark.startsWith('<!-- test: run'));
  t.true(run.length >= 4);
  for (const b of run) {
    const want = Number(/exit (\d+)/.exec(b.mark)?.[1] ?? 0);
    for (const line of b.body.split('\n').filter((l) => l.startsWith('$ '))) {
      const cmd = line.slice(2).replace(/^sudo /, '').replaceAll('/etc/nitro_enclaves', etc);
      const r = spawnSync('/bin/sh', ['-c', cmd], { env, encoding: 'utf8', timeout: 60_000 });
      t.is(r.status, want, `docs/operations.md:${b.line}: "${line.slice(2)}" exited ${r.status}:\n${r.stdout}${r.stderr}`);
    }
  }
  t.true(fs.existsSync(path.join(etc, 'acm.yaml')), 'the cp in the guide made acm.yaml');
});
