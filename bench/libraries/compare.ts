// npm run bench:libraries: nitro-acm's own CBOR, BER/CMS and X.509 code against
// the npm libraries that do the same jobs (issue 13 item 8; the verdict is in
// docs/architecture.md). For each job it measures
//   strictness: the verdict (accepted, and to what value, or refused) on the
//     real vectors in test/vectors, every truncation of them, seeded byte
//     mutations and hand-made hostile inputs; a library must give our verdict
//     on every input (the KMS replies and attestation documents are hostile);
//   speed: decodes (or certificates) a second, side by side in one run, as
//     ratios to ours;
//   size: the minified bundle esbuild makes of the entry point, and what npm
//     installs (packages, bytes on disk);
// and prints a table. The libraries live in bench/libraries/package.json, pinned,
// apart from the product's dependencies. BENCH_LIB_SECONDS sets each speed turn.
import 'reflect-metadata'; // @peculiar/x509's dependency injection needs it loaded first
import crypto, { X509Certificate, type KeyObject } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import os from 'node:os';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import * as cbor2 from 'cbor2';
import * as cborX from 'cbor-x';
import cborNode from 'cbor';
import * as asn1js from 'asn1js';
import * as pkijs from 'pkijs';
import { AsnParser } from '@peculiar/asn1-schema';
import { ContentInfo as PecContentInfo, EnvelopedData as PecEnvelopedData, KeyTransRecipientInfo as PecKtri } from '@peculiar/asn1-cms';
import { RsaEsOaepParams } from '@peculiar/asn1-rsa';
import { AlgorithmIdentifier } from '@peculiar/asn1-x509';
import * as x509 from '@peculiar/x509';
import forge from 'node-forge';
import { decodeCbor, Tagged } from '../../shared/cbor.ts';
import { parseBer, der, indefinite, derOid, derInt } from '../../shared/ber.ts';
import { parseEnvelopedData, buildCiphertextForRecipient, type EnvelopedParts } from '../../shared/cms.ts';
import { createCertificate } from '../../shared/x509.ts';
import { makeEnclaveContext } from '../../scripts/build-eif.ts';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const VECTORS = path.join(ROOT, 'test/vectors');
const SECONDS = Number(process.env.BENCH_LIB_SECONDS ?? 1);

// ---------- the corpus ----------

/** A small seeded generator, so every run mutates the same bytes. */
function seeded(seed: number) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Input { name: string; kind: 'real' | 'truncated' | 'mutated' | 'crafted'; bytes: Buffer }

function derivedInputs(real: Input[], mutationsEach: number): Input[] {
  const out: Input[] = [];
  const rnd = seeded(13);
  for (const r of real) {
    for (let n = 0; n < r.bytes.length; n++) out.push({ name: `${r.name} cut to ${n}`, kind: 'truncated', bytes: r.bytes.subarray(0, n) });
    for (let i = 0; i < mutationsEach; i++) {
      const b = Buffer.from(r.bytes);
      const at = Math.floor(rnd() * b.length);
      // half the mutations are the bytes that matter most to a parser: lengths and heads
      b[at] = rnd() < 0.5 ? Math.floor(rnd() * 256) : [0x00, 0x1f, 0x5b, 0x7f, 0x80, 0x84, 0x9f, 0xbf, 0xff][Math.floor(rnd() * 9)];
      out.push({ name: `${r.name} byte ${at} = 0x${b[at].toString(16)}`, kind: 'mutated', bytes: b });
    }
  }
  return out;
}

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

// ---------- verdicts ----------

type Verdict = string; // 'refused' | 'accepted <digest of the value>' | 'crashed <what>'

function verdictOf(fn: () => unknown): { verdict: Verdict; ms: number; why: string } {
  const t0 = performance.now();
  let verdict: Verdict;
  let why = '';
  try {
    const v = fn();
    verdict = `accepted ${crypto.createHash('sha256').update(JSON.stringify(v)).digest('hex').slice(0, 16)}`;
  } catch (e) {
    // A parser may refuse with any Error; running out of stack is not refusing.
    const msg = e instanceof Error ? e.message : String(e);
    why = msg.slice(0, 120);
    verdict = e instanceof RangeError && /call stack/i.test(msg) ? 'crashed (stack overflow)' : e instanceof Error ? 'refused' : `crashed (threw ${typeof e})`;
  }
  return { verdict, ms: performance.now() - t0, why };
}

interface Row { job: string; candidate: string; agree: string; differ: string; speed: string; bundle: string; install: string; note: string }
const rows: Row[] = [];

function compareVerdicts<T>(inputs: Input[], candidates: Record<string, (b: Buffer) => T>, ours: string) {
  const verdicts: Record<string, Verdict[]> = {};
  const whys: Record<string, string[]> = {};
  const slowest: Record<string, number> = {};
  for (const [name, fn] of Object.entries(candidates)) {
    verdicts[name] = [];
    whys[name] = [];
    slowest[name] = 0;
    for (const input of inputs) {
      const { verdict, ms, why } = verdictOf(() => fn(input.bytes));
      verdicts[name].push(verdict);
      whys[name].push(why);
      slowest[name] = Math.max(slowest[name], ms);
    }
  }
  const result: Record<string, { agree: number; differ: { kind: string; name: string; ours: Verdict; theirs: Verdict; why: string }[]; slowestMs: number }> = {};
  for (const name of Object.keys(candidates)) {
    const differ = [];
    let agree = 0;
    for (let i = 0; i < inputs.length; i++) {
      if (verdicts[name][i] === verdicts[ours][i]) agree++;
      else differ.push({ kind: inputs[i].kind, name: inputs[i].name, ours: verdicts[ours][i], theirs: verdicts[name][i], why: whys[ours][i] || whys[name][i] });
    }
    result[name] = { agree, differ, slowestMs: slowest[name] };
  }
  return result;
}

