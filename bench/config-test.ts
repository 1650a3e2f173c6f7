// What the configuration test the agent runs before every reload costs
// (`nginx -t -q`, src/agent/service.ts): nginx parses its configuration and loads
// every key through the OpenSSL pkcs11 engine from the enclave app, as the
// reload itself does. Prints the median of 7 runs for configurations with 1, 10
// and 50 tokens, against an enclave app holding 50.
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { startEnclave } from '../test/helpers/enclave.ts';
import { registerWithP11Kit } from '../src/local/p11kit.ts';

const RUNS = 7;
const fx = await startEnclave(Array.from({ length: 50 }, (_, i) => ({ label: `t${i}`, pin: '5555', names: [`t${i}.test`] })), { prefix: 'bench-config-test' });
try {
  registerWithP11Kit();
  const dir = fx.dir;
  fs.mkdirSync(path.join(dir, 'tmp'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'pin'), '5555');
  const conf = path.join(dir, 'nginx.conf');
  console.log(`| tokens in nginx.conf | nginx -t -q, median of ${RUNS} | min | max |\n|---|---|---|---|`);
  for (const n of [1, 10, 50]) {
    const servers = fx.tokens.slice(0, n).map((t) => `  server {\n    listen 127.0.0.1:1 ssl;\n    server_name ${t.names[0]};\n    ssl_certificate ${t.certificate};\n    ssl_certificate_key "engine:pkcs11:pkcs11:token=${t.label};type=private?pin-source=file:${dir}/pin";\n  }\n`).join('');
    fs.writeFileSync(conf, `error_log ${dir}/error.log;\npid ${dir}/nginx.pid;\nssl_engine pkcs11;\nevents {}\nhttp {\n  client_body_temp_path ${dir}/tmp;\n${servers}}\n`);
    const ms: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const t0 = performance.now();
      execFileSync('nginx', ['-t', '-q', '-p', dir, '-c', conf], { env: { ...process.env, NITRO_ACM_KEY_ADDRESS: fx.address }, stdio: 'pipe' });
      ms.push(performance.now() - t0);
    }
    ms.sort((a, b) => a - b);
    console.log(`| ${n} | ${ms[RUNS >> 1].toFixed(0)} ms | ${ms[0].toFixed(0)} ms | ${ms[RUNS - 1].toFixed(0)} ms |`);
  }
} finally {
  await fx.cleanup();
}
