// AWS regions and the DNS suffix of their partition, as the AWS SDK's partition
// table has them (regionRegex, dnsSuffix). The enclave builds the KMS host name it
// dials and checks TLS against from the region the agent sends: a region outside
// these patterns ("x.attacker.example#", "us-east-1.evil") is refused, never put
// into a host name.

interface Partition { id: string; pattern: RegExp; dnsSuffix: string }

// Most specific first: "us-gov-west-1" must not be taken for the commercial "us-...".
const PARTITIONS: Partition[] = [
  { id: 'aws-us-gov', pattern: /^us-gov-[a-z]+-[0-9]+$/, dnsSuffix: 'amazonaws.com' },
  { id: 'aws-iso', pattern: /^us-iso-[a-z]+-[0-9]+$/, dnsSuffix: 'c2s.ic.gov' },
  { id: 'aws-iso-b', pattern: /^us-isob-[a-z]+-[0-9]+$/, dnsSuffix: 'sc2s.sgov.gov' },
  { id: 'aws-iso-e', pattern: /^eu-isoe-[a-z]+-[0-9]+$/, dnsSuffix: 'cloud.adc-e.uk' },
  { id: 'aws-iso-f', pattern: /^us-isof-[a-z]+-[0-9]+$/, dnsSuffix: 'csp.hci.ic.gov' },
  { id: 'aws-eusc', pattern: /^eusc-de-[a-z]+-[0-9]+$/, dnsSuffix: 'amazonaws.eu' },
  { id: 'aws-cn', pattern: /^cn-[a-z]+-[0-9]+$/, dnsSuffix: 'amazonaws.com.cn' },
  { id: 'aws', pattern: /^(us|eu|ap|sa|ca|me|af|il|mx)-[a-z]+-[0-9]+$/, dnsSuffix: 'amazonaws.com' },
];

export class RegionError extends Error {}

/** The partition of a region; throws RegionError naming the region when it fits none. */
export function partitionOf(region: string): Partition {
  const p = PARTITIONS.find((x) => x.pattern.test(region));
  if (!p) throw new RegionError(`region "${region.slice(0, 64)}" is not an AWS region (such as us-east-1, cn-north-1, us-gov-west-1)`);
  return p;
}

/** kms.<region>.<partition's suffix>, for a valid region only. */
export function kmsHost(region: string): string {
  return `kms.${region}.${partitionOf(region).dnsSuffix}`;
}