function summariseDiffer(d: { kind: string; name: string; ours: Verdict; theirs: Verdict }[]): string {
  if (!d.length) return '0';
  const by = new Map<string, number>();
  for (const x of d) {
    const what = x.ours === 'refused' && x.theirs.startsWith('accepted') ? 'accepts what we refuse'
      : x.ours.startsWith('accepted') && x.theirs === 'refused' ? 'refuses what we accept'
      : x.theirs.startsWith('crashed') ? x.theirs
      : 'accepts, to another value';
    by.set(`${x.kind}: ${what}`, (by.get(`${x.kind}: ${what}`) ?? 0) + 1);
  }
  return `${d.length} (${[...by].map(([k, n]) => `${n} ${k}`).join('; ')})`;
}

// ---------- speed and size ----------

/** Operations a second for each candidate, in interleaved turns (this machine is shared); median of three turns. */
function speed(candidates: Record<string, () => void>): Record<string, number> {
  const turns: Record<string, number[]> = Object.fromEntries(Object.keys(candidates).map((k) => [k, []]));
  for (let turn = 0; turn < 3; turn++) {
    for (const [name, fn] of Object.entries(candidates)) {
      for (let i = 0; i < 20; i++) fn(); // warm up
      let n = 0;
      const t0 = performance.now();
      const end = t0 + SECONDS * 1000;
      while (performance.now() < end) { fn(); n++; }
      turns[name].push(n / ((performance.now() - t0) / 1000));
    }
  }
  return Object.fromEntries(Object.entries(turns).map(([k, v]) => [k, v.sort((a, b) => a - b)[1]]));
}

async function bundleBytes(entry: string): Promise<string> {
  const r = await build({ stdin: { contents: entry, resolveDir: HERE, loader: 'ts' }, bundle: true, minify: true, platform: 'node', format: 'esm', write: false, logLevel: 'silent' });
  const code = Buffer.from(r.outputFiles[0].contents);
  return `${(code.length / 1024).toFixed(1)} KiB (${(zlib.gzipSync(code).length / 1024).toFixed(1)} gz)`;
}

/** The packages npm installs for `pkg` (itself and what it depends on, transitively) and their bytes on disk. */
function installed(pkgs: string[]): string {
  const seen = new Set<string>();
  const visit = (name: string) => {
    if (seen.has(name)) return;
    seen.add(name);
    const manifest = JSON.parse(fs.readFileSync(path.join(HERE, 'node_modules', name, 'package.json'), 'utf8'));
    for (const dep of Object.keys(manifest.dependencies ?? {})) if (fs.existsSync(path.join(HERE, 'node_modules', dep))) visit(dep);
  };
  pkgs.forEach(visit);
  const du = spawnSync('du', ['-sb', ...[...seen].map((p) => path.join(HERE, 'node_modules', p))], { encoding: 'utf8' });
  const bytes = du.stdout.trim().split('\n').reduce((s, l) => s + Number(l.split('\t')[0]), 0);
  return `${seen.size} pkg, ${(bytes / 1024).toFixed(0)} KiB`;
}

function version(pkg: string): string {
  return JSON.parse(fs.readFileSync(path.join(HERE, 'node_modules', pkg, 'package.json'), 'utf8')).version;
}

function ourLines(...files: string[]): string {
  return `${files.reduce((n, f) => n + fs.readFileSync(path.join(ROOT, f), 'utf8').split('\n').length, 0)} lines, no deps`;
}

// ---------- CBOR: attestation documents ----------

/** Every decoder's output, turned into one comparable shape. */
function normCbor(v: unknown): unknown {
  if (v instanceof Uint8Array) return `h'${Buffer.from(v).toString('hex')}'`;
  // An integer is the same integer whether a decoder gives a number or a bigint (cbor-x gives 64-bit ones as bigint).
  if (typeof v === 'bigint') return `${v}`;
  if (typeof v === 'number') return Number.isInteger(v) ? `${v}` : `f${v}`;
  if (v === undefined) return 'undefined';
  if (v instanceof Map) return ['map', [...v].map(([k, x]) => [normCbor(k), normCbor(x)])];
  if (Array.isArray(v)) return v.map(normCbor);
  if (v instanceof Tagged) return ['tag', v.tag, normCbor(v.value)];
  if (v instanceof cbor2.Tag) return ['tag', Number(v.tag), normCbor(v.contents)];
  if (v instanceof cborX.Tag) return ['tag', Number(v.tag), normCbor(v.value)];
  if (v instanceof cborNode.Tagged) return ['tag', v.tag, normCbor(v.value)];
  if (v && typeof v === 'object' && v.constructor === Object) return ['map', Object.entries(v).map(([k, x]) => [k, normCbor(x)])];
  if (v === null || typeof v === 'string' || typeof v === 'boolean') return v;
  throw new Error(`decoder returned ${Object.prototype.toString.call(v)}`);
}

