// Registers the nitro-acm PKCS#11 module with p11-kit from templates/nitro-acm.module,
// so every program using p11-kit-proxy.so (the OpenSSL pkcs11 engine by default)
// sees the enclave's tokens. p11-kit ignores ~/.config/pkcs11 for root, so local
// mode and the tests write /etc/pkcs11/modules/ (idempotently, atomically); a
// program can still point the module elsewhere with NITRO_ACM_KEY_ADDRESS.
import fs from 'node:fs';
import path from 'node:path';
import { render } from '../templates.ts';

import { BUILT_MODULE } from '../paths.ts';
import { DEFAULT_KEY_ADDRESS } from '../../shared/address.ts';
export const P11KIT_MODULE_FILE = '/etc/pkcs11/modules/nitro-acm.module';
export const DEFAULT_TIMEOUT_MS = 5000;

export function renderModuleFile(modulePath: string, address: string, timeoutMs = DEFAULT_TIMEOUT_MS): string {
  return render('nitro-acm.module', { MODULE_PATH: modulePath, ADDRESS: address, TIMEOUT_MS: String(timeoutMs) });
}

/** Writes the registration if it differs; returns the file written. */
export function registerWithP11Kit(address = DEFAULT_KEY_ADDRESS, modulePath = BUILT_MODULE, file = P11KIT_MODULE_FILE): string {
  if (!fs.existsSync(modulePath)) throw new Error(`${modulePath}: the PKCS#11 module is not built (make -C p11-module)`);
  const text = renderModuleFile(modulePath, address);
  try { if (fs.readFileSync(file, 'utf8') === text) return file; } catch { /* absent */ }
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text, { mode: 0o644 });
  fs.renameSync(tmp, file);
  return file;
}
