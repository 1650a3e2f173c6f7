// The EC curves nitro-acm serves (those ACM issues certificates on), with every
// name each side needs for them: node:crypto's, JWK's, the one status shows, and
// CKA_EC_PARAMS (the DER of the curve's OID) that the key channel carries.
import { derOid } from './ber.ts';

export interface EcCurve { nodeName: string; jwk: string; shown: string; bits: number; params: Buffer }

export const EC_CURVES: readonly EcCurve[] = [
  { nodeName: 'prime256v1', jwk: 'P-256', shown: 'EC-P256', bits: 256, params: derOid('1.2.840.10045.3.1.7') },
  { nodeName: 'secp384r1', jwk: 'P-384', shown: 'EC-P384', bits: 384, params: derOid('1.3.132.0.34') },
];

export const curveByNodeName = (name: string | undefined) => EC_CURVES.find((c) => c.nodeName === name);
export const curveByParams = (params: Buffer) => EC_CURVES.find((c) => c.params.equals(params));