/** What parseAttestation decodes: the COSE_Sign1 array, then its protected header and its payload. */
function attestationDecodes(decode: (b: Uint8Array) => unknown) {
  return (bytes: Buffer) => {
    let top = decode(bytes);
    const norm = normCbor(top) as unknown[];
    if (Array.isArray(norm) && norm[0] === 'tag') top = top instanceof Tagged ? top.value : (top as { contents?: unknown; value?: unknown }).contents ?? (top as { value: unknown }).value;
    if (!Array.isArray(top) || top.length !== 4 || !(top[0] instanceof Uint8Array) || !(top[2] instanceof Uint8Array)) return normCbor(top);
    return [normCbor(top), normCbor(decode(top[0])), normCbor(decode(top[2]))];
  };
}

function cborCrafted(doc: Buffer): Input[] {
  const c = (name: string, bytes: Buffer): Input => ({ name, kind: 'crafted', bytes });
  const deep = (n: number, open: number) => Buffer.concat([Buffer.alloc(n, open), Buffer.from([0x00])]);
  return [
    c('a byte after the document', Buffer.concat([doc, Buffer.from([0x00])])),
    c('a map with module_id twice', hex('a2 69 6d6f64756c655f6964 61 61 69 6d6f64756c655f6964 61 62')),
    c('a map with key 1 twice', hex('a2 01 01 01 02')),
    c('text that is not UTF-8', hex('62 c3 28')),
    c('text of a lone surrogate (CESU)', hex('63 eda080')),
    c('a byte string announcing 2^64-1 bytes', hex('5b ffffffffffffffff 00')),
    c('a byte string announcing 2^32 bytes', hex('5b 0000000100000000 00')),
    c('an array announcing 2^32-1 items, 1 byte left', hex('9a ffffffff 00')),
    c('a map announcing 2^32-1 pairs, 2 bytes left', hex('ba ffffffff 00 00')),
    c('arrays nested 100,000 deep', deep(100_000, 0x81)),
    c('indefinite arrays nested 100,000 deep', deep(100_000, 0x9f)),
    c('tags nested 100,000 deep', deep(100_000, 0xc1)),
    c('arrays nested 33 deep (our limit is 32)', deep(33, 0x81)),
    c('reserved additional information 28', hex('1c')),
    c('a break with nothing open', hex('ff')),
    c('an indefinite byte string with a text chunk', hex('5f 61 61 ff')),
    c('an indefinite byte string with an indefinite chunk', hex('5f 5f ff ff')),
    c('an indefinite array with no break', hex('9f 01 02')),
    c('a byte-string map key', hex('a1 41 00 01')),
    c('an array map key', hex('a1 80 01')),
    c('simple value 16', hex('f0')),
    c('simple value 255 (two-byte form)', hex('f8 ff')),
    c('a half-precision float', hex('f9 3c00')),
    c('a tag of 2^64-1', hex('db ffffffffffffffff 00')),
    c('a negative integer below -2^64', hex('3b ffffffffffffffff')),
    c('an empty input', Buffer.alloc(0)),
  ];
}

async function compareCbor() {
  const real: Input[] = fs.readdirSync(VECTORS).filter((f) => /^att_.*\.hex$/.test(f)).map((f) => ({ name: f, kind: 'real', bytes: hex(fs.readFileSync(path.join(VECTORS, f), 'utf8')) }));
  const inputs = [...real, ...derivedInputs(real, 1500), ...cborCrafted(real[0].bytes)];
  const cborXDecoder = new cborX.Decoder({ mapsAsObjects: false, useRecords: false, bundleStrings: false });
  const decoders: Record<string, (b: Uint8Array) => unknown> = {
    ours: (b) => decodeCbor(b),
    [`cbor2 ${version('cbor2')}`]: (b) => cbor2.decode(b, { preferMap: true, rejectDuplicateKeys: true, maxDepth: 32 }),
    [`cbor-x ${version('cbor-x')}`]: (b) => cborXDecoder.decode(b),
    [`cbor ${version('cbor')}`]: (b) => cborNode.decodeFirstSync(b, { preventDuplicateKeys: true }),
  };
  const verdicts = compareVerdicts(inputs, Object.fromEntries(Object.entries(decoders).map(([k, d]) => [k, attestationDecodes(d)])), 'ours');
  const docs = real.map((r) => r.bytes);
  const rates = speed(Object.fromEntries(Object.entries(decoders).map(([k, d]) => [k, () => { for (const doc of docs) attestationDecodes(d)(doc); }])));
  const bundles: Record<string, string> = {
    ours: await bundleBytes(`export { decodeCbor } from ${JSON.stringify(path.join(ROOT, 'shared/cbor.ts'))};`),
    [`cbor2 ${version('cbor2')}`]: await bundleBytes(`export { decode } from 'cbor2';`),
    [`cbor-x ${version('cbor-x')}`]: await bundleBytes(`export { Decoder } from 'cbor-x';`),
    [`cbor ${version('cbor')}`]: await bundleBytes(`import c from 'cbor'; export const d = c.decodeFirstSync;`),
  };
  const installs: Record<string, string> = { ours: ourLines('shared/cbor.ts'), [`cbor2 ${version('cbor2')}`]: installed(['cbor2']), [`cbor-x ${version('cbor-x')}`]: installed(['cbor-x']), [`cbor ${version('cbor')}`]: installed(['cbor']) };
  for (const name of Object.keys(decoders)) {
    const v = verdicts[name];
    rows.push({ job: `CBOR (${real.length} attestation documents; ${inputs.length} inputs)`, candidate: name, agree: `${v.agree}/${inputs.length}`, differ: summariseDiffer(v.differ), speed: `${(rates[name] / rates.ours).toFixed(2)} (${rates[name].toFixed(0)} docs/s)`, bundle: bundles[name], install: installs[name], note: `slowest input ${v.slowestMs.toFixed(0)} ms` });
    for (const d of v.differ.filter((x) => x.kind === 'crafted' || x.kind === 'real' || process.env.BENCH_LIB_VERBOSE)) console.error(`  cbor ${name}: ${d.name}: ours ${d.ours}, theirs ${d.theirs}${d.why ? ` (${d.why})` : ''}`);
  }
}

