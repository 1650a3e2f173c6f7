// /etc/nitro_enclaves/acm.yaml: every key of AWS's ACM for Nitro Enclaves with its
// defaults, plus nitro-acm's additions. Every error names the file, line and
// column and what was expected, like `nginx -t`.
import fs from 'node:fs';
import path from 'node:path';
import { LIST_CAPS, PIN_BYTES, TOKEN_LABEL_MAX_BYTES } from '../../shared/key-wire.ts';
import { DEFAULT_KEY_PORT, DEFAULT_PROVISION_PORT } from '../../shared/address.ts';
import { parseS3Uri } from '../../shared/s3-uri.ts';
import { memoryWarning } from './enclave-memory.ts';
import { OPENSSL_SETTINGS, DEFAULT_OPENSSL_CONF, type OpenSslSetting } from './openssl-path.ts';
import { parseDocument, LineCounter, isMap, isScalar, isSeq, type Node, type Pair, type YAMLMap } from 'yaml';

export const DEFAULT_CONFIG = '/etc/nitro_enclaves/acm.yaml';
/** One token list holds at most this many (shared/key-wire.ts LIST_CAPS). */
export const MAX_TOKENS = LIST_CAPS.tokens;

export type Source = { Acm: { certificate_arn: string; bucket?: string } } | { S3: { uri: string } } | { FileDb: { path: string } };
export type Target = { NginxStanza: { path: string; user?: string; group?: string } } | { Conf: { path: string; user?: string; group?: string } };

/** `target` is optional, as in AWS's agent: without one the token is provisioned and no web-server file is written. */
export interface TokenConfig { label: string; pin?: string; source: Source; target?: Target; refresh_interval_secs: number; line: number }

/** What the agent writes for a token: the kind, the file and its owner; undefined when the token has no target. */
export interface TargetSpec { kind: 'NginxStanza' | 'Conf'; path: string; user?: string; group?: string }

export function targetSpec(t: TokenConfig): TargetSpec | undefined {
  if (!t.target) return undefined;
  return 'NginxStanza' in t.target ? { kind: 'NginxStanza', ...t.target.NginxStanza } : { kind: 'Conf', ...t.target.Conf };
}

/** A token's source in one line, as logs, status and `agent --check` show it. */
export function describeSource(t: TokenConfig): string {
  const s = t.source;
  return 'Acm' in s ? `Acm ${s.Acm.certificate_arn}` : 'S3' in s ? `S3 ${s.S3.uri}` : `FileDb ${s.FileDb.path}`;
}

/** A token's target in one line; "none" when it has none. */
export function describeTarget(t: TokenConfig): string {
  const spec = targetSpec(t);
  return spec ? `${spec.kind} ${spec.path}` : 'none (no web-server file; nitro-acm status shows the pkcs11: URI)';
}

export interface AcmConfig {
  enclave: { cpu_count: number; memory_mib: number; image_path: string; boot_timeout_ms: number; p11kit_port: number; rpc_port: number; attestation_retry_count: number; attestation_check_every: number };
  log: { level: LogLevel; enable_timestamp: boolean };
  options: { service: 'nginx' | 'httpd'; force_start: boolean; reload_wait_ms: number; sync_interval_secs: number; reload_command?: string; pin_in_config: boolean; restart_for_new_tokens: boolean; openssl: OpenSslSetting; openssl_conf: string; metrics_address?: string; provision_concurrency: number; sync_concurrency: number };
  tokens: TokenConfig[];
  /** What the file says that AWS's agent accepts but nitro-acm reads differently or ignores, each with file:line. */
  notes: string[];
}

export type LogLevel = 'error' | 'warn' | 'info' | 'debug' | 'trace';

export class ConfigError extends Error {
  constructor(readonly file: string, readonly line: number, readonly col: number, readonly detail: string) {
    // Line 0: about the file as a whole (it cannot be read).
    super(line > 0 ? `${file}:${line}:${col}: ${detail}` : `${file}: ${detail}`);
  }
}

