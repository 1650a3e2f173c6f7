// KMS Decrypt from inside the enclave, the way only the enclave can: an ephemeral
// RSA-2048 key pair, its public key in an NSM attestation document sent as the
// Recipient, and the answer (CiphertextForRecipient) unwrapped with the private
// key, which never leaves this file. The HTTPS connection to KMS is
// dialed through the parent's proxy (vsock in production, a unix socket in local
// mode) and TLS ends here, inside the enclave.
import crypto from 'node:crypto';
import https from 'node:https';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { KMSClient, DecryptCommand } from '@aws-sdk/client-kms';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { dialSync } from '../shared/transport.ts';
import type { Address } from '../shared/address.ts';
import { unwrapCiphertextForRecipient } from '../shared/cms.ts';
import { kmsHost } from '../shared/aws-partition.ts';
import type { Nsm } from './nsm.ts';

export interface AwsCredentials { accessKeyId: string; secretAccessKey: string; sessionToken?: string }

export interface KmsAccess {
  /** Where the parent's KMS proxy listens for this enclave. */
  proxy: Address;
  /** Extra CA for KMS's TLS certificate (local mode's local cloud); production uses Node's bundled roots. */
  extraCa?: string;
  timeoutMs?: number;
}

const generateKeyPair = promisify(crypto.generateKeyPair);

/**
 * RSA-2048 key generation (tens to hundreds of ms, random) and the attestation
 * document were the slowest steps of a decrypt, and KMS needs neither to be new
 * per request: it accepts a document up to 5 minutes old. So one key pair and
 * its document serve every Decrypt for RECIPIENT_REUSE_MS (after an enclave
 * restart, every token of the agent at once), then both are dropped and the next
 * request makes new ones. The private key stays in this file's memory only.
 */
export const RECIPIENT_REUSE_MS = 60_000;
interface Recipient { privateKey: crypto.KeyObject; attestation: Buffer }
const recipients = new WeakMap<Nsm, { made: Promise<Recipient>; until: number }>();

function recipient(nsm: Nsm): Promise<Recipient> {
  const have = recipients.get(nsm);
  if (have && Date.now() < have.until) return have.made;
  const made = generateKeyPair('rsa', { modulusLength: 2048 }).then(({ publicKey, privateKey }) => ({
    privateKey,
    attestation: nsm.attestation({ publicKey: publicKey.export({ type: 'spki', format: 'der' }) }),
  }));
  const entry = { made, until: Date.now() + RECIPIENT_REUSE_MS };
  const drop = () => { if (recipients.get(nsm) === entry) recipients.delete(nsm); };
  made.catch(drop);
  // Dropped when its time is up even if no request comes after it.
  setTimeout(drop, RECIPIENT_REUSE_MS).unref();
  recipients.set(nsm, entry);
  return made;
}

/** Makes the first recipient key and document before any request (the enclave app calls it when it starts). */
export function prepareRecipient(nsm: Nsm): void {
  recipient(nsm).catch(() => { /* the first request tries again and reports it */ });
}

// Node's roots plus one (local mode's KMS): parsing ~150 certificates costs more
// than the rest of a TLS handshake, so it is done once.
let extraCaContext: { pem: string; context: tls.SecureContext } | undefined;
function contextWithExtraCa(pem: string): tls.SecureContext {
  if (extraCaContext?.pem !== pem) extraCaContext = { pem, context: tls.createSecureContext({ ca: [...tls.rootCertificates, pem] }) };
  return extraCaContext.context;
}

/**
 * Connections to KMS, kept open between Decrypts: a TLS handshake through the
 * proxy cost more than the rest of a Decrypt, and provisioning 1,000 tokens made
 * 1,000 of them. One pool per KMS host and proxy (credentials travel in each
 * request's signature, not in the connection). An idle connection is closed
 * after 4 s, before servers usually close theirs (Node's default is 5 s), so a
 * request rarely meets one closing; the SDK retries one that does.
 */
const pools = new Map<string, https.Agent>();
function kmsConnections(host: string, kms: KmsAccess): https.Agent {
  const key = JSON.stringify([host, kms.proxy, kms.extraCa ?? null]);
  let agent = pools.get(key);
  if (!agent) {
    agent = new https.Agent({ keepAlive: true, timeout: 4000, maxFreeSockets: 16 });
    const secureContext = kms.extraCa ? contextWithExtraCa(kms.extraCa) : undefined;
    // Every connection KMS needs goes through the proxy; the TLS session is ours.
    (agent as unknown as { createConnection: (opts: tls.ConnectionOptions) => tls.TLSSocket }).createConnection = () =>
      tls.connect({ socket: dialSync(kms.proxy, kms.timeoutMs ?? 5000), servername: host, secureContext });
    pools.set(key, agent);
  }
  return agent;
}

/**
 * Runs one Decrypt through the SDK up to the point where it would be sent (with
 * made-up values, to a handler that refuses it): the SDK's first request loads
 * and compiles most of its code, about a second on a small enclave, and after an
 * enclave restart every token waits for that first request.
 */
export async function warmUpKmsClient(): Promise<void> {
  const client = new KMSClient({
    region: 'us-east-1',
    credentials: { accessKeyId: 'WARMUP', secretAccessKey: 'WARMUP' },
    maxAttempts: 1,
    requestHandler: { handle: () => Promise.reject(new Error('warm-up: not sent')) },
  });
  try {
    await client.send(new DecryptCommand({ CiphertextBlob: Buffer.alloc(16), Recipient: { KeyEncryptionAlgorithm: 'RSAES_OAEP_SHA_256', AttestationDocument: Buffer.alloc(16) } }));
  } catch { /* expected */ } finally { client.destroy(); }
}

export async function attestedDecrypt(o: { ciphertext: Buffer; region: string; credentials: AwsCredentials; encryptionContext?: Record<string, string>; nsm: Nsm; kms: KmsAccess }): Promise<Buffer> {
  const { privateKey, attestation } = await recipient(o.nsm);
  const host = kmsHost(o.region); // throws for anything that is not a region
  const agent = kmsConnections(host, o.kms);
  const client = new KMSClient({
    region: o.region,
    credentials: o.credentials,
    endpoint: `https://${host}`,
    maxAttempts: 2,
    requestHandler: new NodeHttpHandler({ httpsAgent: agent, connectionTimeout: o.kms.timeoutMs ?? 5000, requestTimeout: o.kms.timeoutMs ?? 10_000 }),
  });
  // Not destroyed after use: client.destroy() destroys the handler's agent, the
  // shared pool, and with it the connections of Decrypts still under way.
  const r = await client.send(new DecryptCommand({
    CiphertextBlob: o.ciphertext,
    EncryptionContext: o.encryptionContext,
    Recipient: { KeyEncryptionAlgorithm: 'RSAES_OAEP_SHA_256', AttestationDocument: attestation },
  }));
  if (r.Plaintext) throw new Error('KMS returned a plaintext: the request did not carry the attestation, refusing it');
  if (!r.CiphertextForRecipient) throw new Error('KMS returned no CiphertextForRecipient');
  return unwrapCiphertextForRecipient(Buffer.from(r.CiphertextForRecipient), privateKey);
}
