// nitro-acm local: the whole key path on one machine, for trying nitro-acm and
// for development. A demo CA and a certificate for localhost (made on the first
// run and kept in the state directory), the enclave app holding the key, the
// PKCS#11 module registered with p11-kit, and nginx serving https://localhost:PORT
// with ssl_engine pkcs11 and the stanza nitro-acm writes. Ctrl-C stops it all;
// files are left in place (nothing is deleted on stop).
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { log } from '../shared/log.ts';
import { render } from '../templates.ts';
import { createCA, issueServerCert } from './pki.ts';
import { startLocalEnclave, type LocalEnclave } from './enclave-process.ts';
import { registerWithP11Kit } from './p11kit.ts';
import { handshake, fingerprintOf, run, type RunningServer } from './webservers.ts';
import { spawn } from 'node:child_process';

export interface LocalOptions {
  port: number;
  stateDir: string;
  runtimeDir: string;
  /** Resolve once serving instead of waiting for a signal (tests). */
  detach?: boolean;
}

export interface LocalRun {
  caFile: string;
  url: string;
  curl: string;
  stop(): Promise<void>;
}

const LABEL = 'localhost';

function writeAtomic(file: string, data: string | Buffer, mode: number): void {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, data, { mode });
  fs.chmodSync(tmp, mode);
  fs.renameSync(tmp, file);
}

/** The demo CA and certificate: made once, reused after. */
function demoMaterial(stateDir: string): { caFile: string; keyFile: string; certFile: string; pin: string } {
  fs.mkdirSync(stateDir, { recursive: true });
  fs.chmodSync(stateDir, 0o700);
  const caFile = path.join(stateDir, 'demo-ca.pem');
  const caKey = path.join(stateDir, 'demo-ca.key');
  const keyFile = path.join(stateDir, 'localhost.key');
  const certFile = path.join(stateDir, 'localhost.crt');
  const pinFile = path.join(stateDir, 'localhost.pin');
  if (!fs.existsSync(caFile) || !fs.existsSync(caKey)) {
    // A name of its own per machine: two demo CAs with one name confuse clients that trust the other.
    const ca = createCA(`nitro-acm local demo CA ${crypto.randomBytes(4).toString('hex')}`);
    writeAtomic(caKey, ca.keyPem, 0o600);
    writeAtomic(caFile, ca.certPem, 0o644);
    log.info(`first run: created a demo CA in ${caFile}`);
  }
  if (!fs.existsSync(keyFile) || !fs.existsSync(certFile)) {
    const ca = { name: 'demo CA', certPem: fs.readFileSync(caFile, 'utf8'), keyPem: fs.readFileSync(caKey, 'utf8') };
    const leaf = issueServerCert(ca, ['localhost', '127.0.0.1']);
    writeAtomic(keyFile, leaf.keyPem, 0o600);
    writeAtomic(certFile, leaf.certPem, 0o644);
    log.token(LABEL).info('issued a demo certificate for localhost');
  }
  if (!fs.existsSync(pinFile)) writeAtomic(pinFile, crypto.randomBytes(12).toString('base64url'), 0o600);
  return { caFile, keyFile, certFile, pin: fs.readFileSync(pinFile, 'utf8').trim() };
}