// The defaults of AWS's agent (its `defs`), except image_path (nitro-acm's own
// image); cpu_count and memory_mib, which it requires, default to its example's.
const DEFAULTS: Omit<AcmConfig, 'tokens' | 'notes'> = {
  enclave: { cpu_count: 2, memory_mib: 256, image_path: '/usr/share/nitro_enclaves/nitro-acm/nitro-acm.eif', boot_timeout_ms: 5000, p11kit_port: DEFAULT_KEY_PORT, rpc_port: DEFAULT_PROVISION_PORT, attestation_retry_count: 5, attestation_check_every: 1 },
  log: { level: 'info', enable_timestamp: false },
  options: { service: 'nginx', force_start: true, reload_wait_ms: 1000, sync_interval_secs: 600, pin_in_config: false, restart_for_new_tokens: true, openssl: 'auto', openssl_conf: DEFAULT_OPENSSL_CONF, provision_concurrency: 16, sync_concurrency: 48 },
};

/** AWS's agent reads 12 h when refresh_interval_secs is left out. */
export const DEFAULT_REFRESH_INTERVAL_SECS = 43_200;

type Kind = 'int' | 'bool' | 'string' | 'abs-path';
/**
 * min/max: the range nitro-acm works in. A value outside it that AWS's agent
 * takes (any non-negative integer of the field's width, `typeMax`) is brought
 * to the nearest end with a note, not refused; one it refuses is an error.
 */
interface Field { kind: Kind; min?: number; max?: number; typeMax?: number; oneOf?: string[]; expected?: string; aliasOf?: string; map?: (v: string) => string; /** Says what is wrong with a string value, or undefined. */ check?: (v: string) => string | undefined }

const U32 = 0xffffffff;
const U64 = Number.MAX_SAFE_INTEGER;
/** log.level: AWS's spelling (Error, Warn, Info, Debug, Trace) or lowercase. */
const LOG_LEVELS = ['Error', 'Warn', 'Info', 'Debug', 'Trace'];

const SCHEMA: Record<'enclave' | 'log' | 'options', Record<string, Field>> = {
  enclave: {
    cpu_count: { kind: 'int', min: 1, max: 64, typeMax: U64 }, memory_mib: { kind: 'int', min: 64, max: 1024 * 1024, typeMax: U64 }, image_path: { kind: 'abs-path' },
    boot_timeout_ms: { kind: 'int', min: 100, max: 600_000, typeMax: U64 }, p11kit_port: { kind: 'int', min: 1, max: U32, typeMax: U32 }, rpc_port: { kind: 'int', min: 1, max: U32, typeMax: U32 },
    attestation_retry_count: { kind: 'int', min: 0, max: 100, typeMax: U64 },
    // nitro-acm's own: the enclave proves its image with a fresh attestation every this many health checks (5 s each).
    attestation_check_every: { kind: 'int', min: 1, max: 17_280, typeMax: U64 },
  },
  log: { level: { kind: 'string', oneOf: [...LOG_LEVELS, ...LOG_LEVELS.map((l) => l.toLowerCase())], expected: `${LOG_LEVELS.join(', ')} (or the same in lowercase)`, map: (v) => v.toLowerCase() }, enable_timestamp: { kind: 'bool' } },
  options: {
    service: { kind: 'string', oneOf: ['nginx', 'httpd'] }, force_start: { kind: 'bool' }, nginx_force_start: { kind: 'bool', aliasOf: 'force_start' },
    reload_wait_ms: { kind: 'int', min: 0, max: 600_000, typeMax: U64 }, nginx_reload_wait_ms: { kind: 'int', min: 0, max: 600_000, typeMax: U64, aliasOf: 'reload_wait_ms' },
    sync_interval_secs: { kind: 'int', min: 10, max: 86_400 * 7, typeMax: U64 },
    reload_command: { kind: 'string' }, pin_in_config: { kind: 'bool' }, restart_for_new_tokens: { kind: 'bool' },
    openssl: { kind: 'string', oneOf: [...OPENSSL_SETTINGS] }, openssl_conf: { kind: 'abs-path' },
    // nitro-acm's own: tokens fetched and decrypted into the enclave at once (each waits mostly on S3, KMS and the enclave).
    provision_concurrency: { kind: 'int', min: 1, max: 64, typeMax: U64 },
    // nitro-acm's own: S3 sources polled at once by each sync. A poll is one conditional
    // request that waits on S3's latency, so a renewal among many tokens waits for
    // its turn: 48 stays under the AWS SDK's 50 sockets a client.
    sync_concurrency: { kind: 'int', min: 1, max: 64, typeMax: U64 },
    // nitro-acm's own: where the agent serves Prometheus metrics (off when absent).
    metrics_address: { kind: 'string', check: (v) => (parseMetricsAddress(v) ? undefined : `"${v}" is not host:port (an address to listen on, such as 127.0.0.1:9633 or [::1]:9633; port 1..65535)`) },
  },
};

