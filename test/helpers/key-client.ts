// A minimal key-channel client for protocol tests (the real client is the C module).
import net from 'node:net';
import { FrameSplitter } from '../../shared/framing.ts';
import { MAX_RESPONSE, decodeResponse, encodeRequest, type Request, type Response } from '../../shared/key-wire.ts';

export class ConnectionClosed extends Error {}

export class KeyClient {
  private waiting = new Map<number, { resolve: (r: Response) => void; reject: (e: Error) => void }>();
  private nextId = 1;
  closed: Promise<void>;
  private constructor(readonly sock: net.Socket) {
    const splitter = new FrameSplitter(MAX_RESPONSE, (f) => {
      const r = decodeResponse(f);
      this.waiting.get(r.id)?.resolve(r);
      this.waiting.delete(r.id);
    });
    sock.on('data', (d) => splitter.push(d));
    this.closed = new Promise((r) => sock.on('close', () => {
      // The enclave closed the connection: what is still waiting will not be answered.
      for (const w of this.waiting.values()) w.reject(new ConnectionClosed('the enclave closed the connection'));
      this.waiting.clear();
      r();
    }));
    sock.on('error', () => {});
  }
  static connect(path: string): Promise<KeyClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(path, () => resolve(new KeyClient(s)));
      s.once('error', reject);
    });
  }
  call(req: Request): Promise<Response> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      if (this.sock.destroyed) { reject(new ConnectionClosed('the connection is closed')); return; }
      this.waiting.set(id, { resolve, reject });
      this.sock.write(encodeRequest(id, req));
    });
  }
  close(): void { this.sock.destroy(); }
}
