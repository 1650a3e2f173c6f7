// Where the project's own files are, wherever it is installed or checked out.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const PROJECT_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** Where the RPM installs the PKCS#11 module (its p11-kit .module file names it). */
export const PACKAGED_MODULE = '/usr/lib64/pkcs11/nitro-acm-p11.so';
/** The PKCS#11 module: built in the checkout, else the installed one. */
export const BUILT_MODULE = ((built) => (fs.existsSync(built) || !fs.existsSync(PACKAGED_MODULE) ? built : PACKAGED_MODULE))(path.join(PROJECT_ROOT, 'p11-module/build/nitro-acm-p11.so'));
