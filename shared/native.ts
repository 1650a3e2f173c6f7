// Loads the native addon (shared/native/native.c, shared by the enclave app and the agent) on first use: vsock sockets,
// descriptor duplication, the NSM ioctl, and ECDSA and RSA signatures over what PKCS#11 hands over. Nothing else in nitro-acm is native
// on the Node side.
import fs from 'node:fs';
import type { KeyObject } from 'node:crypto';
import { createRequire } from 'node:module';

export interface NativeAddon {
  /** privilegedSource: bind a source port below 1024 first (root only); the provisioning channel requires one. */
  connect(cid: number, port: number, timeoutMs: number, privilegedSource?: boolean): number;
  listen(cid: number, port: number, backlog: number): number;
  dup(fd: number): number;
  /** Gives the C heap's free pages back to the system (glibc's malloc_trim); true when some went. */
  mallocTrim(): boolean;
  /** Who is on the other end of a connected socket. */
  peer(fd: number): PeerIdentity;
  nsmRequest(fd: number, request: Buffer): Buffer;
  /** An EC private key parsed once for ecdsaSignDigest (freed when the handle is collected). */
  ecdsaKey(pkcs8Der: Buffer): EcdsaKey;
  /** ECDSA over a digest already computed (PKCS#11 CKM_ECDSA; node:crypto always hashes): r||s. */
  ecdsaSignDigest(key: EcdsaKey, digest: Buffer): Buffer;
  /** An RSA private key parsed once for rsaSignDigest (freed, with its key contexts, when the handle is collected). */
  rsaKey(pkcs8Der: Buffer): RsaKey;
  /** An RSA signature, k bytes: PKCS#1 v1.5 padding over `input` as is (a DigestInfo), PSS over a digest, or raw over k bytes. */
  rsaSignDigest(key: RsaKey, scheme: 'pkcs1' | 'raw', input: Buffer): Buffer;
  rsaSignDigest(key: RsaKey, scheme: 'pss', digest: Buffer, hash: string, mgfHash: string, saltLength: number): Buffer;
  // The key channel's connections on a key worker's thread (native.c, "The key channel's connections"; enclave/key-worker.ts).
  /** Once per thread: the frames this code leaves to JavaScript (return true to hold the connection's queue until kcResume), and each connection closed (with why, when it was this code's doing). */
  kcInit(onFrame: (connId: number, frame: Buffer) => boolean, onClose: (connId: number, reason?: string) => void, maxUnsentPerConnection: number, maxUnsentTotal: number, latencyBounds: readonly number[]): void;
  /** Serves a connected socket on this thread (which now owns the descriptor); its id. */
  kcServe(fd: number): number;
  /** Queues a reply (written at once when it can be); false when the connection is gone. */
  kcSend(connId: number, head: Buffer, body?: Uint8Array): boolean;
  kcResume(connId: number): void;
  /** Closes once the queued replies are written. */
  kcEnd(connId: number): void;
  kcCloseIdlest(): boolean;
  kcLogin(connId: number, tokenId: number, loggedIn: boolean): void;
  kcAddKey(keyId: number, tokenId: number, handle: RsaKey | EcdsaKey): void;
  kcRemoveKey(keyId: number): void;
  kcSetGeneration(generation: number): void;
  /** Per key that signed here since the last call: [keyId, signatures, seconds, ...latency bucket counts]. */
  kcTakeStats(): number[][];
}

/** An opaque handle to a parsed RSA private key inside the addon. */
export type RsaKey = { readonly __rsaKey: unique symbol };

/** An opaque handle to a parsed EC private key inside the addon. */
export type EcdsaKey = { readonly __ecdsaKey: unique symbol };

/**
 * A private key parsed into the addon once per key and thread (parsing costs
 * more than a signature), kept in `cache`; the PKCS#8 copy made for it is wiped.
 */
export function nativeKeyOf<H>(cache: WeakMap<KeyObject, H>, key: KeyObject, parse: (pkcs8Der: Buffer) => H): H {
  let handle = cache.get(key);
  if (!handle) {
    const pkcs8 = key.export({ type: 'pkcs8', format: 'der' });
    try { handle = parse(pkcs8); } finally { pkcs8.fill(0); }
    cache.set(key, handle);
  }
  return handle;
}

export type PeerIdentity = { family: 'unix'; uid: number; gid: number; pid: number } | { family: 'vsock'; cid: number; port: number };

let addon: NativeAddon | undefined;
export function native(): NativeAddon {
  if (!addon) {
    const require = createRequire(import.meta.url);
    // Next to the code in the enclave image (a bundle), else where node-gyp builds it in the source tree.
    const besideBundle = new URL('./native.node', import.meta.url).pathname;
    // NITRO_ACM_NATIVE: another build of it (scripts/test-asan.sh's sanitizer build).
    const file = process.env.NITRO_ACM_NATIVE || (fs.existsSync(besideBundle) ? besideBundle : new URL('./native/build/Release/native.node', import.meta.url).pathname);
    try { addon = require(file) as NativeAddon; } catch (e) {
      throw new Error(`native addon not built (${file}): run "npm run build:native" (${(e as Error).message.split('\n')[0]})`);
    }
  }
  return addon;
}
