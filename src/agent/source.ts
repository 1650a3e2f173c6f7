// Where a token's keys come from: an ACM certificate associated with the
// instance role (ACM for Nitro Enclaves' S3 location), any S3 object made by
// `nitro-acm seal`, or a FileDb file on the instance. S3 fetches are conditional
// (If-None-Match with the last ETag), so an unchanged certificate costs one small
// request.
import fs from 'node:fs';
import { S3Client, GetObjectCommand, S3ServiceException } from '@aws-sdk/client-s3';
import { parseBundle, parseFileDb, BundleError, MAX_FILEDB, type Bundle, type FileDbKey } from '../../shared/bundle.ts';
import { parseS3Uri } from '../../shared/s3-uri.ts';
import type { InstanceContext } from './aws.ts';

export type TokenSource = { Acm: { certificate_arn: string; bucket?: string } } | { S3: { uri: string } };

/** Reads a FileDb source, a regular file (a FIFO or a device could block or never end); every error names the file. */
export function readFileDb(file: string): FileDbKey[] {
  let fd: number;
  try { fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK); } catch (e) {
    throw new BundleError(`${file}: cannot read the FileDb: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new BundleError(`${file}: the FileDb is not a regular file`);
    if (st.size > MAX_FILEDB) throw new BundleError(`${file}: the FileDb is ${st.size} bytes, larger than ${MAX_FILEDB}`);
    return parseFileDb(fs.readFileSync(fd), file);
  } finally { fs.closeSync(fd); }
}

export function s3Location(source: TokenSource, ctx: InstanceContext): { bucket: string; key: string } {
  if ('Acm' in source) {
    const suffix = source.Acm.bucket ?? 'prod';
    return { bucket: `${ctx.partition}-ec2-enclave-certificate-${ctx.region}-${suffix}`, key: `${ctx.roleArn}/${source.Acm.certificate_arn}` };
  }
  return parseS3Uri(source.S3.uri);
}

export type FetchResult = { changed: false; etag: string } | { changed: true; etag: string; bundle: Bundle };

/**
 * One S3 client per instance context, kept: a client per request opened a new TLS
 * connection to S3 for every token at every poll. cacheMiddleware: the client
 * builds a GetObject's middleware chain once, not on every request (it took a
 * fifth of the agent's CPU per poll; nothing here changes the chain later).
 */
const s3Clients = new WeakMap<InstanceContext, S3Client>();
function s3For(ctx: InstanceContext): S3Client {
  let c = s3Clients.get(ctx);
  if (!c) s3Clients.set(ctx, c = new S3Client({ region: ctx.region, credentials: ctx.credentials, endpoint: ctx.endpoints.s3, forcePathStyle: Boolean(ctx.endpoints.s3), cacheMiddleware: true }));
  return c;
}

export async function fetchBundle(source: TokenSource, ctx: InstanceContext, etag?: string): Promise<FetchResult> {
  const { bucket, key } = s3Location(source, ctx);
  const s3 = s3For(ctx);
  try {
    const r = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key, IfNoneMatch: etag }));
    const body = await r.Body!.transformToString();
    return { changed: true, etag: r.ETag ?? '', bundle: parseBundle(body, `s3://${bucket}/${key}`) };
  } catch (e) {
    if (e instanceof S3ServiceException && e.$metadata.httpStatusCode === 304 && etag) return { changed: false, etag };
    if (e instanceof S3ServiceException) throw new Error(`s3://${bucket}/${key}: ${e.name}${e.message && e.message !== e.name ? `: ${e.message}` : ''}`);
    if (e instanceof BundleError) throw e;
    throw new Error(`s3://${bucket}/${key}: cannot reach S3 (${ctx.endpoints.s3 ?? `s3.${ctx.region}.amazonaws.com`}): ${(e as Error).message}`);
  }
}
