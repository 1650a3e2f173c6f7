// Before a web server is pointed at a new key, the agent signs a random challenge
// through the same path nginx will use (our PKCS#11 module, via graphene-pk11) and
// verifies it with the certificate's public key: a token that cannot sign, or signs
// with the wrong key, never reaches a web server's configuration.
import crypto from 'node:crypto';
import * as graphene from 'graphene-pk11';
import { BUILT_MODULE } from '../paths.ts';
import { curveByParams } from '../../shared/ec-curves.ts';
import { certificateInfo } from './token-status.ts';

export class ChallengeError extends Error {}

let loaded: { mod: graphene.Module; address: string } | undefined;

function moduleFor(address: string, modulePath: string): graphene.Module {
  if (loaded) {
    if (loaded.address !== address) throw new ChallengeError(`the PKCS#11 module is already talking to ${loaded.address}, not ${address}`);
    return loaded.mod;
  }
  process.env.NITRO_ACM_KEY_ADDRESS = address; // read by the module at C_Initialize
  const mod = graphene.Module.load(modulePath, 'nitro-acm');
  mod.initialize();
  loaded = { mod, address };
  return mod;
}

/** Per module: the label of each slot whose token has been read (slot id, hex -> label), and the slot of each label read. */
const readSlots = new WeakMap<graphene.Module, { labelOf: Map<string, string>; slotOf: Map<string, Buffer> }>();

/**
 * The slot of the token with this label. The module keeps a label's slot id for
 * its life (docs/protocol.md), so each slot's label is read once, and a slot
 * remembered for this label is only checked again (two PKCS#11 calls). Listing
 * every slot costs as much as there are tokens: once per challenge, with 1,000
 * tokens, that took 1 ms of each challenge; now it happens only for a label not
 * seen yet.
 */
function findSlot(mod: graphene.Module, label: string): graphene.Slot | undefined {
  let read = readSlots.get(mod);
  if (!read) readSlots.set(mod, (read = { labelOf: new Map(), slotOf: new Map() }));
  const remembered = read.slotOf.get(label);
  if (remembered) {
    try {
      // graphene's Slot takes a slot id and reads the slot's info.
      const slot = new graphene.Slot(remembered, mod, mod.lib);
      if (slot.getToken().label.trim() === label) return slot;
    } catch { /* its token is gone: list the slots */ }
  }
  const slots = mod.getSlots(true);
  // graphene keeps the slot ids in a protected field; items(i) reads the slot's info too.
  const ids = (slots as unknown as { innerItems: Buffer[] }).innerItems;
  let found: graphene.Slot | undefined;
  for (let i = 0; i < ids.length; i++) {
    const hex = ids[i].toString('hex');
    if (read.labelOf.has(hex) && read.labelOf.get(hex) !== label) continue;
    const slot = slots.items(i);
    const l = slot.getToken().label.trim();
    read.labelOf.set(hex, l);
    read.slotOf.set(l, ids[i]);
    if (l === label) found = slot;
  }
  return found;
}

/** The module asks the enclave for changes at most every 20 ms (p11-module SYNC_INTERVAL_MS); a look after that sees them. */
const MODULE_SYNC_MS = 25;

/** A key the token must serve: its CKA_ID, and the certificate its signatures must verify with (without one: the token's own public key object). */
export interface ExpectedKey { ckaId: Buffer; certificatePem?: string }

