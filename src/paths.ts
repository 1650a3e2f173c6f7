// Where the project's own files are, wherever it is installed or checked out.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const BUILT_MODULE = path.join(PROJECT_ROOT, 'p11-module/build/nitro-acm-p11.so');