// ---------- BER and CMS: KMS CiphertextForRecipient ----------

const OID = { envelopedData: '1.2.840.113549.1.7.3', data: '1.2.840.113549.1.7.1', rsaesOaep: '1.2.840.113549.1.1.7', sha256: '2.16.840.1.101.3.4.2.1', mgf1: '1.2.840.113549.1.1.8', aes256cbc: '2.16.840.1.101.3.4.1.42' };

/** The checks parseEnvelopedData makes, on the fields a library read. */
function checkParts(p: { contentType: string; recipients: number; ski: Buffer | null; keyAlg: string; oaepHash?: string; mgf?: string; mgfHash?: string; encryptedKey: Buffer; contentTypeInner: string; contentAlg: string; iv: Buffer | null; encryptedContent: Buffer | null }): EnvelopedParts {
  if (p.contentType !== OID.envelopedData) throw new Error('not envelopedData');
  if (p.recipients !== 1) throw new Error('not one recipient');
  if (!p.ski) throw new Error('rid is not a subjectKeyIdentifier');
  if (p.keyAlg !== OID.rsaesOaep || p.oaepHash !== OID.sha256 || p.mgf !== OID.mgf1 || p.mgfHash !== OID.sha256) throw new Error('not RSAES-OAEP SHA-256');
  if (p.contentTypeInner !== OID.data || p.contentAlg !== OID.aes256cbc) throw new Error('not AES-256-CBC id-data');
  if (!p.iv || p.iv.length !== 16) throw new Error('IV');
  if (!p.encryptedContent || p.encryptedContent.length === 0 || p.encryptedContent.length % 16) throw new Error('content');
  return { subjectKeyIdentifier: p.ski, encryptedKey: p.encryptedKey, iv: p.iv, encryptedContent: p.encryptedContent };
}

const asBuffer = (ab: ArrayBuffer | ArrayBufferView) => Buffer.from(ArrayBuffer.isView(ab) ? Buffer.from(ab.buffer, ab.byteOffset, ab.byteLength) : new Uint8Array(ab));

function octetsOf(v: unknown): Buffer {
  // asn1js: a primitive OCTET STRING has valueHexView; a constructed one (BER) has value pieces.
  const o = v as { idBlock: { isConstructed: boolean }; valueBlock: { isConstructed?: boolean; value?: unknown[]; valueHexView: Uint8Array } };
  if (o.idBlock.isConstructed || o.valueBlock.isConstructed) return Buffer.concat((o.valueBlock.value ?? []).map(octetsOf));
  return asBuffer(o.valueBlock.valueHexView);
}

function viaPkijs(ber: Buffer): EnvelopedParts {
  const ab = ber.buffer.slice(ber.byteOffset, ber.byteOffset + ber.byteLength);
  const parsed = asn1js.fromBER(ab);
  if (parsed.offset === -1) throw new Error(parsed.result.error);
  if (parsed.offset !== ber.length) throw new Error('bytes after the value');
  const ci = new pkijs.ContentInfo({ schema: parsed.result });
  const ed = new pkijs.EnvelopedData({ schema: ci.content });
  const ri = ed.recipientInfos[0];
  const kt = ri?.value as pkijs.KeyTransRecipientInfo;
  const oaep = kt?.keyEncryptionAlgorithm?.algorithmParams ? new pkijs.RSAESOAEPParams({ schema: kt.keyEncryptionAlgorithm.algorithmParams }) : undefined;
  const eci = ed.encryptedContentInfo;
  const mgfParams = oaep?.maskGenAlgorithm.algorithmParams ? new pkijs.AlgorithmIdentifier({ schema: oaep.maskGenAlgorithm.algorithmParams }) : undefined;
  return checkParts({
    contentType: ci.contentType, recipients: ed.recipientInfos.length,
    ski: ri?.variant === 1 && kt.rid instanceof asn1js.OctetString ? octetsOf(kt.rid) : kt && !(kt.rid instanceof pkijs.IssuerAndSerialNumber) && kt.rid ? octetsOf(kt.rid) : null,
    keyAlg: kt?.keyEncryptionAlgorithm.algorithmId, oaepHash: oaep?.hashAlgorithm.algorithmId, mgf: oaep?.maskGenAlgorithm.algorithmId, mgfHash: mgfParams?.algorithmId,
    encryptedKey: kt ? octetsOf(kt.encryptedKey) : Buffer.alloc(0),
    contentTypeInner: eci.contentType, contentAlg: eci.contentEncryptionAlgorithm.algorithmId,
    iv: eci.contentEncryptionAlgorithm.algorithmParams ? octetsOf(eci.contentEncryptionAlgorithm.algorithmParams) : null,
    encryptedContent: eci.encryptedContent ? octetsOf(eci.encryptedContent) : null,
  });
}