/** Signs a fresh challenge with each of the token's keys through PKCS#11 and verifies it; rejects with a ChallengeError saying what failed. */
/** A public key object's key, from its modulus and exponent (RSA) or its curve and point (EC). */
function publicKeyOf(pub: graphene.SessionObject): crypto.KeyObject {
  const { keyType } = pub.getAttribute({ keyType: null }) as { keyType: number };
  if (keyType === graphene.KeyType.EC) {
    // graphene reads CKA_EC_PARAMS back under the name paramsECDSA (its alias for the same attribute).
    const a = pub.getAttribute({ paramsEC: null, pointEC: null }) as unknown as { paramsECDSA: Buffer; pointEC: Buffer };
    const crv = curveByParams(a.paramsECDSA)?.jwk;
    // CKA_EC_POINT is a DER OCTET STRING around 04 || X || Y.
    const point = a.pointEC.subarray(a.pointEC[1] & 0x80 ? 2 + (a.pointEC[1] & 0x7f) : 2);
    if (!crv || point[0] !== 4) throw new ChallengeError(`public key object: EC parameters ${a.paramsECDSA.toString('hex')} or point not understood`);
    const half = (point.length - 1) / 2;
    return crypto.createPublicKey({ key: { kty: 'EC', crv, x: point.subarray(1, 1 + half).toString('base64url'), y: point.subarray(1 + half).toString('base64url') }, format: 'jwk' });
  }
  const a = pub.getAttribute({ modulus: null, publicExponent: null }) as { modulus: Buffer; publicExponent: Buffer };
  return crypto.createPublicKey({ key: { kty: 'RSA', n: a.modulus.toString('base64url'), e: a.publicExponent.toString('base64url') }, format: 'jwk' });
}

export async function verifyTokenSigns(o: { address: string; label: string; pin: string; keys: ExpectedKey[]; modulePath?: string }): Promise<void> {
  const mod = moduleFor(o.address, o.modulePath ?? BUILT_MODULE);
  // A token added a moment after the module's last look (another token's
  // challenge) is listed on the next one.
  let slot = findSlot(mod, o.label);
  if (!slot) {
    await new Promise((r) => setTimeout(r, MODULE_SYNC_MS));
    slot = findSlot(mod, o.label);
  }
  if (!slot) throw new ChallengeError(`token "${o.label}" is not listed by the PKCS#11 module`);
  const session = slot.open(graphene.SessionFlag.SERIAL_SESSION);
  try {
    try { session.login(o.pin, graphene.UserType.USER); } catch (e) {
      if (!String(e).includes('ALREADY_LOGGED_IN')) throw new ChallengeError(`token "${o.label}": login refused (${(e as Error).message.split('\n')[0]})`);
    }
    // The keys listed without an id are the current ones (a retired key is found
    // only by its id, and a key renewed back and forth has a retired twin with
    // the same id): each expected key must be among them exactly once.
    const byId = (cls: number) => {
      const found = session.find({ class: cls });
      const m = new Map<string, graphene.SessionObject[]>();
      for (let i = 0; i < found.length; i++) {
        const o = found.items(i);
        const id = (o.getAttribute({ id: null }) as { id: Buffer }).id.toString('hex');
        m.set(id, [...(m.get(id) ?? []), o]);
      }
      return { count: found.length, m };
    };
    const privates = byId(graphene.ObjectClass.PRIVATE_KEY);
    if (privates.count !== o.keys.length) throw new ChallengeError(`token "${o.label}": ${privates.count} private keys, expected ${o.keys.length}`);
    const publics = o.keys.some((k) => !k.certificatePem) ? byId(graphene.ObjectClass.PUBLIC_KEY) : undefined;
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
        publicKey = publicKeyOf(pub[0]);
      }
      const ec = publicKey.asymmetricKeyType === 'ec';
      const challenge = crypto.randomBytes(32);
      const sig = session.createSign(ec ? 'ECDSA_SHA256' : 'SHA256_RSA_PKCS', keys[0].toType<graphene.PrivateKey>()).once(challenge);
      if (!crypto.verify('sha256', challenge, ec ? { key: publicKey, dsaEncoding: 'ieee-p1363' } : publicKey, sig)) throw new ChallengeError(`token "${o.label}": the signature of the key with ${id} does not verify with ${want.certificatePem ? "the certificate's public key" : 'its public key object'}`);
    }
  } finally {
    session.close();
  }
}
