// Open connections ordered by when each last sent something, for servers that
// must stay reachable when someone holds many connections open: at the limit the
// server closes the one quiet longest. A well-behaved client that loses an idle
// connection this way just reconnects on its next request.
import type net from 'node:net';

export class ConnectionsByActivity {
  // A Set iterates in insertion order; re-inserting on activity keeps the quietest first.
  private readonly open = new Set<net.Socket>();

  get size(): number { return this.open.size; }

  track(sock: net.Socket): void {
    this.open.add(sock);
    sock.on('data', () => { if (this.open.delete(sock)) this.open.add(sock); });
    sock.on('close', () => { this.open.delete(sock); });
  }

  /** Closes the connection quiet longest; false if there is none. */
  closeIdlest(): boolean {
    const idlest = this.open.values().next().value;
    if (!idlest) return false;
    this.open.delete(idlest);
    idlest.destroy();
    return true;
  }
}
