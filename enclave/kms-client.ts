// KMS Decrypt from inside the enclave, the way only the enclave can: a fresh
// RSA-2048 key pair per request, its public key in an NSM attestation document
// sent as the Recipient, and the answer (CiphertextForRecipient) unwrapped with the
// private key that never leaves this function. The HTTPS connection to KMS is
// dialed through the parent's proxy (vsock in production, a unix socket in local
// mode) and TLS ends here, inside the enclave.
import crypto from 'node:crypto';
import https from 'node:https';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { KMSClient, DecryptCommand } from '@aws-sdk/client-kms';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { dialSync } from '../src/shared/transport.ts';
import type { Address } from '../src/shared/address.ts';
import { unwrapCiphertextForRecipient } from '../src/shared/cms.ts';
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

export async function attestedDecrypt(o: { ciphertext: Buffer; region: string; credentials: AwsCredentials; encryptionContext?: Record<string, string>; nsm: Nsm; kms: KmsAccess }): Promise<Buffer> {
  const { publicKey, privateKey } = await generateKeyPair('rsa', { modulusLength: 2048 });
  const attestation = o.nsm.attestation({ publicKey: publicKey.export({ type: 'spki', format: 'der' }) });
  const host = `kms.${o.region}.amazonaws.com`;
  const agent = new https.Agent({ keepAlive: false });
  // Every connection KMS needs goes through the proxy; the TLS session is ours.
  (agent as unknown as { createConnection: (opts: tls.ConnectionOptions) => tls.TLSSocket }).createConnection = () =>
    tls.connect({ socket: dialSync(o.kms.proxy, o.kms.timeoutMs ?? 5000), servername: host, ca: o.kms.extraCa ? [...tls.rootCertificates, o.kms.extraCa] : undefined });
  const client = new KMSClient({
    region: o.region,
    credentials: o.credentials,
    endpoint: `https://${host}`,
    maxAttempts: 2,
    requestHandler: new NodeHttpHandler({ httpsAgent: agent, connectionTimeout: o.kms.timeoutMs ?? 5000, requestTimeout: o.kms.timeoutMs ?? 10_000 }),
  });
  try {
    const r = await client.send(new DecryptCommand({
      CiphertextBlob: o.ciphertext,
      EncryptionContext: o.encryptionContext,
      Recipient: { KeyEncryptionAlgorithm: 'RSAES_OAEP_SHA_256', AttestationDocument: attestation },
    }));
    if (r.Plaintext) throw new Error('KMS returned a plaintext: the request did not carry the attestation, refusing it');
    if (!r.CiphertextForRecipient) throw new Error('KMS returned no CiphertextForRecipient');
    return unwrapCiphertextForRecipient(Buffer.from(r.CiphertextForRecipient), privateKey);
  } finally {
    client.destroy();
    agent.destroy();
  }
}
