// s3://bucket/key, as acm.yaml's S3 source and `nitro-acm seal --s3` take it.
export function parseS3Uri(uri: string): { bucket: string; key: string } {
  const m = /^s3:\/\/([^/]+)\/(.+)$/.exec(uri);
  if (!m) throw new Error(`"${uri}" is not an S3 URI (s3://bucket/key)`);
  return { bucket: m[1], key: m[2] };
}