export function loadConfig(file: string): AcmConfig {
  let text: string;
  try { text = fs.readFileSync(file, 'utf8'); } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file (start from /etc/nitro_enclaves/acm.example.yaml)' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'is a directory' : (e as Error).message;
    throw new ConfigError(file, 0, 0, `cannot read: ${why}`);
  }
  return parseConfig(text, file);
}

export function parseConfig(text: string, file: string): AcmConfig {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, uniqueKeys: true, prettyErrors: false });
  const fail = (node: Node | Pair | null | undefined, detail: string): never => {
    const off = (node && 'range' in node && node.range ? node.range[0] : (node as Pair | undefined)?.key && ((node as Pair).key as Node).range ? ((node as Pair).key as Node).range![0] : 0) ?? 0;
    const p = lc.linePos(off);
    throw new ConfigError(file, p.line, p.col, detail);
  };
  if (doc.errors.length) {
    const e = doc.errors[0];
    const p = lc.linePos(e.pos[0]);
    throw new ConfigError(file, p.line, p.col, `YAML: ${e.message.split('\n')[0]}`);
  }
  const root = doc.contents;
  if (!isMap(root)) return fail(root as Node, 'expected a mapping with enclave, log, options and tokens');
  const out = structuredClone(DEFAULTS) as AcmConfig;
  out.tokens = [];
  out.notes = [];
  const keyName = (p: Pair) => (isScalar(p.key) ? String(p.key.value) : '?');
  const lineOf = (node: Node | null | undefined) => `${file}:${node?.range ? lc.linePos(node.range[0]).line : 0}`;
  // AWS's agent skips keys it does not know; so does nitro-acm, saying so (a typo is then visible in `agent --check`).
  const unknownKey = (p: Pair, what: string, expected: string[]) => {
    out.notes.push(`${lineOf(p.key as Node)}: ${what}: unknown key "${keyName(p)}" is ignored (known: ${expected.join(', ')})`);
  };

  const scalar = (p: Pair, where: string, f: Field): unknown => {
    const v = p.value as Node | null;
    if (!isScalar(v)) return fail(v ?? p, `${where}: expected ${f.kind === 'bool' ? 'true or false' : f.kind === 'int' ? 'an integer' : 'a string'}`);
    const val = v.value;
    if (f.kind === 'int') {
      if (typeof val !== 'number' || !Number.isInteger(val)) return fail(v, `${where}: expected an integer, got ${JSON.stringify(val)}`);
      if (val < 0 || (f.typeMax !== undefined && val > f.typeMax)) return fail(v, `${where}: ${val} is outside 0..${f.typeMax}`);
      const clamped = Math.min(Math.max(val, f.min ?? val), f.max ?? val);
      if (clamped !== val) out.notes.push(`${file}:${lc.linePos(v.range![0]).line}: ${where}: ${val} is outside what nitro-acm works with (${f.min}..${f.max}); using ${clamped}`);
      return clamped;
    }
    if (f.kind === 'bool') {
      if (typeof val !== 'boolean') return fail(v, `${where}: expected true or false, got ${JSON.stringify(val)}`);
      return val;
    }
    // A plain scalar such as 1234 or true is a string where one is expected, as in AWS's agent: its text as written.
    const text = typeof val === 'string' ? val : val === null ? '' : v.source ?? String(val);
    if (text === '') return fail(v, `${where}: expected a non-empty string, got ${JSON.stringify(val)}`);
    if (f.oneOf && !f.oneOf.includes(text)) return fail(v, `${where}: "${text}" is not one of ${f.expected ?? f.oneOf.join(', ')}`);
    if (f.kind === 'abs-path' && !path.isAbsolute(text)) return fail(v, `${where}: "${text}" is a relative path; give an absolute one`);
    const wrong = f.check?.(text);
    if (wrong) return fail(v, `${where}: ${wrong}`);
    return f.map ? f.map(text) : text;
  };

  const section = (p: Pair, name: 'enclave' | 'log' | 'options') => {
    const m = p.value as Node | null;
    if (m === null || (isScalar(m) && m.value === null)) return; // an empty section keeps the defaults
    if (!isMap(m)) return fail(m, `${name}: expected a mapping`);
    for (const item of m.items) {
      const k = keyName(item);
      const f = SCHEMA[name][k];
      if (!f) { unknownKey(item, name, Object.keys(SCHEMA[name])); continue; }
      (out[name] as Record<string, unknown>)[f.aliasOf ?? k] = scalar(item, `${name}.${k}`, f);
    }
  };

  const oneKeyMap = (p: Pair, where: string, variants: Record<string, Record<string, Field & { required?: boolean }>>) => {
    const m = p.value as Node | null;
    if (!isMap(m) || m.items.length !== 1) return fail(m ?? p, `${where}: expected exactly one of ${Object.keys(variants).join(' or ')}`);
    const variantPair = m.items[0];
    const v = keyName(variantPair);
    const fields = variants[v];
    if (!fields) return fail(variantPair.key as Node, `${where}: unknown kind "${v}" (expected ${Object.keys(variants).join(' or ')})`);
    const inner = variantPair.value as Node | null;
    if (!isMap(inner)) return fail(inner ?? variantPair, `${where}.${v}: expected a mapping`);
    const res: Record<string, unknown> = {};
    for (const item of inner.items) {
      const k = keyName(item);
      if (!fields[k]) { unknownKey(item, `${where}.${v}`, Object.keys(fields)); continue; }
      res[k] = scalar(item, `${where}.${v}.${k}`, fields[k]);
    }
    for (const [k, f] of Object.entries(fields)) if (f.required && res[k] === undefined) return fail(inner, `${where}.${v}: missing ${k}`);
    return { [v]: res };
  };

  let tokensNode: YAMLMap | Node | null = null;
  for (const p of root.items) {
    const k = keyName(p);
    if (k === 'enclave' || k === 'log' || k === 'options') section(p, k);
    else if (k === 'tokens') tokensNode = p.value as Node;
    else unknownKey(p, 'top level', ['enclave', 'log', 'options', 'tokens']);
  }
  if (tokensNode !== null && !(isScalar(tokensNode) && tokensNode.value === null)) {
    if (!isSeq(tokensNode)) return fail(tokensNode as Node, 'tokens: expected a list');
    if (tokensNode.items.length > MAX_TOKENS) return fail(tokensNode, `tokens: ${tokensNode.items.length} tokens, at most ${MAX_TOKENS}`);
    const seen = new Map<string, number>();
    tokensNode.items.forEach((t, i) => {
      const where = `tokens[${i}]`;
      if (!isMap(t)) return fail(t as Node, `${where}: expected a mapping with label, source and target`);
      const tok: Partial<TokenConfig> = { refresh_interval_secs: DEFAULT_REFRESH_INTERVAL_SECS, line: lc.linePos(t.range![0]).line };
      for (const p of t.items) {
        const k = keyName(p);
        if (k === 'label') {
          const l = scalar(p, `${where}.label`, { kind: 'string' }) as string;
          if (Buffer.byteLength(l) > TOKEN_LABEL_MAX_BYTES) fail(p.value as Node, `${where}.label: "${l}" is ${Buffer.byteLength(l)} bytes; a PKCS#11 token label is at most ${TOKEN_LABEL_MAX_BYTES}`);
          if (seen.has(l)) fail(p.value as Node, `${where}.label: "${l}" is already the label of the token at line ${seen.get(l)}`);
          seen.set(l, lc.linePos(t.range![0]).line);
          tok.label = l;
        } else if (k === 'pin') {
          const v = p.value as Node;
          const pin = isScalar(v) && v.value !== null && typeof v.value !== 'object' ? (typeof v.value === 'string' ? v.value : v.source ?? String(v.value)) : fail(v, `${where}.pin: expected a string`);
          if (Buffer.byteLength(pin) < PIN_BYTES.min || Buffer.byteLength(pin) > PIN_BYTES.max) fail(v, `${where}.pin: ${Buffer.byteLength(pin)} bytes; a PIN is ${PIN_BYTES.min} to ${PIN_BYTES.max} bytes`);
          tok.pin = pin;
        } else if (k === 'source') {
          tok.source = oneKeyMap(p, `${where}.source`, { Acm: { certificate_arn: { kind: 'string', required: true }, bucket: { kind: 'string' } }, S3: { uri: { kind: 'string', required: true } }, FileDb: { path: { kind: 'abs-path', required: true } } }) as Source;
          if ('Acm' in tok.source && !/^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate\/.+$/.test(tok.source.Acm.certificate_arn)) {
            fail(p.value as Node, `${where}.source.Acm.certificate_arn: "${tok.source.Acm.certificate_arn}" is not an ACM certificate ARN (arn:aws:acm:REGION:ACCOUNT:certificate/ID)`);
          }
          if ('S3' in tok.source) { const uri = tok.source.S3.uri; try { parseS3Uri(uri); } catch { fail(p.value as Node, `${where}.source.S3.uri: "${uri}" is not s3://bucket/key`); } }
        } else if (k === 'target') {
          // `target: ~` is AWS's None, as leaving it out.
          if (p.value === null || (isScalar(p.value) && (p.value as { value: unknown }).value === null)) continue;
          const fields = { path: { kind: 'abs-path' as const, required: true }, user: { kind: 'string' as const }, group: { kind: 'string' as const } };
          tok.target = oneKeyMap(p, `${where}.target`, { NginxStanza: fields, Conf: fields }) as Target;
        } else if (k === 'refresh_interval_secs') {
          tok.refresh_interval_secs = scalar(p, `${where}.refresh_interval_secs`, { kind: 'int', min: 60, max: 86_400 * 2, typeMax: U64 }) as number;
        } else unknownKey(p, where, ['label', 'pin', 'source', 'target', 'refresh_interval_secs']);
      }
      for (const req of ['label', 'source'] as const) if (tok[req] === undefined) fail(t, `${where}: missing ${req}${req === 'source' ? ' (Acm: {certificate_arn}, S3: {uri} or FileDb: {path})' : ''}`);
      out.tokens.push(tok as TokenConfig);
    });
  }
  return out;
}

