// Where a token's bundle comes from: an ACM certificate associated with the
// instance role (ACM for Nitro Enclaves' S3 location), or any S3 object made by
// `nitro-acm seal`. Fetches are conditional (If-None-Match with the last ETag), so
// an unchanged certificate costs one small request.
import { S3Client, GetObjectCommand, S3ServiceException } from '@aws-sdk/client-s3';
import { parseBundle, BundleError, type Bundle } from '../shared/bundle.ts';
import { parseS3Uri } from '../commands/seal.ts';
import type { InstanceContext } from './aws.ts';

export type TokenSource = { Acm: { certificate_arn: string; bucket?: string } } | { S3: { uri: string } };

export function s3Location(source: TokenSource, ctx: InstanceContext): { bucket: string; key: string } {
  if ('Acm' in source) {
    const suffix = source.Acm.bucket ?? 'prod';
    return { bucket: `${ctx.partition}-ec2-enclave-certificate-${ctx.region}-${suffix}`, key: `${ctx.roleArn}/${source.Acm.certificate_arn}` };
  }
  return parseS3Uri(source.S3.uri);
}

export type FetchResult = { changed: false; etag: string } | { changed: true; etag: string; bundle: Bundle };

export async function fetchBundle(source: TokenSource, ctx: InstanceContext, etag?: string): Promise<FetchResult> {
  const { bucket, key } = s3Location(source, ctx);
  const s3 = new S3Client({ region: ctx.region, credentials: ctx.credentials, endpoint: ctx.endpoints.s3, forcePathStyle: Boolean(ctx.endpoints.s3) });
  try {
    const r = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key, IfNoneMatch: etag }));
    const body = await r.Body!.transformToString();
    return { changed: true, etag: r.ETag ?? '', bundle: parseBundle(body, `s3://${bucket}/${key}`) };
  } catch (e) {
    if (e instanceof S3ServiceException && e.$metadata.httpStatusCode === 304 && etag) return { changed: false, etag };
    if (e instanceof S3ServiceException) throw new Error(`s3://${bucket}/${key}: ${e.name}${e.message && e.message !== e.name ? `: ${e.message}` : ''}`);
    if (e instanceof BundleError) throw e;
    throw new Error(`s3://${bucket}/${key}: cannot reach S3 (${ctx.endpoints.s3 ?? `s3.${ctx.region}.amazonaws.com`}): ${(e as Error).message}`);
  } finally {
    s3.destroy();
  }
}