export async function runLocal(o: LocalOptions): Promise<LocalRun> {
  log.warn('LOCAL MODE: for trying nitro-acm and for development only; the "enclave" is an ordinary process here');
  const m = demoMaterial(o.stateDir);
  fs.mkdirSync(o.runtimeDir, { recursive: true });
  // nginx workers run as another user and must reach the key socket and read the chain.
  fs.chmodSync(o.runtimeDir, 0o711);
  for (let d = path.dirname(o.runtimeDir); d !== path.dirname(d); d = path.dirname(d)) {
    if ((fs.statSync(d).mode & 0o001) === 0) {
      throw new Error(`--runtime-dir ${o.runtimeDir}: ${d} cannot be entered by other users (the web server's workers); choose a directory outside it`);
    }
  }
  const socket = path.join(o.runtimeDir, 'keys.sock');
  const address = `unix:path=${socket}`;

  // Until the attested path lands, local mode hands the enclave app its key from a file.
  const tokensFile = path.join(o.stateDir, 'local-tokens.json');
  writeAtomic(tokensFile, JSON.stringify({ tokens: [{ label: LABEL, pin: m.pin, key: m.keyFile, certificate: m.certFile, chain: m.caFile }] }), 0o600);
  const enclave: LocalEnclave = await startLocalEnclave({ keyAddress: address, plaintextKeys: tokensFile });
  log.info(`enclave app up (pid ${enclave.proc.pid}) on ${address}`);
  const moduleFile = registerWithP11Kit(address);
  log.info(`PKCS#11 module registered with p11-kit in ${moduleFile}`);

  // What the agent writes for a token: chain file, PIN file, stanza.
  const chainFile = path.join(o.runtimeDir, `${LABEL}.chain.pem`);
  const pinFile = path.join(o.runtimeDir, `${LABEL}.pin`);
  const stanza = path.join(o.runtimeDir, `${LABEL}.conf`);
  writeAtomic(chainFile, fs.readFileSync(m.certFile, 'utf8') + fs.readFileSync(m.caFile, 'utf8'), 0o444);
  writeAtomic(pinFile, m.pin, 0o400);
  writeAtomic(stanza, render('nginx-stanza.conf', {
    LABEL, SOURCE: 'local demo certificate', CHAIN_FILE: chainFile,
    KEY_URI: `pkcs11:token=${LABEL};type=private?pin-source=file:${pinFile}`,
  }), 0o444);

  const prefix = path.join(o.runtimeDir, 'nginx');
  fs.mkdirSync(path.join(prefix, 'tmp'), { recursive: true });
  const conf = path.join(prefix, 'nginx.conf');
  writeAtomic(conf, render('local/nginx.conf', { PREFIX: prefix, PORT: String(o.port), STANZA: stanza }), 0o644);
  const check = await run('nginx', ['-t', '-p', prefix, '-c', conf, '-e', path.join(prefix, 'error.log')]);
  if (check.status !== 0) {
    await enclave.stop();
    throw new Error(`nginx refused the local configuration:\n${check.out}`);
  }
  const nginxProc = spawn('nginx', ['-p', prefix, '-c', conf, '-e', path.join(prefix, 'error.log')], { stdio: ['ignore', 'inherit', 'inherit'] });
  const nginx: Pick<RunningServer, 'stop'> = {
    async stop() {
      if (nginxProc.exitCode !== null) return;
      const exited = new Promise((r) => nginxProc.once('exit', r));
      nginxProc.kill('SIGQUIT');
      await exited;
    },
  };
  const caPem = fs.readFileSync(m.caFile, 'utf8');
  const want = fingerprintOf(fs.readFileSync(m.certFile, 'utf8'));
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      const h = await handshake(o.port, { servername: 'localhost', ca: caPem, timeoutMs: 2000 });
      if (h.fingerprint256 === want) break;
    } catch (e) {
      const exited = nginxProc.exitCode !== null;
      if (exited || Date.now() > deadline) {
        await nginx.stop();
        await enclave.stop();
        throw new Error(exited
          ? `nginx exited with status ${nginxProc.exitCode} (its messages are above; is port ${o.port} taken? --port chooses another)`
          : `nginx is not serving the demo certificate on port ${o.port}: ${(e as Error).message} (see ${path.join(prefix, 'error.log')})`);
      }
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const url = `https://localhost:${o.port}/`;
  const curl = `curl --cacert ${m.caFile} ${url}`;
  log.token(LABEL).info(`serving ${url} with the key in the enclave app (nginx pid ${nginxProc.pid})`);
  // If this process goes away without stop() (an uncaught error, process.exit), take the children along.
  const orphanGuard = () => { nginxProc.kill('SIGQUIT'); enclave.proc.kill('SIGTERM'); };
  process.once('exit', orphanGuard);
  const stop = async () => {
    process.removeListener('exit', orphanGuard);
    await nginx.stop();
    await enclave.stop();
    log.info('local mode stopped; files are kept in ' + o.runtimeDir);
  };
  return { caFile: m.caFile, url, curl, stop };
}