function viaPeculiar(ber: Buffer): EnvelopedParts {
  const ci = AsnParser.parse(ber, PecContentInfo);
  const ed = AsnParser.parse(ci.content, PecEnvelopedData);
  const ri = ed.recipientInfos[0];
  const kt = ri?.ktri as PecKtri | undefined;
  const oaep = kt?.keyEncryptionAlgorithm.parameters ? AsnParser.parse(kt.keyEncryptionAlgorithm.parameters, RsaEsOaepParams) : undefined;
  const mgfHash = oaep?.maskGenAlgorithm.parameters ? AsnParser.parse(oaep.maskGenAlgorithm.parameters, AlgorithmIdentifier).algorithm : undefined;
  const eci = ed.encryptedContentInfo;
  const content = eci.encryptedContent;
  const ivParams = eci.contentEncryptionAlgorithm.parameters;
  return checkParts({
    contentType: ci.contentType, recipients: ed.recipientInfos.length,
    ski: kt?.rid.subjectKeyIdentifier ? Buffer.from(kt.rid.subjectKeyIdentifier.buffer) : null,
    keyAlg: kt?.keyEncryptionAlgorithm.algorithm ?? '', oaepHash: oaep?.hashAlgorithm.algorithm, mgf: oaep?.maskGenAlgorithm.algorithm, mgfHash,
    encryptedKey: kt ? Buffer.from(kt.encryptedKey.buffer) : Buffer.alloc(0),
    contentTypeInner: eci.contentType, contentAlg: eci.contentEncryptionAlgorithm.algorithm,
    iv: ivParams ? octetsOf(asn1js.fromBER(ivParams).result) : null,
    encryptedContent: content?.value ? Buffer.from(content.value.buffer) : content?.constructedValue ? Buffer.concat(content.constructedValue.map((o) => Buffer.from(o.buffer))) : null,
  });
}

// node-forge takes an options object here (its typings say a boolean).
const forgeFromDer = forge.asn1.fromDer as unknown as (b: forge.util.ByteStringBuffer, o: { strict: boolean; parseAllBytes: boolean; decodeBitStrings: boolean }) => forge.asn1.Asn1;

function viaForge(ber: Buffer): unknown {
  const asn = forgeFromDer(forge.util.createBuffer(ber.toString('binary')), { strict: true, parseAllBytes: true, decodeBitStrings: false });
  const msg = forge.pkcs7.messageFromAsn1(asn) as unknown as { recipients: { encryptedContent: { algorithm: string } }[] };
  if (msg.recipients?.[0]?.encryptedContent.algorithm !== OID.rsaesOaep) throw new Error('not RSAES-OAEP');
  return msg;
}

function cmsCrafted(recipient: KeyObject): Input[] {
  const c = (name: string, bytes: Buffer): Input => ({ name, kind: 'crafted', bytes });
  const good = buildCiphertextForRecipient(Buffer.from('plaintext'), recipient);
  const sha256 = der(0x30, derOid(OID.sha256));
  const oaep = der(0x30, derOid(OID.rsaesOaep), der(0x30, der(0xa0, sha256), der(0xa1, der(0x30, derOid(OID.mgf1), sha256))));
  const ski = crypto.createHash('sha256').update(recipient.export({ type: 'spki', format: 'der' })).digest();
  const ktri = (alg = oaep) => der(0x30, derInt(2), der(0x80, ski), alg, der(0x04, Buffer.alloc(256, 1)));
  const eci = (iv = Buffer.alloc(16), content = Buffer.alloc(32)) => indefinite(0x30, derOid(OID.data), der(0x30, derOid(OID.aes256cbc), der(0x04, iv)), indefinite(0xa0, der(0x04, content)));
  const wrap = (set: Buffer, e = eci()) => indefinite(0x30, derOid(OID.envelopedData), indefinite(0xa0, indefinite(0x30, derInt(2), set, e)));
  const deep = (n: number) => Buffer.concat([Buffer.alloc(2 * n).fill(Buffer.from([0x30, 0x80])), Buffer.alloc(2 * n, 0)]);
  return [
    c('a fresh KMS-shaped reply', good),
    c('a byte after the reply', Buffer.concat([good, Buffer.from([0])])),
    c('two recipients', wrap(der(0x31, ktri(), ktri()))),
    c('OAEP with default (SHA-1) parameters', wrap(der(0x31, ktri(der(0x30, derOid(OID.rsaesOaep), der(0x30)))))),
    c('an 8-byte IV', wrap(der(0x31, ktri()), eci(Buffer.alloc(8)))),
    c('content of 17 bytes', wrap(der(0x31, ktri()), eci(Buffer.alloc(16), Buffer.alloc(17)))),
    c('a length of 2^32-1 with 10 bytes left', hex('30 84 ffffffff 00000000000000000000')),
    c('a length of length 5', hex('30 85 0000000001 00')),
    c('indefinite length on a primitive', hex('04 80 01 00 00')),
    c('a multi-byte tag', hex('1f 81 00 00')),
    c('SEQUENCEs nested 10,000 deep', deep(10_000)),
    c('SEQUENCEs nested 25 deep (our limit is 24)', deep(25)),
    c('a lone end-of-contents', hex('00 00')),
    c('an empty input', Buffer.alloc(0)),
  ];
}

