// The agent service with a real nginx and a real Apache httpd that include the
// files it writes, on one OpenSSL path: for the tests that watch both web
// servers through renewals and enclave outages (serving, forked-in-outage).
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { startService, type RunningService } from '../../src/agent/service.ts';
import { registerWithP11Kit } from '../../src/local/p11kit.ts';
import { launchNginx, startHttpd, freePort, nginxMainLine, type RunningServer } from '../../src/local/webservers.ts';
import type { EnclaveController } from '../../src/agent/enclave-controller.ts';
import type { TestCloud } from './cloud.ts';

export interface Served {
  service: RunningService; nginx: RunningServer; httpd: RunningServer; nginxPort: number; httpdPort: number;
  /** Each token's certificate as published. */
  certs: Map<string, string>;
  /** The agent's control socket. */
  socket: string;
}

/**
 * Under `dir/<openssl>`: publishes a certificate per name (S3 bundles/<name>.json),
 * writes acm.yaml (options.openssl and openssl_conf, a token per name with its
 * target under etc/), starts the service, then nginx (a server per name in
 * `nginxNames`, answering its name) and httpd (a virtual host per name in
 * `httpdNames`), each including the token's file. Everything stops with the test.
 */
export async function serveWithBothServers(t: ExecutionContext, o: {
  tc: TestCloud; dir: string; openssl: 'engine' | 'provider'; controller: EnclaveController;
  nginxNames: string[]; httpdNames: string[]; healthIntervalMs: number;
}): Promise<Served> {
  const run = path.join(o.dir, o.openssl);
  const etc = path.join(run, 'etc');
  fs.mkdirSync(etc, { recursive: true, mode: 0o755 });
  fs.chmodSync(run, 0o755);
  const certs = new Map<string, string>();
  for (const n of [...o.nginxNames, ...o.httpdNames]) certs.set(n, await o.tc.publish(o.tc.cloud.bucket(), `bundles/${n}.json`, [`${n}.test`]));
  const token = (n: string, kind: 'NginxStanza' | 'Conf') => `  - label: ${n}\n    source:\n      S3:\n        uri: "s3://${o.tc.cloud.bucket()}/bundles/${n}.json"\n    target:\n      ${kind}:\n        path: ${etc}/${n}.conf\n`;
  const opensslConf = path.join(run, 'openssl.cnf');
  const configFile = path.join(run, 'acm.yaml');
  fs.writeFileSync(configFile, `options:\n  openssl: ${o.openssl}\n  openssl_conf: ${opensslConf}\ntokens:\n${o.nginxNames.map((n) => token(n, 'NginxStanza')).join('')}${o.httpdNames.map((n) => token(n, 'Conf')).join('')}`);
  const socket = path.join(run, 'agent.sock');
  let nginx: RunningServer | undefined, httpd: RunningServer | undefined;
  const service = await startService({
    configFile, controller: () => o.controller, endpoints: o.tc.endpoints, controlSocket: socket, healthIntervalMs: o.healthIntervalMs,
    reload: async () => { nginx?.reload(); httpd?.reload(); },
  });
  t.teardown(async () => { await nginx?.stop(); await httpd?.stop(); await service.stop(); await service.agent.stop(); });
  const env: Record<string, string> = { NITRO_ACM_KEY_ADDRESS: service.agent.enclaveEndpoints!.keyAddress, ...(o.openssl === 'provider' ? { OPENSSL_CONF: opensslConf } : {}) };
  registerWithP11Kit();
  const nginxPort = await freePort();
  const prefix = path.join(run, 'nginx');
  fs.mkdirSync(path.join(prefix, 'tmp'), { recursive: true });
  const servers = o.nginxNames.map((n) => `  server {\n    listen 127.0.0.1:${nginxPort} ssl;\n    server_name ${n}.test;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    include ${etc}/${n}.conf;\n    location / { return 200 "${n}\\n"; }\n  }\n`).join('');
  fs.writeFileSync(path.join(prefix, 'nginx.conf'), `daemon off;\nworker_processes 2;\nerror_log ${prefix}/error.log notice;\npid ${prefix}/nginx.pid;\n${nginxMainLine(o.openssl)}\nenv NITRO_ACM_KEY_ADDRESS;\nevents { worker_connections 256; }\nhttp {\n  access_log off;\n  client_body_temp_path ${prefix}/tmp;\n${servers}}\n`);
  nginx = await launchNginx({ prefix, conf: path.join(prefix, 'nginx.conf'), port: nginxPort, env });
  const httpdPort = await freePort();
  httpd = await startHttpd({ dir: path.join(run, 'httpd'), port: httpdPort, env, openssl: o.openssl, sites: o.httpdNames.map((n) => ({ serverName: `${n}.test`, include: `${etc}/${n}.conf` })) });
  return { service, nginx, httpd, nginxPort, httpdPort, certs, socket };
}
