// PCR arithmetic as the Nitro hypervisor does it: a PCR starts as 48 zero bytes
// and is extended with SHA-384(PCR || data). PCR3 is extended with the parent
// instance's IAM role ARN, PCR4 with its instance id (user guide, "Where to get
// an enclave's measurements").
import crypto from 'node:crypto';

export const PCR_LENGTH = 48;

export function extendPcr(pcr: Buffer, data: Buffer | string): Buffer {
  return crypto.createHash('sha384').update(pcr).update(data).digest();
}

/** The value of a PCR extended once from zero with `data`. */
export function pcrOf(data: Buffer | string): Buffer {
  return extendPcr(Buffer.alloc(PCR_LENGTH), data);
}

/** KMS key policy condition keys for PCRs: kms:RecipientAttestation:PCR<n>. */
export function pcrConditionKey(index: number): string {
  return `kms:RecipientAttestation:PCR${index}`;
}