async function compareCms() {
  const real: Input[] = [
    ...['enclaver', 'edgebit_go', 'eks_ethsigner'].map((n) => ({ name: `kms_cms_${n}`, kind: 'real' as const, bytes: Buffer.from(fs.readFileSync(path.join(VECTORS, `kms_cms_${n}.b64`), 'utf8').trim(), 'base64') })),
    { name: 'kms_cms_enclaver_NEG_bad_encrypted_key', kind: 'real', bytes: Buffer.from(fs.readFileSync(path.join(VECTORS, 'kms_cms_enclaver_NEG_bad_encrypted_key.b64'), 'utf8').trim(), 'base64') },
    ...['sdkc_parse1', 'sdkc_parse2'].map((n) => ({ name: `kms_cms_${n}`, kind: 'real' as const, bytes: hex(fs.readFileSync(path.join(VECTORS, `kms_cms_${n}.hex`), 'utf8')) })),
  ];
  const recipient = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey;
  const inputs = [...real, ...derivedInputs(real, 600), ...cmsCrafted(recipient)];
  const partsOf = (p: EnvelopedParts) => [p.subjectKeyIdentifier, p.encryptedKey, p.iv, p.encryptedContent].map((b) => b.toString('hex'));
  const parsers: Record<string, (b: Buffer) => unknown> = {
    ours: (b) => partsOf(parseEnvelopedData(b)),
    [`pkijs ${version('pkijs')} (asn1js ${version('asn1js')})`]: (b) => partsOf(viaPkijs(b)),
    [`@peculiar/asn1-cms ${version('@peculiar/asn1-cms')}`]: (b) => partsOf(viaPeculiar(b)),
    [`node-forge ${version('node-forge')} (pkcs7)`]: (b) => viaForge(b),
  };
  const verdicts = compareVerdicts(inputs, parsers, 'ours');
  const samples = real.map((r) => r.bytes);
  const rates = speed(Object.fromEntries(Object.entries(parsers).filter(([k]) => !k.startsWith('node-forge')).map(([k, p]) => [k, () => { for (const s of samples) { try { p(s); } catch { /* counted in the verdicts */ } } }])));
  const bundles: Record<string, string> = {
    ours: await bundleBytes(`export { parseEnvelopedData } from ${JSON.stringify(path.join(ROOT, 'shared/cms.ts'))};`),
    [`pkijs ${version('pkijs')} (asn1js ${version('asn1js')})`]: await bundleBytes(`export { ContentInfo, EnvelopedData, RSAESOAEPParams } from 'pkijs'; export { fromBER } from 'asn1js';`),
    [`@peculiar/asn1-cms ${version('@peculiar/asn1-cms')}`]: await bundleBytes(`export { AsnParser } from '@peculiar/asn1-schema'; export { ContentInfo, EnvelopedData } from '@peculiar/asn1-cms'; export { RsaEsOaepParams } from '@peculiar/asn1-rsa';`),
    [`node-forge ${version('node-forge')} (pkcs7)`]: await bundleBytes(`import f from 'node-forge'; export const m = f.pkcs7.messageFromAsn1;`),
  };
  const installs: Record<string, string> = {
    ours: ourLines('shared/cms.ts', 'shared/ber.ts'),
    [`pkijs ${version('pkijs')} (asn1js ${version('asn1js')})`]: installed(['pkijs']),
    [`@peculiar/asn1-cms ${version('@peculiar/asn1-cms')}`]: installed(['@peculiar/asn1-cms', '@peculiar/asn1-rsa']),
    [`node-forge ${version('node-forge')} (pkcs7)`]: installed(['node-forge']),
  };
  for (const name of Object.keys(parsers)) {
    const v = verdicts[name];
    const realOk = real.filter((_, i) => v.differ.every((d) => d.name !== real[i].name)).length;
    rows.push({ job: `CMS (${real.length} KMS replies; ${inputs.length} inputs)`, candidate: name, agree: `${v.agree}/${inputs.length}`, differ: summariseDiffer(v.differ), speed: rates[name] ? `${(rates[name] / rates.ours).toFixed(2)} (${rates[name].toFixed(0)} replies/s)` : 'n/a', bundle: bundles[name], install: installs[name], note: `${realOk}/${real.length} real replies as ours; slowest input ${v.slowestMs.toFixed(0)} ms` });
    for (const d of v.differ.filter((x) => x.kind === 'crafted' || x.kind === 'real' || process.env.BENCH_LIB_VERBOSE)) console.error(`  cms ${name}: ${d.name}: ours ${d.ours}, theirs ${d.theirs}${d.why ? ` (${d.why})` : ''}`);
  }
  // The BER layer alone: does each reader take the same bytes as ours?
  const berReaders: Record<string, (b: Buffer) => unknown> = {
    ours: (b) => { parseBer(b); return 'ok'; },
    [`asn1js ${version('asn1js')}`]: (b) => { const r = asn1js.fromBER(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)); if (r.offset === -1 || r.offset !== b.length) throw new Error('refused'); return 'ok'; },
    [`node-forge ${version('node-forge')} (asn1)`]: (b) => { forgeFromDer(forge.util.createBuffer(b.toString('binary')), { strict: true, parseAllBytes: true, decodeBitStrings: false }); return 'ok'; },
  };
  const berVerdicts = compareVerdicts(inputs, berReaders, 'ours');
  for (const name of Object.keys(berReaders)) {
    const v = berVerdicts[name];
    rows.push({ job: `BER alone (same ${inputs.length} inputs)`, candidate: name, agree: `${v.agree}/${inputs.length}`, differ: summariseDiffer(v.differ), speed: '', bundle: '', install: '', note: `slowest input ${v.slowestMs.toFixed(0)} ms` });
    for (const d of v.differ.filter((x) => x.kind === 'crafted' || x.kind === 'real' || process.env.BENCH_LIB_VERBOSE)) console.error(`  ber ${name}: ${d.name}: ours ${d.ours}, theirs ${d.theirs}${d.why ? ` (${d.why})` : ''}`);
  }
}

