// One key-channel connection, served on a key worker thread (docs/protocol.md).
// Private-key operations run right here, synchronously: this thread exists for
// them, so the enclave app's main event loop (provisioning, health) never waits
// on RSA, and a request costs no further hand-off between threads.
import type net from 'node:net';
import { PinThrottle, FREE_ATTEMPTS } from './pin-throttle.ts';
import { FrameSplitter, FrameTooLarge } from '../shared/framing.ts';
import { DecodeError } from '../shared/bytes.ts';
import { CKR, P11Error } from '../shared/pkcs11-rv.ts';
import { KEY_WIRE_VERSION, MAX_REQUEST, Op, REQUEST_HEADER, KeyType, decodeRequest, encodeResponseHead, readRequestHeader, type Request } from '../shared/key-wire.ts';
import { log } from '../shared/log.ts';
import { sign, decrypt } from './rsa-ops.ts';
import { ecdsaSign } from './ec-ops.ts';
import type { KeyView } from './keystore.ts';

export interface ConnectionOptions {
  /** Unsent reply bytes on one connection at which it stops taking requests until the client reads. */
  maxUnsentPerConnection?: number;
  /** Shared by the connections of one worker: the unsent bytes they may hold together. */
  replies?: ReplyBudget;
  /** Throttles wrong PINs across every connection and worker (enclave/pin-throttle.ts). */
  pins?: PinThrottle;
  /** Who is connected, for per-peer throttling and logs ("uid 33", "cid 3"); undefined when unknown. */
  peer?: string;
  /** Counts each private-key operation that reached a key (its token, done or failed, how long it took). */
  counted?: (token: string, op: 'sign' | 'decrypt', ok: boolean, seconds: number) => void;
}

/**
 * The unsent reply bytes of every connection on a worker. Each connection stops
 * taking requests at its own cap; this bounds the sum, so many clients that send
 * and never read cannot fill the enclave's memory between them: over the total,
 * the connection holding the most is closed.
 */
export class ReplyBudget {
  private readonly unsent = new Map<net.Socket, number>();
  private total = 0;
  closed = 0;
  constructor(readonly maxTotal = 32 * 1024 * 1024) {}

  /** Records a connection's unsent bytes now; closes the worst offender while over the total. */
  update(sock: net.Socket, bytes: number): void {
    this.total += bytes - (this.unsent.get(sock) ?? 0);
    if (bytes > 0) this.unsent.set(sock, bytes); else this.unsent.delete(sock);
    while (this.total > this.maxTotal && this.unsent.size > 0) {
      let worst = sock, most = -1;
      for (const [s, n] of this.unsent) if (n > most) { worst = s; most = n; }
      this.forget(worst);
      this.closed++;
      log.warn(`key channel: ${Math.round(this.total / 1048576 + most / 1048576)} MiB of replies unread on this worker: closing the client holding the most (${Math.round(most / 1024)} KiB; ${this.closed} closed so far)`);
      worst.destroy();
    }
  }

  forget(sock: net.Socket): void {
    this.total -= this.unsent.get(sock) ?? 0;
    this.unsent.delete(sock);
  }

  get unsentBytes(): number { return this.total; }
}

/** One line per token per 10 s per worker while its PIN is being guessed. */
const throttleLogs = new Map<string, { at: number; since: number }>();

