// A crypto pool thread: runs one private-key operation per message.
import { parentPort } from 'node:worker_threads';
import { sign, decrypt, type SignJob, type DecryptJob } from './rsa-ops.ts';
import { P11Error, CKR } from '../src/shared/pkcs11-rv.ts';

type Msg = { seq: number; kind: 'sign'; job: SignJob } | { seq: number; kind: 'decrypt'; job: DecryptJob };

parentPort!.on('message', (m: Msg) => {
  try {
    const out = m.kind === 'sign' ? sign(m.job) : decrypt(m.job);
    parentPort!.postMessage({ seq: m.seq, ok: out }, [out.buffer as ArrayBuffer].filter((b) => b.byteLength === out.length));
  } catch (e) {
    const rv = e instanceof P11Error ? e.rv : CKR.GENERAL_ERROR;
    parentPort!.postMessage({ seq: m.seq, rv, message: (e as Error).message });
  }
});
