// Fills {{NAME}} placeholders of the files in templates/. A placeholder without a
// value, or a value without a placeholder, is a bug in the caller: both throw.
import fs from 'node:fs';
import path from 'node:path';
import { PROJECT_ROOT } from './paths.ts';

export const TEMPLATES_DIR = path.join(PROJECT_ROOT, 'templates');

export function render(template: string, values: Record<string, string>): string {
  const text = fs.readFileSync(path.join(TEMPLATES_DIR, template), 'utf8');
  const used = new Set<string>();
  const out = text.replace(/\{\{([A-Z_]+)\}\}/g, (_, name: string) => {
    if (!(name in values)) throw new Error(`template ${template}: no value for {{${name}}}`);
    used.add(name);
    return values[name];
  });
  for (const name of Object.keys(values)) if (!used.has(name)) throw new Error(`template ${template}: no {{${name}}} to fill`);
  return out;
}
