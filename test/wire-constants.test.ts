// The key channel's numbers are written twice, once for each side: in
// p11-module/src/wire.h for the C module and in shared/key-wire.ts (and
// address.ts) for the enclave app and the agent. This test reads wire.h and
// fails on any number the two sides disagree on, so a change on one side that
// the other does not follow cannot land.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { ROOT } from './helpers/enclave.ts';
import * as kw from '../shared/key-wire.ts';
import { DEFAULT_KEY_ADDRESS } from '../shared/address.ts';

const header = fs.readFileSync(path.join(ROOT, 'p11-module/src/wire.h'), 'utf8');

/** Every `#define KW_X value` and `KW_X = n` enum member of wire.h, evaluated. */
function cDefinitions(text: string): Map<string, number | string> {
  const out = new Map<string, number | string>();
  for (const m of text.matchAll(/^#define (KW_\w+) (.+?)\s*(?:\/\*.*)?$/gm)) {
    const v = m[2].trim();
    out.set(m[1], v.startsWith('"') ? JSON.parse(v) : Function(`return (${v.replace(/(\d+)u\b/g, '$1')});`)() as number);
  }
  for (const m of text.matchAll(/\b(KW_\w+) = (\d+)/g)) out.set(m[1], Number(m[2]));
  return out;
}

const c = cDefinitions(header);

test('every limit and default of the key channel is the same in C and TypeScript', (t) => {
  const pairs: [string, number | string][] = [
    ['KW_VERSION', kw.KEY_WIRE_VERSION],
    ['KW_MAX_REQUEST', kw.MAX_REQUEST],
    ['KW_MAX_OAEP_LABEL', kw.MAX_OAEP_LABEL],
    ['KW_MAX_RESPONSE', kw.MAX_RESPONSE],
    ['KW_MAX_TOKENS', kw.LIST_CAPS.tokens],
    ['KW_MAX_KEYS_PER_TOKEN', kw.LIST_CAPS.keysPerToken],
    ['KW_MAX_CERTS_PER_KEY', kw.LIST_CAPS.certificatesPerKey],
    ['KW_MAX_OBJECTS', kw.LIST_CAPS.objects],
    ['KW_MAX_TOKEN_LABEL', kw.TOKEN_LABEL_MAX_BYTES],
    ['KW_MAX_LABEL_BYTES', kw.KEY_LABEL_MAX_BYTES],
    ['KW_MIN_PIN', kw.PIN_BYTES.min],
    ['KW_MAX_PIN', kw.PIN_BYTES.max],
    ['KW_REQUEST_HEADER', kw.REQUEST_HEADER],
    ['KW_RESPONSE_HEADER', kw.RESPONSE_HEADER],
    ['KW_REPLY_BIT', kw.REPLY_BIT],
    ['KW_KEY_RETIRED', kw.KeyFlag.RETIRED],
    ['KW_DEFAULT_KEY_ADDRESS', DEFAULT_KEY_ADDRESS],
  ];
  for (const [name, ts] of pairs) t.is(c.get(name), ts, `${name} in wire.h`);
});

test('operations, hashes and schemes have the same codes in C and TypeScript', (t) => {
  const enums: [string, Record<string, number>][] = [
    ['KW_', kw.Op],
    ['KW_', kw.Hash],
    ['KW_SIGN_', kw.SignScheme],
    ['KW_DEC_', kw.DecryptScheme],
    ['KW_KEY_', kw.KeyType],
  ];
  for (const [prefix, values] of enums) {
    for (const [name, code] of Object.entries(values)) t.is(c.get(`${prefix}${name}`), code, `${prefix}${name} in wire.h`);
  }
  // And nothing in C that TypeScript lacks: every enum member is one of the above.
  const members = [...header.matchAll(/\b(KW_\w+) = (\d+)/g)].map((m) => m[1]);
  const known = new Set(enums.flatMap(([prefix, values]) => Object.keys(values).map((n) => `${prefix}${n}`)));
  t.deepEqual(members.filter((m) => !known.has(m)), []);
});

test('the enclave\'s native key channel (shared/native/native.c) uses the same numbers', (t) => {
  const nativeC = fs.readFileSync(path.join(ROOT, 'shared/native/native.c'), 'utf8');
  const defs = new Map<string, number>();
  for (const m of nativeC.matchAll(/^#define (KC_\w+) (.+?)\s*(?:\/\*.*)?$/gm)) defs.set(m[1], Function(`return (${m[2].trim()});`)() as number);
  const pairs: [string, number][] = [
    ['KC_VERSION', kw.KEY_WIRE_VERSION],
    ['KC_OP_SIGN', kw.Op.SIGN],
    ['KC_REPLY_BIT', kw.REPLY_BIT],
    ['KC_REQUEST_HEADER', kw.REQUEST_HEADER],
    ['KC_RESPONSE_HEADER', kw.RESPONSE_HEADER],
    ['KC_MAX_REQUEST', kw.MAX_REQUEST],
    ['KC_SCHEME_PKCS1', kw.SignScheme.PKCS1],
    ['KC_SCHEME_PSS', kw.SignScheme.PSS],
    ['KC_SCHEME_RAW', kw.SignScheme.RAW],
    ['KC_SCHEME_ECDSA', kw.SignScheme.ECDSA],
  ];
  for (const [name, ts] of pairs) t.is(defs.get(name), ts, `${name} in native.c`);
  // kc_md(): the hash codes, in order.
  const md = /static const EVP_MD \*kc_md\(int id\)\s*\{([\s\S]*?)\n\}/.exec(nativeC)![1];
  for (const [name, code] of Object.entries(kw.Hash)) t.regex(md, new RegExp(`case ${code}: return EVP_${name.toLowerCase()}\\(\\);`), `hash ${name} is ${code} in native.c`);
});
