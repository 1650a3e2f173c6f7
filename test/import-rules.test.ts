// Imports run one way (docs/architecture.md): the enclave app imports only its
// own code and shared code; shared code imports only shared code; the agent
// never imports operator commands, local mode or the enclave; only local mode
// (and tests, benchmarks and scripts) may import the enclave app. Every relative
// import of every TypeScript file is checked against these rules.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { ROOT } from './helpers/enclave.ts';

/** The room a file belongs to, by its path in the repository. */
function room(rel: string): string {
  for (const r of ['shared', 'src/agent', 'src/commands', 'src/local', 'enclave', 'test', 'bench', 'scripts']) if (rel === r || rel.startsWith(`${r}/`)) return r;
  return rel.startsWith('src/') ? 'src' : rel;
}

/** Which rooms each room may import from (itself always). */
const ALLOWED: Record<string, string[]> = {
  'shared': [],
  enclave: ['shared'],
  'src/agent': ['shared', 'src'],
  'src/commands': ['shared', 'src/agent', 'src'],
  'src/local': ['shared', 'src/agent', 'src', 'enclave'],
  src: ['shared', 'src/agent', 'src/commands', 'src/local'],
};

function tsFiles(dir: string): string[] {
  return fs.readdirSync(path.join(ROOT, dir), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts'))
    .map((e) => path.relative(ROOT, path.join(e.parentPath ?? (e as unknown as { path: string }).path, e.name)));
}

export function importViolations(files: string[], read = (f: string) => fs.readFileSync(path.join(ROOT, f), 'utf8')): string[] {
  const out: string[] = [];
  for (const file of files) {
    const from = room(file);
    const allowed = ALLOWED[from];
    if (!allowed) continue;
    const text = read(file);
    for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'"]*?from\s+['"](\.{1,2}\/[^'"]+)['"]|import\(\s*['"](\.{1,2}\/[^'"]+)['"]\s*\)/g)) {
      const spec = m[1] ?? m[2];
      const target = path.relative(ROOT, path.resolve(ROOT, path.dirname(file), spec));
      const to = room(target);
      if (to !== from && !allowed.includes(to)) out.push(`${file} imports ${spec} (${to}): ${from} may import only ${[from, ...allowed].join(', ')}`);
    }
  }
  return out;
}

test('every import runs the way docs/architecture.md says', (t) => {
  const files = ['src', 'shared', 'enclave'].flatMap(tsFiles);
  t.true(files.length > 40, `${files.length} files read`);
  t.deepEqual(importViolations(files), []);
});

test('a wrong-way import is caught (the rule can fail)', (t) => {
  const fake: Record<string, string> = {
    'enclave/x.ts': "import { agent } from '../src/agent/agent.ts';\n",
    'src/agent/y.ts': "const { seal } = await import('../commands/seal.ts');\n",
    'shared/z.ts': "export { nsm } from '../enclave/nsm.ts';\n",
    'src/local/ok.ts': "import { nsm } from '../../enclave/nsm.ts';\n",
  };
  t.deepEqual(importViolations(Object.keys(fake), (f) => fake[f]).map((v) => v.split(' ')[0]), ['enclave/x.ts', 'src/agent/y.ts', 'shared/z.ts']);
});
