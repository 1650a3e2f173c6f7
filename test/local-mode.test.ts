// nitro-acm local, the main job: a sealed demo certificate in the local S3, the
// enclave app decrypting its key through the local KMS with attestation, nginx
// serving it; the key is never on disk; a second run reuses the same state.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { runLocal } from '../src/local/local-mode.ts';
import { freePort, handshake } from '../src/local/webservers.ts';
import { tmpdir } from './helpers/enclave.ts';

test('local mode serves https with a key only the enclave app decrypted, and again on a second run', async (t) => {
  const dir = tmpdir('local');
  fs.chmodSync(dir, 0o755);
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const o = { port: await freePort(), stateDir: path.join(dir, 'state'), runtimeDir: path.join(dir, 'run') };
  const first = await runLocal(o);
  let served: string;
  try {
    const ca = fs.readFileSync(first.caFile, 'utf8');
    const h = await handshake(o.port, { servername: 'localhost', ca });
    t.regex(h.body, /signed by the enclave app/);
    t.is(h.subjectCN, 'localhost');
    served = h.fingerprint256;
    t.regex(first.curl, /^curl --cacert \S+demo-ca\.pem https:\/\/localhost:\d+\/$/);
  } finally { await first.stop(); }
  // No private key of a serving certificate anywhere on disk: only the demo CA's.
  const keys = fs.readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile())
    .map((e) => path.join(e.parentPath ?? e.path, e.name))
    .filter((f) => fs.readFileSync(f, 'latin1').includes('PRIVATE KEY-----'))
    .map((f) => path.relative(dir, f)).sort();
  t.deepEqual(keys.filter((f) => !f.startsWith('state/cloud/') && !f.startsWith('state/nsm-sim/')), ['state/demo-ca.key']);
  const second = await runLocal(o);
  try {
    const h = await handshake(o.port, { servername: 'localhost', ca: fs.readFileSync(second.caFile, 'utf8') });
    t.is(h.fingerprint256, served, 'the same sealed certificate is served again');
  } finally { await second.stop(); }
});