// ---------- X.509: building local mode's certificates ----------

/** openssl verify of leaf against the CA, and the SAN the leaf names: the outcome local mode needs. */
function opensslAccepts(caPem: string, leafPem: string): boolean {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'libcmp-'));
  try {
    fs.writeFileSync(path.join(dir, 'ca.pem'), caPem);
    fs.writeFileSync(path.join(dir, 'leaf.pem'), leafPem);
    const r = spawnSync('openssl', ['verify', '-CAfile', path.join(dir, 'ca.pem'), '-purpose', 'sslserver', '-verify_hostname', 'localhost', path.join(dir, 'leaf.pem')], { encoding: 'utf8' });
    return r.status === 0;
  } finally { fs.rmSync(dir, { recursive: true, force: true }); }
}

type Pair = { publicKey: KeyObject; privateKey: KeyObject };

async function compareX509() {
  const ecCa = crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' });
  const ecLeaf = crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' });
  const rsaCa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const rsaLeaf = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const notBefore = new Date(Date.now() - 3600_000), notAfter = new Date(Date.now() + 86400_000);

  const oursPair = (ca: Pair, leaf: Pair) => {
    const caCert = createCertificate({ subject: { CN: 'cmp CA', O: 'nitro-acm' }, publicKey: ca.publicKey, signingKey: ca.privateKey, notBefore, notAfter, ca: true });
    const leafCert = createCertificate({ subject: { CN: 'localhost' }, issuer: caCert, publicKey: leaf.publicKey, signingKey: ca.privateKey, notBefore, notAfter, dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], serverAuth: true });
    return [caCert.toString(), leafCert.toString()];
  };

  x509.cryptoProvider.set(globalThis.crypto);
  const subtle = globalThis.crypto.subtle;
  const toWeb = async (pair: Pair) => {
    const ec = pair.publicKey.asymmetricKeyType === 'ec';
    const alg = ec ? { name: 'ECDSA', namedCurve: 'P-384' } : { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
    return {
      alg, sign: ec ? { name: 'ECDSA', hash: 'SHA-384' } : alg,
      privateKey: await subtle.importKey('pkcs8', pair.privateKey.export({ type: 'pkcs8', format: 'der' }), alg, false, ['sign']),
      publicKey: await subtle.importKey('spki', pair.publicKey.export({ type: 'spki', format: 'der' }), alg, true, ['verify']),
    };
  };
  const webEcCa = await toWeb(ecCa), webEcLeaf = await toWeb(ecLeaf), webRsaCa = await toWeb(rsaCa), webRsaLeaf = await toWeb(rsaLeaf);
  const peculiarPair = async (ca: typeof webEcCa, leaf: typeof webEcCa) => {
    const caCert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: crypto.randomBytes(16).toString('hex').replace(/^[89a-f]/, '1'), name: 'CN=cmp CA, O=nitro-acm', notBefore, notAfter, signingAlgorithm: ca.sign, keys: { privateKey: ca.privateKey, publicKey: ca.publicKey },
      extensions: [new x509.BasicConstraintsExtension(true, undefined, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true), await x509.SubjectKeyIdentifierExtension.create(ca.publicKey)],
    });
    const leafCert = await x509.X509CertificateGenerator.create({
      serialNumber: crypto.randomBytes(16).toString('hex').replace(/^[89a-f]/, '1'), subject: 'CN=localhost', issuer: caCert.subject, notBefore, notAfter, signingAlgorithm: ca.sign, publicKey: leaf.publicKey, signingKey: ca.privateKey,
      extensions: [new x509.BasicConstraintsExtension(false, undefined, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true), new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]), new x509.SubjectAlternativeNameExtension([{ type: 'dns', value: 'localhost' }, { type: 'ip', value: '127.0.0.1' }]), await x509.SubjectKeyIdentifierExtension.create(leaf.publicKey), await x509.AuthorityKeyIdentifierExtension.create(ca.publicKey)],
    });
    return [caCert.toString('pem'), leafCert.toString('pem')];
  };

  // node-forge: RSA only (it has no ECDSA certificates), its RSA signing in JavaScript.
  const forgeRsaCa = forge.pki.privateKeyFromPem(rsaCa.privateKey.export({ type: 'pkcs1', format: 'pem' }).toString());
  const forgePub = (k: KeyObject) => forge.pki.publicKeyFromPem(k.export({ type: 'spki', format: 'pem' }).toString());
  const forgePair = () => {
    const ca = forge.pki.createCertificate();
    ca.publicKey = forgePub(rsaCa.publicKey); ca.serialNumber = '01' + crypto.randomBytes(8).toString('hex'); ca.validity.notBefore = notBefore; ca.validity.notAfter = notAfter;
    ca.setSubject([{ name: 'commonName', value: 'cmp CA' }, { name: 'organizationName', value: 'nitro-acm' }]); ca.setIssuer(ca.subject.attributes);
    ca.setExtensions([{ name: 'basicConstraints', cA: true, critical: true }, { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true }, { name: 'subjectKeyIdentifier' }]);
    ca.sign(forgeRsaCa, forge.md.sha256.create());
    const leaf = forge.pki.createCertificate();
    leaf.publicKey = forgePub(rsaLeaf.publicKey); leaf.serialNumber = '01' + crypto.randomBytes(8).toString('hex'); leaf.validity.notBefore = notBefore; leaf.validity.notAfter = notAfter;
    leaf.setSubject([{ name: 'commonName', value: 'localhost' }]); leaf.setIssuer(ca.subject.attributes);
    leaf.setExtensions([{ name: 'basicConstraints', cA: false, critical: true }, { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true }, { name: 'extKeyUsage', serverAuth: true }, { name: 'subjectAltName', altNames: [{ type: 2, value: 'localhost' }, { type: 7, ip: '127.0.0.1' }] }, { name: 'subjectKeyIdentifier' }, { name: 'authorityKeyIdentifier', keyIdentifier: ca.generateSubjectKeyIdentifier().getBytes() }]);
    leaf.sign(forgeRsaCa, forge.md.sha256.create());
    return [forge.pki.certificateToPem(ca), forge.pki.certificateToPem(leaf)];
  };

  const check = (pems: string[]) => {
    const [ca, leaf] = pems.map((p) => new X509Certificate(p));
    return ca.ca && leaf.checkIssued(ca) && leaf.verify(ca.publicKey) && opensslAccepts(pems[0], pems[1]);
  };
  const candidates: { name: string; ec?: () => Promise<string[]> | string[]; rsa: () => Promise<string[]> | string[]; bundle: string; install: string }[] = [
    { name: 'ours', ec: () => oursPair(ecCa, ecLeaf), rsa: () => oursPair(rsaCa, rsaLeaf), bundle: await bundleBytes(`export { createCertificate } from ${JSON.stringify(path.join(ROOT, 'shared/x509.ts'))};`), install: ourLines('shared/x509.ts') },
    { name: `@peculiar/x509 ${version('@peculiar/x509')}`, ec: () => peculiarPair(webEcCa, webEcLeaf), rsa: () => peculiarPair(webRsaCa, webRsaLeaf), bundle: await bundleBytes(`export * from '@peculiar/x509';`), install: installed(['@peculiar/x509', 'reflect-metadata']) },
    { name: `node-forge ${version('node-forge')}`, rsa: forgePair, bundle: await bundleBytes(`import f from 'node-forge'; export const p = f.pki;`), install: installed(['node-forge']) },
  ];
  const rate = async (fn: () => Promise<string[]> | string[]) => {
    const turns: number[] = [];
    for (let turn = 0; turn < 3; turn++) {
      let n = 0;
      const t0 = performance.now();
      while (performance.now() < t0 + SECONDS * 1000) { await fn(); n++; }
      turns.push(n / ((performance.now() - t0) / 1000));
    }
    return turns.sort((a, b) => a - b)[1];
  };
  const base: Record<string, number> = {};
  for (const c of candidates) {
    const ecOk = c.ec ? check(await c.ec()) : false;
    const rsaOk = check(await c.rsa());
    const ecRate = c.ec ? await rate(c.ec) : 0;
    const rsaRate = await rate(c.rsa);
    if (c.name === 'ours') { base.ec = ecRate; base.rsa = rsaRate; }
    rows.push({
      job: 'X.509 builder (a CA and a server certificate with SAN, verified by openssl)', candidate: c.name,
      agree: `P-384 ${c.ec ? (ecOk ? 'yes' : 'NO') : 'cannot'}, RSA ${rsaOk ? 'yes' : 'NO'}`, differ: '',
      speed: `P-384 ${c.ec ? (ecRate / base.ec).toFixed(2) : '-'}, RSA ${(rsaRate / base.rsa).toFixed(2)} (${rsaRate.toFixed(0)} pairs/s)`, bundle: c.bundle, install: c.install, note: '',
    });
  }
}

