// Before a web server is pointed at a new key, the agent signs a random challenge
// through the same path nginx will use (our PKCS#11 module, via pkcs11js) and
// verifies it with the certificate's public key: a token that cannot sign, or signs
// with the wrong key, never reaches a web server's configuration.
import crypto from 'node:crypto';
import pkcs11js from 'pkcs11js';
import { BUILT_MODULE } from '../paths.ts';
import { curveByParams } from '../../shared/ec-curves.ts';
import { certificateInfo } from './token-status.ts';

export class ChallengeError extends Error {}

// pkcs11js directly, not a wrapper over it: graphene-pk11 and its ASN.1 libraries
// held about 14 MiB of the agent's resident memory for these few calls.
let loaded: { p11: pkcs11js.PKCS11; address: string } | undefined;

function moduleFor(address: string, modulePath: string): pkcs11js.PKCS11 {
  if (loaded) {
    if (loaded.address !== address) throw new ChallengeError(`the PKCS#11 module is already talking to ${loaded.address}, not ${address}`);
    return loaded.p11;
  }
  process.env.NITRO_ACM_KEY_ADDRESS = address; // read by the module at C_Initialize
  const p11 = new pkcs11js.PKCS11();
  p11.load(modulePath);
  p11.C_Initialize();
  loaded = { p11, address };
  return p11;
}

/** Per module: the label of each slot whose token has been read (slot id, hex -> label), and the slot of each label read. */
const readSlots = new WeakMap<pkcs11js.PKCS11, { labelOf: Map<string, string>; slotOf: Map<string, Buffer> }>();

const tokenLabel = (p11: pkcs11js.PKCS11, slot: Buffer) => p11.C_GetTokenInfo(slot).label.trim();

/**
 * The slot of the token with this label. The module keeps a label's slot id for
 * its life (docs/protocol.md), so each slot's label is read once, and a slot
 * remembered for this label is only checked again (one PKCS#11 call). Listing
 * every slot costs as much as there are tokens: once per challenge, with 1,000
 * tokens, that took 1 ms of each challenge; now it happens only for a label not
 * seen yet.
 */
function findSlot(p11: pkcs11js.PKCS11, label: string): Buffer | undefined {
  let read = readSlots.get(p11);
  if (!read) readSlots.set(p11, (read = { labelOf: new Map(), slotOf: new Map() }));
  const remembered = read.slotOf.get(label);
  if (remembered) {
    try {
      if (tokenLabel(p11, remembered) === label) return remembered;
    } catch { /* its token is gone: list the slots */ }
  }
  let found: Buffer | undefined;
  for (const slot of p11.C_GetSlotList(true)) {
    const hex = slot.toString('hex');
    if (read.labelOf.has(hex) && read.labelOf.get(hex) !== label) continue;
    const l = tokenLabel(p11, slot);
    read.labelOf.set(hex, l);
    read.slotOf.set(l, slot);
    if (l === label) found = slot;
  }
  return found;
}

/** The module asks the enclave for changes at most every 20 ms (p11-module SYNC_INTERVAL_MS); a look after that sees them. */
const MODULE_SYNC_MS = 25;

/** A key the token must serve: its CKA_ID, and the certificate its signatures must verify with (without one: the token's own public key object). */
export interface ExpectedKey { ckaId: Buffer; certificatePem?: string }

/** One attribute's value (the module answers every attribute these calls ask for). */
function attribute(p11: pkcs11js.PKCS11, session: Buffer, object: Buffer, type: number): Buffer {
  const [a] = p11.C_GetAttributeValue(session, object, [{ type }]);
  return a.value as Buffer;
}

/** A public key object's key, from its modulus and exponent (RSA) or its curve and point (EC). */
function publicKeyOf(p11: pkcs11js.PKCS11, session: Buffer, pub: Buffer): crypto.KeyObject {
  // CKA_KEY_TYPE is a CK_ULONG in the host's byte order (little-endian here); its values are small.
  const keyTypeBytes = attribute(p11, session, pub, pkcs11js.CKA_KEY_TYPE);
  const keyType = keyTypeBytes.readUIntLE(0, Math.min(6, keyTypeBytes.length));
  if (keyType === pkcs11js.CKK_EC) {
    const params = attribute(p11, session, pub, pkcs11js.CKA_EC_PARAMS);
    const pointDer = attribute(p11, session, pub, pkcs11js.CKA_EC_POINT);
    const crv = curveByParams(params)?.jwk;
    // CKA_EC_POINT is a DER OCTET STRING around 04 || X || Y.
    const point = pointDer.subarray(pointDer[1] & 0x80 ? 2 + (pointDer[1] & 0x7f) : 2);
    if (!crv || point[0] !== 4) throw new ChallengeError(`public key object: EC parameters ${params.toString('hex')} or point not understood`);
    const half = (point.length - 1) / 2;
    return crypto.createPublicKey({ key: { kty: 'EC', crv, x: point.subarray(1, 1 + half).toString('base64url'), y: point.subarray(1 + half).toString('base64url') }, format: 'jwk' });
  }
  const n = attribute(p11, session, pub, pkcs11js.CKA_MODULUS);
  const e = attribute(p11, session, pub, pkcs11js.CKA_PUBLIC_EXPONENT);
  return crypto.createPublicKey({ key: { kty: 'RSA', n: n.toString('base64url'), e: e.toString('base64url') }, format: 'jwk' });
}

