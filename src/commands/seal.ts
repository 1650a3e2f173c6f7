// nitro-acm seal: turns a certificate, its chain and its private key into a
// bundle whose key only an attested enclave can decrypt (KMS Encrypt under a key
// whose policy pins the enclave's measurements), written to a file or to S3. Run
// it where the private key already is (a workstation, a CI secret store), never on
// the parent instance: the point is that the parent never sees the key.
import fs from 'node:fs';
import crypto from 'node:crypto';
import { KMSClient, EncryptCommand } from '@aws-sdk/client-kms';
import { S3Client, PutObjectCommand } from '@aws-sdk/client-s3';
import type { Bundle } from '../../shared/bundle.ts';
import { parseS3Uri } from '../../shared/s3-uri.ts';

export interface SealOptions {
  certificate: string;
  key: string;
  chain?: string;
  kmsKeyId: string;
  out?: string;
  s3?: string;
  region?: string;
  endpoint?: string;
  encryptionContext?: Record<string, string>;
}

export async function seal(o: SealOptions): Promise<{ bundle: Bundle; written: string }> {
  if (!o.out && !o.s3) throw new Error('give --out FILE or --s3 s3://bucket/key');
  const certificate = fs.readFileSync(o.certificate, 'utf8');
  const chain = o.chain ? fs.readFileSync(o.chain, 'utf8') : '';
  const keyPem = fs.readFileSync(o.key);
  const cert = new crypto.X509Certificate(certificate);
  let priv: crypto.KeyObject;
  try { priv = crypto.createPrivateKey(keyPem); } catch (e) { throw new Error(`${o.key}: not a PEM private key (${(e as Error).message.split('\n')[0]})`); }
  if (!cert.checkPrivateKey(priv)) throw new Error(`${o.key} is not the private key of ${o.certificate}`);
  const kms = new KMSClient({ region: o.region, endpoint: o.endpoint });
  const enc = await kms.send(new EncryptCommand({ KeyId: o.kmsKeyId, Plaintext: keyPem, EncryptionContext: o.encryptionContext }));
  const bundle: Bundle = { certificate, certificateChain: chain, encryptedPrivateKey: Buffer.from(enc.CiphertextBlob!).toString('base64'), encryptionMethod: 'KMS', ...(o.encryptionContext ? { encryptionContext: o.encryptionContext } : {}) };
  const body = JSON.stringify(bundle, null, 2) + '\n';
  if (o.out) {
    fs.writeFileSync(o.out, body, { mode: 0o644 });
    return { bundle, written: o.out };
  }
  const { bucket, key } = parseS3Uri(o.s3!);
  const s3 = new S3Client({ region: o.region, endpoint: o.endpoint, forcePathStyle: Boolean(o.endpoint) });
  await s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentType: 'application/json' }));
  return { bundle, written: o.s3! };
}