export function serveKeyConnection(sock: net.Socket, view: () => KeyView, opts: ConnectionOptions = {}): void {
  const maxUnsent = opts.maxUnsentPerConnection ?? 256 * 1024;
  const replies = opts.replies ?? new ReplyBudget();
  const pins = opts.pins ?? new PinThrottle();
  const peer = opts.peer;
  /** Tokens this connection logged in to, with the identity each had then (a re-added token is another). */
  const loggedIn = new Map<string, string>();
  let waiting = false; // a throttled login holds the queue

  const send = (head: Buffer, body?: Uint8Array) => {
    if (sock.destroyed) return;
    if (!body?.length) sock.write(head);
    else {
      // One writev; the body is not copied, so a queued LIST reply shares the one list body.
      sock.cork();
      sock.write(head);
      sock.write(body);
      sock.uncork();
    }
    replies.update(sock, sock.writableLength);
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

  // Handles one request; returns a promise only when it must wait (PIN throttling).
  const handle = (frame: Buffer): Promise<void> | void => {
    const v = view();
    const hdr = readRequestHeader(frame);
    const reply = (rv: number, body?: Uint8Array) => send(encodeResponseHead(hdr.op, hdr.id, rv, v.generation, body?.length ?? 0), body);
    if (hdr.version !== KEY_WIRE_VERSION) {
      reply(CKR.DEVICE_ERROR, Buffer.from(`unsupported key channel version ${hdr.version}; this enclave speaks ${KEY_WIRE_VERSION}`));
      sock.end();
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
          const login = req;
          const keys = throttleKeys(login.label);
          const attempt = () => {
            const now = view();
            if (!now.hasToken(login.label)) { reply(CKR.TOKEN_NOT_PRESENT); return; }
            const ok = now.checkPin(login.label, login.pin);
            const inARow = pins.checked(keys, ok);
            if (!ok) { noteWrongPin(login.label, inARow, false); reply(CKR.PIN_INCORRECT); return; }
            loggedIn.set(login.label, now.identity(login.label)!);
            reply(CKR.OK);
          };
          const turn = pins.admit(keys);
          if (turn === 'locked') { noteWrongPin(login.label, FREE_ATTEMPTS, true); reply(CKR.PIN_LOCKED, Buffer.from('too many wrong PINs for this token: try again in a few seconds')); return; }
          if (turn.waitMs === 0) { attempt(); return; }
          return new Promise((resolve) => setTimeout(() => { attempt(); resolve(); }, turn.waitMs));
        }
        case Op.LOGOUT: loggedIn.delete(req.label); reply(CKR.OK); return;
        case Op.SIGN:
        case Op.DECRYPT: {
          const key = v.key(req.keyId);
          if (!key) { reply(CKR.KEY_HANDLE_INVALID, Buffer.from(`no key ${req.keyId}`)); return; }
          const identity = loggedIn.get(key.tokenLabel);
          if (identity === undefined || identity !== v.identity(key.tokenLabel)) { loggedIn.delete(key.tokenLabel); reply(CKR.USER_NOT_LOGGED_IN); return; }
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

  // Requests are taken out of what was received only while this connection's
  // unsent replies are under its cap and no throttled login holds it; otherwise
  // the socket stops reading, so what a client sends waits in the kernel, not here.
  const splitter = new FrameSplitter(MAX_REQUEST);
  const pump = () => {
    try {
      while (!waiting && sock.writableLength <= maxUnsent && !sock.destroyed) {
        const frame = splitter.next();
        if (!frame) break;
        if (frame.length < REQUEST_HEADER) throw new DecodeError(`request of ${frame.length} bytes is shorter than its header`);
        const pending = handle(frame);
        if (pending) {
          waiting = true;
          pending.then(() => { waiting = false; pump(); }, () => sock.destroy());
        }
      }
    } catch (e) {
      if (e instanceof FrameTooLarge || e instanceof DecodeError) log.warn(`key channel: dropping a client: ${e.message}`);
      else log.error(`key channel: ${(e as Error).message}`);
      sock.destroy();
      return;
    }
    // Holding more than a frame's worth unanswered: stop reading until it is answered.
    if (splitter.pending > REQUEST_HEADER + 4 && (waiting || sock.writableLength > maxUnsent)) sock.pause(); else sock.resume();
  };
  sock.on('drain', () => { replies.update(sock, sock.writableLength); pump(); });
  sock.on('data', (chunk: Buffer) => {
    try { splitter.feed(chunk); } catch (e) {
      log.warn(`key channel: dropping a client: ${(e as Error).message}`);
      sock.destroy();
      return;
    }
    pump();
  });
  sock.on('close', () => { replies.forget(sock); });
  sock.on('error', () => { /* the peer went away; 'close' follows */ });
}
