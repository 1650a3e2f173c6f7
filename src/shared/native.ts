// Loads the native addon (enclave/native/native.c) on first use: vsock sockets,
// descriptor duplication, and the NSM ioctl. Nothing else in nitro-acm is native
// on the Node side.
import fs from 'node:fs';
import { createRequire } from 'node:module';

export interface NativeAddon {
  connect(cid: number, port: number, timeoutMs: number): number;
  listen(cid: number, port: number, backlog: number): number;
  dup(fd: number): number;
  nsmRequest(fd: number, request: Buffer): Buffer;
}

let addon: NativeAddon | undefined;
export function native(): NativeAddon {
  if (!addon) {
    const require = createRequire(import.meta.url);
    // Next to the code in the enclave image (a bundle), else where node-gyp builds it in the source tree.
    const besideBundle = new URL('./native.node', import.meta.url).pathname;
    const file = fs.existsSync(besideBundle) ? besideBundle : new URL('../../enclave/native/build/Release/native.node', import.meta.url).pathname;
    try { addon = require(file) as NativeAddon; } catch (e) {
      throw new Error(`native addon not built (${file}): run "npm run build:native" (${(e as Error).message.split('\n')[0]})`);
    }
  }
  return addon;
}
