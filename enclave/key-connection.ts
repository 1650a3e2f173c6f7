// One key-channel connection, served on a key worker thread (docs/protocol.md).
// Private-key operations run right here, synchronously: this thread exists for
// them, so the enclave app's main event loop (provisioning, health) never waits
// on RSA, and a request costs no further hand-off between threads.
import type net from 'node:net';
import { FrameSplitter, FrameTooLarge } from '../src/shared/framing.ts';
import { DecodeError } from '../src/shared/bytes.ts';
import { CKR, P11Error } from '../src/shared/pkcs11-rv.ts';
import { KEY_WIRE_VERSION, MAX_REQUEST, Op, REQUEST_HEADER, decodeRequest, encodeResponse, readRequestHeader, type Request } from '../src/shared/key-wire.ts';
import { log } from '../src/shared/log.ts';
import { sign, decrypt } from './rsa-ops.ts';
import type { KeyView } from './keystore.ts';

export interface ConnectionOptions {
  /** Wrong PINs on one connection before each further attempt is delayed (doubling, at most 5 s). */
  pinAttemptsBeforeDelay?: number;
  /** Unsent reply bytes at which reading pauses until the client catches up. */
  maxPendingWrite?: number;
}

export function serveKeyConnection(sock: net.Socket, view: () => KeyView, opts: ConnectionOptions = {}): void {
  const pinAttemptsBeforeDelay = opts.pinAttemptsBeforeDelay ?? 3;
  const maxPendingWrite = opts.maxPendingWrite ?? 1024 * 1024;
  const loggedIn = new Set<string>();
  let wrongPins = 0;
  const queue: Buffer[] = [];
  let waiting = false; // a throttled login holds the queue

  const send = (frame: Buffer) => {
    if (sock.destroyed) return;
    if (!sock.write(frame) && sock.writableLength > maxPendingWrite) {
      sock.pause();
      sock.once('drain', () => sock.resume());
    }
  };

  // Handles one request; returns a promise only when it must wait (PIN throttling).
  const handle = (frame: Buffer): Promise<void> | void => {
    const v = view();
    const hdr = readRequestHeader(frame);
    const reply = (rv: number, body?: Uint8Array) => send(encodeResponse(hdr.op, hdr.id, rv, v.generation, body));
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
          const attempt = () => {
            const now = view();
            if (!now.hasToken(login.label)) { reply(CKR.TOKEN_NOT_PRESENT); return; }
            if (!now.checkPin(login.label, login.pin)) {
              wrongPins++;
              log.token(login.label).warn(`key channel: wrong PIN (${wrongPins} in a row on this connection)`);
              reply(CKR.PIN_INCORRECT);
              return;
            }
            wrongPins = 0;
            loggedIn.add(login.label);
            reply(CKR.OK);
          };
          if (wrongPins < pinAttemptsBeforeDelay) { attempt(); return; }
          const delay = Math.min(5000, 100 * 2 ** (wrongPins - pinAttemptsBeforeDelay));
          return new Promise((resolve) => setTimeout(() => { attempt(); resolve(); }, delay));
        }
        case Op.LOGOUT: loggedIn.delete(req.label); reply(CKR.OK); return;
        case Op.SIGN:
        case Op.DECRYPT: {
          const key = v.key(req.keyId);
          if (!key) { reply(CKR.KEY_HANDLE_INVALID, Buffer.from(`no key ${req.keyId}`)); return; }
          if (!loggedIn.has(key.tokenLabel)) { reply(CKR.USER_NOT_LOGGED_IN); return; }
          const out = req.op === Op.SIGN
            ? sign({ key: key.privateKey, modulusBits: key.modulusBits, scheme: req.scheme, hash: req.hash, mgfHash: req.mgfHash, saltLength: req.saltLength, data: req.data })
            : decrypt({ key: key.privateKey, modulusBits: key.modulusBits, scheme: req.scheme, hash: req.hash, mgfHash: req.mgfHash, oaepLabel: req.oaepLabel, data: req.data });
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

  const drain = () => {
    while (!waiting && queue.length > 0) {
      const pending = handle(queue.shift()!);
      if (pending) {
        waiting = true;
        sock.pause();
        pending.then(() => { waiting = false; sock.resume(); drain(); }, () => sock.destroy());
      }
    }
  };

  const splitter = new FrameSplitter(MAX_REQUEST, (frame) => {
    if (frame.length < REQUEST_HEADER) throw new DecodeError(`request of ${frame.length} bytes is shorter than its header`);
    queue.push(frame);
  });
  sock.on('data', (chunk: Buffer) => {
    try { splitter.push(chunk); } catch (e) {
      if (e instanceof FrameTooLarge || e instanceof DecodeError) log.warn(`key channel: dropping a client: ${e.message}`);
      else log.error(`key channel: ${(e as Error).message}`);
      sock.destroy();
      return;
    }
    drain();
  });
  sock.on('error', () => { /* the peer went away; 'close' follows */ });
}
