// The Nitro Security Module: the interface the enclave app uses, and DeviceNsm,
// the real /dev/nsm in a Nitro enclave, through one ioctl in the native addon,
// with CBOR requests (Attestation, DescribePCR, GetRandom, DescribeNSM) as the
// NSM API defines them. Local mode's stand-in is enclave/nsm-simulated.ts, which
// the production image leaves out.
import fs from 'node:fs';
import { decodeCbor, encodeCbor, type CborValue } from '../shared/cbor.ts';
import { native } from '../shared/native.ts';

export interface AttestationRequest { publicKey?: Buffer; userData?: Buffer; nonce?: Buffer }

export interface Nsm {
  readonly kind: 'device' | 'simulated';
  attestation(req: AttestationRequest): Buffer;
  describePcr(index: number): { locked: boolean; data: Buffer };
  getRandom(): Buffer;
  describe(): { moduleId: string; digest: string; maxPcrs: number; lockedPcrs: number[] };
}

export class NsmError extends Error {}

export const NSM_DEVICE = '/dev/nsm';

/** The real NSM. */
export class DeviceNsm implements Nsm {
  readonly kind = 'device' as const;
  private constructor(private readonly fd: number) {}

  static open(device = NSM_DEVICE): DeviceNsm {
    try { return new DeviceNsm(fs.openSync(device, 'r+')); } catch (e) {
      throw new NsmError(`cannot open ${device} (${(e as NodeJS.ErrnoException).code}): not running in a Nitro enclave? Local mode uses the simulated NSM.`);
    }
  }

  private request(name: string, args: CborValue): Map<CborValue, CborValue> {
    const req = args === null ? encodeCbor(name) : encodeCbor(new Map<CborValue, CborValue>([[name, args]]));
    const res = decodeCbor(native().nsmRequest(this.fd, req));
    if (!(res instanceof Map)) throw new NsmError(`NSM answered ${name} with something that is not a map`);
    if (res.has('Error')) throw new NsmError(`NSM refused ${name}: ${String(res.get('Error'))}`);
    const body = res.get(name);
    if (!(body instanceof Map)) throw new NsmError(`NSM answered ${name} without a ${name} body`);
    return body;
  }

  attestation(req: AttestationRequest): Buffer {
    const body = this.request('Attestation', new Map<CborValue, CborValue>([
      ['user_data', req.userData ?? null], ['nonce', req.nonce ?? null], ['public_key', req.publicKey ?? null],
    ]));
    const doc = body.get('document');
    if (!(doc instanceof Uint8Array)) throw new NsmError('NSM attestation without a document');
    return Buffer.from(doc);
  }

  describePcr(index: number): { locked: boolean; data: Buffer } {
    const body = this.request('DescribePCR', new Map<CborValue, CborValue>([['index', index]]));
    const data = body.get('data');
    if (!(data instanceof Uint8Array)) throw new NsmError(`NSM DescribePCR ${index} without data`);
    return { locked: body.get('lock') === true, data: Buffer.from(data) };
  }

  getRandom(): Buffer {
    const random = this.request('GetRandom', null).get('random');
    if (!(random instanceof Uint8Array)) throw new NsmError('NSM GetRandom without random bytes');
    return Buffer.from(random);
  }

  describe(): { moduleId: string; digest: string; maxPcrs: number; lockedPcrs: number[] } {
    const b = this.request('DescribeNSM', null);
    const locked = b.get('locked_pcrs');
    return { moduleId: String(b.get('module_id') ?? ''), digest: String(b.get('digest') ?? ''), maxPcrs: Number(b.get('max_pcrs') ?? 0), lockedPcrs: Array.isArray(locked) ? locked.map(Number) : [] };
  }
}
