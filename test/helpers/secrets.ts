// What a private key looks like in bytes, for scans that prove it is not somewhere.
import crypto from 'node:crypto';
import fs from 'node:fs';

export function keyNeedles(keyPem: string): { name: string; bytes: Buffer }[] {
  const key = crypto.createPrivateKey(keyPem);
  const jwk = key.export({ format: 'jwk' });
  const b64 = keyPem.replace(/-----[^-]+-----|\s/g, '');
  const needles = [
    { name: 'PEM body (first 64 chars)', bytes: Buffer.from(b64.slice(0, 64)) },
    { name: 'PKCS#8 DER', bytes: key.export({ type: 'pkcs8', format: 'der' }) },
    { name: 'PKCS#1 DER', bytes: key.export({ type: 'pkcs1', format: 'der' }) },
  ];
  for (const f of ['d', 'p', 'q', 'dp', 'dq', 'qi'] as const) {
    // Any 32-byte window of the component is enough to give it away; the middle one is checked.
    const v = Buffer.from(jwk[f]!, 'base64url');
    const mid = Math.floor(v.length / 2);
    needles.push({ name: `${f} (raw bytes)`, bytes: v.subarray(mid - 16, mid + 16) });
    needles.push({ name: `${f} (base64url)`, bytes: Buffer.from(jwk[f]!.slice(8, 48)) });
  }
  return needles;
}

/** Names of the needles found in the haystack. */
export function findSecrets(haystack: Buffer, needles: { name: string; bytes: Buffer }[]): string[] {
  return needles.filter((n) => haystack.includes(n.bytes)).map((n) => n.name);
}

/**
 * Searches a running process's memory for the needles: what a core dump of it would
 * hold (every readable mapping), read through /proc/PID/mem while the process is
 * stopped, in chunks that overlap by the longest needle so nothing is missed at a
 * boundary. (gcore writes the same bytes, but a Node process reserves tens of GiB
 * of address space it never touches, and writing that takes minutes.) Returns the
 * names found and how many bytes of memory were searched.
 */
export function findSecretsInMemory(pid: number, needles: { name: string; bytes: Buffer }[]): { found: string[]; searched: number } {
  const overlap = Math.max(...needles.map((n) => n.bytes.length));
  const chunk = Buffer.alloc(16 * 1024 * 1024 + overlap);
  const found = new Set<string>();
  let searched = 0;
  process.kill(pid, 'SIGSTOP');
  const fd = fs.openSync(`/proc/${pid}/mem`, 'r');
  try {
    for (const line of fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4})\s+\S+\s+\S+\s+\S+\s*(.*)$/.exec(line);
      if (!m || m[3][0] !== 'r' || m[4] === '[vvar]' || m[4] === '[vsyscall]') continue;
      const start = BigInt(`0x${m[1]}`), end = BigInt(`0x${m[2]}`);
      for (let at = start; at < end; at += BigInt(chunk.length - overlap)) {
        const want = Number(end - at < BigInt(chunk.length) ? end - at : BigInt(chunk.length));
        let n: number;
        try { n = fs.readSync(fd, chunk, 0, want, at); } catch { break; } // a mapping that cannot be read (device memory)
        const view = chunk.subarray(0, n);
        for (const nd of needles) if (!found.has(nd.name) && view.includes(nd.bytes)) found.add(nd.name);
        searched += n;
        if (n < want) break;
      }
    }
  } finally {
    fs.closeSync(fd);
    process.kill(pid, 'SIGCONT');
  }
  return { found: [...found], searched };
}
