// What the agent learns about its instance, through IMDSv2 and IAM, with the
// default credential chain (the instance role). Endpoints are overridable for
// local mode only; in production they are AWS's.
import { fromInstanceMetadata } from '@aws-sdk/credential-providers';
import type { AwsCredentialIdentity, AwsCredentialIdentityProvider } from '@aws-sdk/types';

/** kms: only nitro-acm assess's probe calls KMS from the parent (the enclave reaches KMS through the vsock proxy). */
export interface Endpoints { imds?: string; s3?: string; iam?: string; kms?: string }

export interface InstanceContext {
  region: string;
  partition: string;
  instanceId: string;
  roleArn: string;
  credentials: AwsCredentialIdentityProvider;
  endpoints: Endpoints;
}

async function imds(base: string, path: string, token: string): Promise<string | undefined> {
  const r = await fetch(`${base}${path}`, { headers: { 'x-aws-ec2-metadata-token': token }, signal: AbortSignal.timeout(3000) });
  if (r.status === 404) return undefined;
  if (!r.ok) throw new Error(`IMDS ${path}: HTTP ${r.status}`);
  return (await r.text()).trim();
}

/**
 * The role's credentials, fetched from IMDS again only when they are within 5
 * minutes of expiring: every token's provisioning needs them, and IMDS throttles
 * an instance that asks hundreds of times a second.
 */
function reuseUntilNearExpiry(fetch: AwsCredentialIdentityProvider): AwsCredentialIdentityProvider {
  let current: Promise<AwsCredentialIdentity> | undefined;
  let expires = 0;
  return () => {
    if (!current || Date.now() > expires - 5 * 60_000) {
      const p = fetch();
      current = p;
      expires = Infinity; // until the answer says when
      p.then((c) => { if (current === p) expires = c.expiration?.getTime() ?? Date.now() + 15 * 60_000; }, () => { if (current === p) current = undefined; });
    }
    return current;
  };
}

/** Region, partition, instance id, the role ARN (instance tag InstanceRoleArn, else iam:GetRole keeping the path) and credentials. */
export async function instanceContext(endpoints: Endpoints = {}): Promise<InstanceContext> {
  const base = endpoints.imds ?? 'http://169.254.169.254';
  const tr = await fetch(`${base}/latest/api/token`, { method: 'PUT', headers: { 'x-aws-ec2-metadata-token-ttl-seconds': '21600' }, signal: AbortSignal.timeout(3000) });
  if (!tr.ok) throw new Error(`IMDSv2 token: HTTP ${tr.status} from ${base}`);
  const token = await tr.text();
  const need = async (p: string) => { const v = await imds(base, p, token); if (!v) throw new Error(`IMDS ${p}: not found`); return v; };
  const region = await need('/latest/meta-data/placement/region');
  const partition = (await imds(base, '/latest/meta-data/services/partition', token)) ?? 'aws';
  const instanceId = await need('/latest/meta-data/instance-id');
  if (endpoints.imds) process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT = endpoints.imds;
  const credentials = reuseUntilNearExpiry(fromInstanceMetadata({ maxRetries: 2, timeout: 3000 }));
  let roleArn = await imds(base, '/latest/meta-data/tags/instance/InstanceRoleArn', token);
  if (!roleArn) {
    const roleName = await need('/latest/meta-data/iam/security-credentials/');
    // Loaded only here: an instance with the InstanceRoleArn tag never needs the
    // IAM client, which adds several MiB to the agent's memory.
    const { IAMClient, GetRoleCommand } = await import('@aws-sdk/client-iam');
    const iam = new IAMClient({ region, credentials, endpoint: endpoints.iam });
    roleArn = (await iam.send(new GetRoleCommand({ RoleName: roleName.split('\n')[0] }))).Role?.Arn;
    if (!roleArn) throw new Error(`iam:GetRole ${roleName}: no ARN`);
  }
  return { region, partition, instanceId, roleArn, credentials, endpoints };
}
