// The key channel server (docs/protocol.md): public object lists, login, and one
// round trip per private-key operation, several in flight per connection.
import net from 'node:net';
import fs from 'node:fs';
import { FrameSplitter, FrameTooLarge } from '../src/shared/framing.ts';
import { DecodeError } from '../src/shared/bytes.ts';
import { CKR, P11Error } from '../src/shared/pkcs11-rv.ts';
import { KEY_WIRE_VERSION, MAX_REQUEST, Op, REQUEST_HEADER, decodeRequest, encodeResponse, readRequestHeader, type Request } from '../src/shared/key-wire.ts';
import { listen } from '../src/shared/transport.ts';
import type { Address } from '../src/shared/address.ts';
import { log } from '../src/shared/log.ts';
import type { KeyStore } from './keystore.ts';
import type { CryptoPool } from './crypto-pool.ts';

export interface KeyServerOptions {
  /** Requests in flight per connection before reading pauses (bounds memory per client). */
  maxInFlight?: number;
  maxConnections?: number;
  /** Wrong PINs on one connection before each further attempt is delayed. */
  pinAttemptsBeforeDelay?: number;
}

export class KeyServer {
  readonly server: net.Server;
  private connections = new Set<net.Socket>();
  private readonly maxInFlight: number;
  private readonly pinAttemptsBeforeDelay: number;

  constructor(private readonly store: KeyStore, private readonly pool: CryptoPool, opts: KeyServerOptions = {}) {
    this.maxInFlight = opts.maxInFlight ?? 64;
    this.pinAttemptsBeforeDelay = opts.pinAttemptsBeforeDelay ?? 3;
    this.server = net.createServer({ noDelay: true } as net.ServerOpts, (s) => this.accept(s));
    this.server.maxConnections = opts.maxConnections ?? 4096;
  }

  async listen(address: Address): Promise<void> {
    await listen(this.server, address);
    // Local mode: the web server's workers (another user) connect too; the PIN guards the keys.
    if (address.kind === 'unix') fs.chmodSync(address.path, 0o666);
  }

  async close(): Promise<void> {
    for (const s of this.connections) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  private accept(sock: net.Socket): void {
    this.connections.add(sock);
    const loggedIn = new Set<string>();
    let inFlight = 0, paused = false, wrongPins = 0;
    const send = (frame: Buffer) => { if (!sock.destroyed) sock.write(frame); };
    const settle = () => {
      inFlight--;
      if (paused && inFlight < this.maxInFlight / 2) { paused = false; sock.resume(); }
    };

    const handle = async (frame: Buffer) => {
      const hdr = readRequestHeader(frame);
      const reply = (rv: number, body?: Uint8Array) => send(encodeResponse(hdr.op, hdr.id, rv, this.store.generation, body));
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
          case Op.LIST: reply(CKR.OK, this.store.listBody()); return;
          case Op.LOGIN: {
            if (wrongPins >= this.pinAttemptsBeforeDelay) {
              // Throttle guessing: each further attempt on this connection waits longer (max 5 s).
              await new Promise((r) => setTimeout(r, Math.min(5000, 100 * 2 ** (wrongPins - this.pinAttemptsBeforeDelay))));
            }
            if (!this.store.token(req.label)) { reply(CKR.TOKEN_NOT_PRESENT); return; }
            if (!this.store.checkPin(req.label, req.pin)) {
              wrongPins++;
              log.token(req.label).warn(`key channel: wrong PIN (${wrongPins} on this connection)`);
              reply(CKR.PIN_INCORRECT);
              return;
            }
            wrongPins = 0;
            loggedIn.add(req.label);
            reply(CKR.OK);
            return;
          }
          case Op.LOGOUT: loggedIn.delete(req.label); reply(CKR.OK); return;
          case Op.SIGN:
          case Op.DECRYPT: {
            const found = this.store.key(req.keyId);
            if (!found) { reply(CKR.KEY_HANDLE_INVALID, Buffer.from(`no key ${req.keyId}`)); return; }
            if (!loggedIn.has(found.token.label)) { reply(CKR.USER_NOT_LOGGED_IN); return; }
            const { key } = found;
            const out = req.op === Op.SIGN
              ? await this.pool.sign({ key: key.privateKey, modulusBits: key.modulusBits, scheme: req.scheme, hash: req.hash, mgfHash: req.mgfHash, saltLength: req.saltLength, data: req.data })
              : await this.pool.decrypt({ key: key.privateKey, modulusBits: key.modulusBits, scheme: req.scheme, hash: req.hash, mgfHash: req.mgfHash, oaepLabel: req.oaepLabel, data: req.data });
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

    const splitter = new FrameSplitter(MAX_REQUEST, (frame) => {
      if (frame.length < REQUEST_HEADER) throw new DecodeError(`request of ${frame.length} bytes is shorter than its header`);
      inFlight++;
      if (inFlight >= this.maxInFlight && !paused) { paused = true; sock.pause(); }
      handle(frame).catch((e) => log.error(`key channel: ${(e as Error).message}`)).finally(settle);
    });
    sock.on('data', (chunk: Buffer) => {
      try { splitter.push(chunk); } catch (e) {
        if (e instanceof FrameTooLarge || e instanceof DecodeError) log.warn(`key channel: dropping a client: ${e.message}`);
        else log.error(`key channel: ${(e as Error).message}`);
        sock.destroy();
      }
    });
    sock.on('error', () => { /* the peer went away; nothing to clean beyond close */ });
    sock.on('close', () => this.connections.delete(sock));
  }
}
