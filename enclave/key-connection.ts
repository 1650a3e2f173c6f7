// The requests of one key-channel connection, answered on a key worker thread
// (docs/protocol.md). The native key channel (shared/native/native.c) reads the
// connection and answers a valid SIGN for a logged-in token by itself; every
// other request comes here. Private-key operations run right here,
// synchronously: this thread exists for them, so the enclave app's main event
// loop (provisioning, health) never waits on RSA.
import { PinThrottle, FREE_ATTEMPTS } from './pin-throttle.ts';
import { CKR, P11Error } from '../shared/pkcs11-rv.ts';
import { KEY_WIRE_VERSION, Op, KeyType, decodeRequest, encodeResponseHead, readRequestHeader, type Request } from '../shared/key-wire.ts';
import { log } from '../shared/log.ts';
import { sign, decrypt } from './rsa-ops.ts';
import { ecdsaSign } from './ec-ops.ts';
import type { KeyView } from './keystore.ts';

export interface ConnectionOptions {
  /** Throttles wrong PINs across every connection and worker (enclave/pin-throttle.ts). */
  pins?: PinThrottle;
  /** Who is connected, for per-peer throttling and logs ("uid 33", "cid 3"); undefined when unknown. */
  peer?: string;
  /** Counts each private-key operation that reached a key (its token, done or failed, how long it took). */
  counted?: (token: string, op: 'sign' | 'decrypt', ok: boolean, seconds: number) => void;
}

/**
 * Where a connection's replies go (the native key channel on a key worker,
 * shared/native/native.c): it writes them in order, bounds what a client that
 * does not read may make the enclave hold, and signs by itself for a connection
 * logged in to the key's token, which `loggedIn` tells it.
 */
export interface KeyConnectionIo {
  send(head: Buffer, body?: Uint8Array): void;
  /** Closes once the replies sent are written. */
  end(): void;
  /** The connection's login to the token of this identity (Token.identity) began or ended. */
  loggedIn(identity: string, on: boolean): void;
}

/** One line per token per 10 s per worker while its PIN is being guessed. */
const throttleLogs = new Map<string, { at: number; since: number }>();

/**
 * The requests of one connection: `frame` answers one whole request frame (the
 * length prefix removed; at least a header long), in the order received. It
 * returns a promise only when the answer must wait (a throttled login); the
 * connection's later requests wait for it.
 */