// ---------- run ----------

const started = Date.now();
console.error(`libraries: comparing on ${os.cpus().length} cores, Node ${process.version}, ${SECONDS}s a speed turn`);
await compareCbor();
console.error('libraries: CBOR done');
await compareCms();
console.error('libraries: CMS done');
await compareX509();
console.error(`libraries: X.509 done (${((Date.now() - started) / 1000).toFixed(0)} s in all)`);
// For scale: the production enclave image's JavaScript (esbuild, not minified, the AWS SDK in it).
const context = fs.mkdtempSync(path.join(os.tmpdir(), 'libcmp-eif-'));
const imageFiles = (await makeEnclaveContext(context)).filter((f) => f.startsWith('app'));
const imageBytes = imageFiles.reduce((n, f) => n + fs.statSync(path.join(context, f)).size, 0);
fs.rmSync(context, { recursive: true, force: true });
console.error(`libraries: the enclave image's app bundle today: ${(imageBytes / 1024).toFixed(0)} KiB in ${imageFiles.length} files`);
if (process.argv.includes('--json')) console.log(JSON.stringify(rows, null, 2));
else {
  console.log('| job | candidate | same verdict as ours | different | speed vs ours | bundle (minified) | our code / npm install | notes |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const r of rows) console.log(`| ${r.job} | ${r.candidate} | ${r.agree} | ${r.differ} | ${r.speed} | ${r.bundle} | ${r.install} | ${r.note} |`);
}