/** host:port to listen on, as options.metrics_address holds it (an IPv6 host in brackets). */
export interface ListenAddress { host: string; port: number }

export function parseMetricsAddress(text: string): ListenAddress | undefined {
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(text);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port < 1 || port > 65535) return undefined;
  return { host: m[1].replace(/^\[|\]$/g, ''), port };
}

/** A PIN shorter than this can be found by guessing, however slowly the enclave answers (enclave/pin-throttle.ts). */
export const MIN_SAFE_PIN_LENGTH = 16;

/** What is allowed but unwise, each naming the file and line: `agent --check` and `doctor` print them. */
export function configWarnings(c: AcmConfig, file: string): string[] {
  const out: string[] = [...c.notes];
  for (const t of c.tokens) {
    if (t.pin !== undefined && t.pin.length < MIN_SAFE_PIN_LENGTH) {
      out.push(`${file}:${t.line}: token "${t.label}": its pin is ${t.pin.length} characters; under ${MIN_SAFE_PIN_LENGTH}, a local user who guesses one every 5 s finds it in time. Leave pin out (the agent then generates a random one) or use at least ${MIN_SAFE_PIN_LENGTH} random characters`);
    }
  }
  const memory = memoryWarning({ memoryMib: c.enclave.memory_mib, imagePath: c.enclave.image_path, tokens: c.tokens.length });
  if (memory) out.push(`${file}: ${memory}`);
  return out;
}
