// Certificates parsed once for the moments the same text is parsed again: the
// bundle's check and then the key store (or the agent's status) read the same
// leaf, and the chain is usually the same intermediate for every token. Parsing
// costs ~0.25 ms, on the enclave app's main thread while it provisions.
import { X509Certificate } from 'node:crypto';

/** Few: a parsed certificate holds several KiB of native memory, and only recent ones are asked for again. */
const MAX = 64;
const recent = new Map<string, X509Certificate>();

/** The certificate in this PEM text (throws as `new X509Certificate` does). */
export function parseCertificate(pem: string): X509Certificate {
  let c = recent.get(pem);
  if (c) {
    recent.delete(pem); // to the back: most recently used
  } else {
    c = new X509Certificate(pem);
    if (recent.size >= MAX) recent.delete(recent.keys().next().value!);
  }
  recent.set(pem, c);
  return c;
}
