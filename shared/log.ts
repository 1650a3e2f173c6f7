// One line per event on stderr (journald adds its own timestamp under systemd):
//   2026-11-23T18:00:00.000Z info  [token-label] message
// Never pass a PIN, key or credential here.
// 'trace' is acm.yaml's Trace (AWS's agent has it): everything debug shows, and
// nitro-acm has nothing finer to say.
export type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';
const ORDER: Record<Level, number> = { trace: -1, debug: 0, info: 1, warn: 2, error: 3 };

let threshold: Level = (process.env.NITRO_ACM_LOG_LEVEL as Level) in ORDER ? (process.env.NITRO_ACM_LOG_LEVEL as Level) : 'info';
let timestamps = true;
/** text: the line above; json: one JSON object a line ({time, level, token?, message}), for log shippers. */
export type LogFormat = 'text' | 'json';
export const LOG_FORMATS: readonly LogFormat[] = ['text', 'json'];
let format: LogFormat = process.env.NITRO_ACM_LOG_FORMAT === 'json' ? 'json' : 'text';

export function configureLog(opts: { level?: Level; timestamps?: boolean; format?: LogFormat }): void {
  if (opts.level) threshold = opts.level;
  if (opts.timestamps !== undefined) timestamps = opts.timestamps;
  if (opts.format) format = opts.format;
}

function emit(level: Level, token: string | undefined, msg: string): void {
  if (ORDER[level] < ORDER[threshold]) return;
  if (format === 'json') {
    // Always timed: a shipper has no journald to add the time.
    process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level, ...(token !== undefined ? { token } : {}), message: msg }) + '\n');
    return;
  }
  const parts = [];
  if (timestamps) parts.push(new Date().toISOString());
  parts.push(level.padEnd(5));
  if (token !== undefined) parts.push(`[${token}]`);
  parts.push(msg.replace(/\n/g, ' '));
  process.stderr.write(parts.join(' ') + '\n');
}

export interface Logger {
  debug(msg: string): void; info(msg: string): void; warn(msg: string): void; error(msg: string): void;
  token(label: string): Logger;
}
export function logger(token?: string): Logger {
  return {
    debug: (m) => emit('debug', token, m),
    info: (m) => emit('info', token, m),
    warn: (m) => emit('warn', token, m),
    error: (m) => emit('error', token, m),
    token: (label) => logger(label),
  };
}
export const log = logger();

/**
 * Node prints process warnings itself; route them through this log instead, and
 * drop the AWS SDK's notice that its releases after January 2027 need Node 22
 * (nitro-acm pins an SDK version that supports Node 20).
 */
export function routeProcessWarnings(): void {
  process.removeAllListeners('warning');
  process.on('warning', (w) => {
    if (w.name === 'NodeVersionSupportWarning' || w.message.startsWith('NodeVersionSupportWarning')) return;
    emit('warn', undefined, `${w.name}: ${w.message}`);
  });
}
