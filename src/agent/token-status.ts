// One token as `nitro-acm status` shows it, and the agent's whole view: what the
// agent knows of each token and what the enclave holds. Never a PIN or a key.
import crypto from 'node:crypto';
import type { Health } from '../../shared/provision-wire.ts';
import type { TokenStateName, AttestationState } from './agent.ts';
import { curveByNodeName } from '../../shared/ec-curves.ts';
import type { TokenOperationStats } from '../../shared/operation-stats.ts';
import { ckaIdOf } from '../../shared/key-id.ts';
import type { AgentCounters } from './metrics.ts';
import { parseCertificate } from '../../shared/certificate-cache.ts';

/** One token as `nitro-acm status` shows it: what the agent knows and what the enclave holds. */
export interface TokenStatus {
  label: string;
  source: string;
  target: string;
  state: TokenStateName;
  error?: string;
  subject?: string;
  sans?: string[];
  notAfter?: string;
  keyType?: string;
  fingerprint256?: string;
  /** The pkcs11: URI of each key the token serves, for a web server or tool wired by hand; never the PIN itself. */
  uris?: string[];
  lastSync?: string;
  lastRefresh?: string;
  /** When this agent added the token to the enclave (see TokenState.addedAt). */
  addedAt?: string;
  /** From the enclave: whether it holds the token, when it last re-attested, old keys still in their grace period. */
  inEnclave: boolean;
  enclaveRefreshedAt?: string;
  retiredKeys?: number;
  /** From the enclave: signatures and decryptions since it started, and how long they took. */
  operations?: TokenOperationStats;
}
export interface AgentStatus {
  enclave: { reachable: boolean; health?: Health; error?: string; keyAddress?: string; provisionAddress?: string; attestation?: AttestationState };
  tokens: TokenStatus[];
  /** Since the agent started: enclave restarts, web-server reloads and failed reloads. */
  counters?: AgentCounters;
}

/** What the agent reads from a certificate, parsed once per certificate (a status of 1,000 tokens, or a metrics scrape, would parse each again). */
export interface CertificateInfo { x509: crypto.X509Certificate; facts: Pick<TokenStatus, 'subject' | 'sans' | 'notAfter' | 'keyType' | 'fingerprint256'>; ckaId: Buffer }

const infoCache = new Map<string, CertificateInfo>();
/** Certificates kept parsed: beyond this many (renewals over a long life) the cache starts again. */
const INFO_CACHE_MAX = 4096;

export function certificateInfo(pem: string): CertificateInfo {
  let info = infoCache.get(pem);
  if (info) return info;
  const c = parseCertificate(pem);
  const k = c.publicKey;
  const d = k.asymmetricKeyDetails;
  // As the enclave names them (nitro-acm status shows both): RSA-2048, EC-P256.
  const keyType = k.asymmetricKeyType === 'rsa' ? `RSA-${d?.modulusLength}` : k.asymmetricKeyType === 'ec' ? curveByNodeName(d?.namedCurve)?.shown ?? `EC-${d?.namedCurve}` : String(k.asymmetricKeyType);
  info = {
    x509: c,
    facts: { subject: c.subject.replace(/\n/g, ', '), sans: (c.subjectAltName ?? '').split(', ').filter(Boolean), notAfter: new Date(c.validTo).toISOString(), keyType, fingerprint256: c.fingerprint256 },
    ckaId: ckaIdOf(k),
  };
  if (infoCache.size >= INFO_CACHE_MAX) infoCache.clear();
  infoCache.set(pem, info);
  return info;
}

export function certificateFacts(pem: string): CertificateInfo['facts'] {
  return certificateInfo(pem).facts;
}

export const iso = (t?: number) => (t === undefined ? undefined : new Date(t).toISOString());