export function keyConnection(io: KeyConnectionIo, view: () => KeyView, opts: ConnectionOptions = {}): { frame(frame: Buffer): Promise<void> | void } {
  const pins = opts.pins ?? new PinThrottle();
  const peer = opts.peer;
  /** Tokens this connection logged in to, with the identity each had then (a re-added token is another). */
  const loggedIn = new Map<string, string>();
  const login = (label: string, identity: string) => { loggedIn.set(label, identity); io.loggedIn(identity, true); };
  const logout = (label: string) => {
    const identity = loggedIn.get(label);
    if (identity === undefined) return;
    loggedIn.delete(label);
    io.loggedIn(identity, false);
  };

  const throttleKeys = (label: string) => peer?.startsWith('uid ') ? [`token ${label}`, `peer ${peer}`] : [`token ${label}`];
  const noteWrongPin = (label: string, inARow: number, locked: boolean) => {
    const entry = throttleLogs.get(label) ?? { at: 0, since: 0 };
    throttleLogs.set(label, entry);
    entry.since++;
    const now = Date.now();
    if (now - entry.at < 10_000) return;
    entry.at = now;
    if (throttleLogs.size > 1024) for (const [l, e] of throttleLogs) if (now - e.at > 10_000) throttleLogs.delete(l);
    const throttledSinceLog = entry.since;
    entry.since = 0;
    log.token(label).warn(`key channel: ${locked ? 'login refused unchecked, too many wrong PINs' : 'wrong PIN'} (${inARow} in a row for this token${peer ? `; this one from ${peer}` : ''}; ${throttledSinceLog} wrong or refused since the last such line); logins to it are throttled`);
  };

  const frame = (frame: Buffer): Promise<void> | void => {
    const v = view();
    const hdr = readRequestHeader(frame);
    const reply = (rv: number, body?: Uint8Array) => io.send(encodeResponseHead(hdr.op, hdr.id, rv, v.generation, body?.length ?? 0), body?.length ? body : undefined);
    if (hdr.version !== KEY_WIRE_VERSION) {
      reply(CKR.DEVICE_ERROR, Buffer.from(`unsupported key channel version ${hdr.version}; this enclave speaks ${KEY_WIRE_VERSION}`));
      io.end();
      return;
    }
    let req: Request;
    try { req = decodeRequest(frame); } catch (e) {
      reply(CKR.ARGUMENTS_BAD, Buffer.from((e as Error).message));
      return;
    }
    try {
      switch (req.op) {
        case Op.PING: reply(CKR.OK); return;
        case Op.LIST: reply(CKR.OK, v.listBody); return;
        case Op.LOGIN: {
          const asked = req;
          const keys = throttleKeys(asked.label);
          const attempt = () => {
            const now = view();
            if (!now.hasToken(asked.label)) { reply(CKR.TOKEN_NOT_PRESENT); return; }
            const ok = now.checkPin(asked.label, asked.pin);
            const inARow = pins.checked(keys, ok);
            if (!ok) { noteWrongPin(asked.label, inARow, false); reply(CKR.PIN_INCORRECT); return; }
            login(asked.label, now.identity(asked.label)!);
            reply(CKR.OK);
          };
          const turn = pins.admit(keys);
          if (turn === 'locked') { noteWrongPin(asked.label, FREE_ATTEMPTS, true); reply(CKR.PIN_LOCKED, Buffer.from('too many wrong PINs for this token: try again in a few seconds')); return; }
          if (turn.waitMs === 0) { attempt(); return; }
          return new Promise((resolve) => setTimeout(() => { attempt(); resolve(); }, turn.waitMs));
        }
        case Op.LOGOUT: logout(req.label); reply(CKR.OK); return;
        case Op.SIGN:
        case Op.DECRYPT: {
          const key = v.key(req.keyId);
          if (!key) { reply(CKR.KEY_HANDLE_INVALID, Buffer.from(`no key ${req.keyId}`)); return; }
          const identity = loggedIn.get(key.tokenLabel);
          if (identity === undefined || identity !== v.identity(key.tokenLabel)) { logout(key.tokenLabel); reply(CKR.USER_NOT_LOGGED_IN); return; }
          const started = process.hrtime.bigint();
          let out: Uint8Array | undefined;
          try {
            if (key.keyType === KeyType.EC && req.op === Op.DECRYPT) throw new P11Error(CKR.KEY_TYPE_INCONSISTENT, 'an EC key does not decrypt');
            out = key.keyType === KeyType.EC ? ecdsaSign(key.privateKey, req.scheme, req.data)
              : req.op === Op.SIGN
              ? sign({ key: key.privateKey, modulusBits: key.modulusBits, scheme: req.scheme, hash: req.hash, mgfHash: req.mgfHash, saltLength: req.saltLength, data: req.data })
              : decrypt({ key: key.privateKey, modulusBits: key.modulusBits, scheme: req.scheme, hash: req.hash, mgfHash: req.mgfHash, oaepLabel: req.oaepLabel, data: req.data });
          } finally {
            opts.counted?.(key.tokenLabel, req.op === Op.SIGN ? 'sign' : 'decrypt', out !== undefined, Number(process.hrtime.bigint() - started) / 1e9);
          }
          reply(CKR.OK, out);
          return;
        }
      }
    } catch (e) {
      const rv = e instanceof P11Error ? e.rv : CKR.GENERAL_ERROR;
      if (!(e instanceof P11Error)) log.error(`key channel: ${(e as Error).message}`);
      reply(rv, Buffer.from((e as Error).message));
    }
  };
  return { frame };
}