/** The session's objects of one class, by CKA_ID (hex). */
function objectsById(p11: pkcs11js.PKCS11, session: Buffer, cls: number): { count: number; m: Map<string, Buffer[]> } {
  p11.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_CLASS, value: cls }]);
  const found: Buffer[] = [];
  try {
    for (let batch = p11.C_FindObjects(session, 64); batch.length; batch = p11.C_FindObjects(session, 64)) found.push(...batch);
  } finally {
    p11.C_FindObjectsFinal(session);
  }
  const m = new Map<string, Buffer[]>();
  for (const o of found) {
    const id = attribute(p11, session, o, pkcs11js.CKA_ID).toString('hex');
    m.set(id, [...(m.get(id) ?? []), o]);
  }
  return { count: found.length, m };
}

/** Signs a fresh challenge with each of the token's keys through PKCS#11 and verifies it; rejects with a ChallengeError saying what failed. */
export async function verifyTokenSigns(o: { address: string; label: string; pin: string; keys: ExpectedKey[]; modulePath?: string }): Promise<void> {
  const p11 = moduleFor(o.address, o.modulePath ?? BUILT_MODULE);
  // A token added a moment after the module's last look (another token's
  // challenge) is listed on the next one.
  let slot = findSlot(p11, o.label);
  if (!slot) {
    await new Promise((r) => setTimeout(r, MODULE_SYNC_MS));
    slot = findSlot(p11, o.label);
  }
  if (!slot) throw new ChallengeError(`token "${o.label}" is not listed by the PKCS#11 module`);
  const session = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION);
  try {
    try { p11.C_Login(session, pkcs11js.CKU_USER, o.pin); } catch (e) {
      if (!String(e).includes('ALREADY_LOGGED_IN')) throw new ChallengeError(`token "${o.label}": login refused (${(e as Error).message.split('\n')[0]})`);
    }
    // The keys listed without an id are the current ones (a retired key is found
    // only by its id, and a key renewed back and forth has a retired twin with
    // the same id): each expected key must be among them exactly once.
    const privates = objectsById(p11, session, pkcs11js.CKO_PRIVATE_KEY);
    if (privates.count !== o.keys.length) throw new ChallengeError(`token "${o.label}": ${privates.count} private keys, expected ${o.keys.length}`);
    const publics = o.keys.some((k) => !k.certificatePem) ? objectsById(p11, session, pkcs11js.CKO_PUBLIC_KEY) : undefined;
    for (const want of o.keys) {
      const hex = want.ckaId.toString('hex');
      const id = `id ${hex}`;
      const keys = privates.m.get(hex) ?? [];
      if (keys.length !== 1) throw new ChallengeError(`token "${o.label}": ${keys.length} private keys with ${id}, expected 1`);
      let publicKey: crypto.KeyObject;
      if (want.certificatePem) publicKey = certificateInfo(want.certificatePem).x509.publicKey;
      else {
        const pub = publics!.m.get(hex) ?? [];
        if (pub.length !== 1) throw new ChallengeError(`token "${o.label}": ${pub.length} public keys with ${id}, expected 1`);
        publicKey = publicKeyOf(p11, session, pub[0]);
      }
      const ec = publicKey.asymmetricKeyType === 'ec';
      const challenge = crypto.randomBytes(32);
      p11.C_SignInit(session, { mechanism: ec ? pkcs11js.CKM_ECDSA_SHA256 : pkcs11js.CKM_SHA256_RSA_PKCS }, keys[0]);
      // Room for any signature a token here makes (RSA up to 4096 bits, ECDSA up to P-521).
      const sig = p11.C_Sign(session, challenge, Buffer.alloc(1024));
      if (!crypto.verify('sha256', challenge, ec ? { key: publicKey, dsaEncoding: 'ieee-p1363' } : publicKey, sig)) throw new ChallengeError(`token "${o.label}": the signature of the key with ${id} does not verify with ${want.certificatePem ? "the certificate's public key" : 'its public key object'}`);
    }
  } finally {
    p11.C_CloseSession(session);
  }
}
