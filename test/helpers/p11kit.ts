// Registers the freshly built module with p11-kit for the tests. p11-kit ignores
// ~/.config/pkcs11 for root, so this writes /etc/pkcs11/modules/nitro-acm-test.module
// (idempotently, atomically) from templates/nitro-acm.module. Each test points the
// module at its own enclave with NITRO_ACM_KEY_ADDRESS, which overrides the file.
import fs from 'node:fs';
import path from 'node:path';
import { ROOT, MODULE_PATH } from './enclave.ts';

export const P11KIT_PROXY = '/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so';
const TARGET = '/etc/pkcs11/modules/nitro-acm-test.module';

export function renderModuleFile(modulePath: string, address: string, timeoutMs = 5000): string {
  return fs.readFileSync(path.join(ROOT, 'templates/nitro-acm.module'), 'utf8')
    .replaceAll('{{MODULE_PATH}}', modulePath)
    .replaceAll('{{ADDRESS}}', address)
    .replaceAll('{{TIMEOUT_MS}}', String(timeoutMs));
}

export function registerWithP11Kit(): void {
  const text = renderModuleFile(MODULE_PATH, 'unix:path=/run/nitro-acm/keys.sock');
  try { if (fs.readFileSync(TARGET, 'utf8') === text) return; } catch { /* absent */ }
  fs.mkdirSync(path.dirname(TARGET), { recursive: true });
  const tmp = `${TARGET}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, TARGET);
}
