// npm run build:eif [-- --private-key KEY.pem --signing-certificate CERT.pem] [--out DIR]
//
// Makes the enclave image: (1) the Docker build context in DIR/context (default
// build/eif): the enclave app bundled with esbuild (main.js and the key worker,
// AWS SDK included, nothing of the agent), the native addon's C source,
// enclave/Dockerfile and enclave/rootfs.sh (the image's whole filesystem); (2) where Docker can build, `docker build`; (3) where
// nitro-cli exists, `nitro-cli build-enclave` (signed, giving PCR8, with the two
// options) into DIR/nitro-acm.eif, and its measurements into
// DIR/image-measurements.json for the KMS key policy. Where a tool is missing it
// says so, keeps what was made, and exits 3.
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync, spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { build } from 'esbuild';
import { PROJECT_ROOT } from '../src/paths.ts';
import { buildEnclave } from '../src/agent/nitro-cli.ts';

/**
 * Writes the Docker build context for the enclave image; returns its files,
 * relative and sorted. `withLocalMode` keeps local mode's code in the bundle: only
 * the benchmark does that, to measure the image's app as it runs beside the local cloud.
 */
export async function makeEnclaveContext(dir: string, o: { withLocalMode?: boolean } = {}): Promise<string[]> {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(path.join(dir, 'native'), { recursive: true });
  await build({
    entryPoints: { main: path.join(PROJECT_ROOT, 'enclave/main.ts'), 'key-worker': path.join(PROJECT_ROOT, 'enclave/key-worker.ts') },
    outdir: path.join(dir, 'app'),
    bundle: true, splitting: true, format: 'esm', platform: 'node', target: 'node20',
    chunkNames: 'chunk-[hash]', legalComments: 'none', logLevel: 'warning',
    // The production image: enclave/main.ts then leaves local mode's code (enclave/local-only.ts) out of the bundle.
    define: o.withLocalMode ? {} : { 'process.env.NITRO_ACM_BUILD': '"production-image"' },
    // The AWS SDK has CommonJS parts; an ESM bundle gives them a require.
    banner: { js: "import { createRequire as __nitroAcmCreateRequire } from 'node:module'; const require = __nitroAcmCreateRequire(import.meta.url);" },
  });
  fs.copyFileSync(path.join(PROJECT_ROOT, 'shared/native/native.c'), path.join(dir, 'native/native.c'));
  fs.copyFileSync(path.join(PROJECT_ROOT, 'enclave/Dockerfile'), path.join(dir, 'Dockerfile'));
  fs.copyFileSync(path.join(PROJECT_ROOT, 'enclave/rootfs.sh'), path.join(dir, 'rootfs.sh'));
  return (fs.readdirSync(dir, { recursive: true }) as string[]).filter((f) => fs.statSync(path.join(dir, f)).isFile()).sort();
}

function works(cmd: string, args: string[]): { ok: boolean; why: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) return { ok: false, why: (r.error as NodeJS.ErrnoException).code === 'ENOENT' ? `${cmd} is not installed` : r.error.message };
  return { ok: r.status === 0, why: `${r.stderr}${r.stdout}`.trim().split('\n').slice(-1)[0] ?? '' };
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { out: { type: 'string' }, 'private-key': { type: 'string' }, 'signing-certificate': { type: 'string' }, tag: { type: 'string' }, help: { type: 'boolean', short: 'h' } }, strict: true });
  if (values.help) { process.stdout.write(fs.readFileSync(new URL(import.meta.url), 'utf8').split('\n').filter((l) => l.startsWith('//')).map((l) => l.slice(3)).join('\n') + '\n'); return 0; }
  const out = path.resolve(values.out ?? path.join(PROJECT_ROOT, 'build/eif'));
  const version = (JSON.parse(fs.readFileSync(path.join(PROJECT_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
  const tag = values.tag ?? `nitro-acm-enclave:${version}`;
  const context = path.join(out, 'context');
  const files = await makeEnclaveContext(context);
  const size = files.reduce((n, f) => n + fs.statSync(path.join(context, f)).size, 0);
  process.stderr.write(`build:eif: build context ${context}: ${files.length} files, ${(size / 1024).toFixed(0)} KiB (${files.join(', ')})\n`);

  const docker = works('docker', ['info']);
  if (!docker.ok) {
    process.stderr.write(`build:eif: Docker cannot build images here (${docker.why}).\nThe build context is ready in ${context}; on a machine with Docker and nitro-cli:\n  docker build -t ${tag} ${context}\n  nitro-cli build-enclave --docker-uri ${tag} --output-file nitro-acm.eif\n`);
    return 3;
  }
  execFileSync('docker', ['build', '-t', tag, context], { stdio: 'inherit' });
  const cli = works(process.env.NITRO_CLI || 'nitro-cli', ['--version']);
  if (!cli.ok) {
    process.stderr.write(`build:eif: the image ${tag} is built, but nitro-cli is not available here (${cli.why}); on a parent instance with the AWS Nitro Enclaves CLI:\n  nitro-cli build-enclave --docker-uri ${tag} --output-file nitro-acm.eif\n`);
    return 3;
  }
  const eif = path.join(out, 'nitro-acm.eif');
  const m = await buildEnclave({ dockerUri: tag, outputFile: eif, privateKey: values['private-key'], signingCertificate: values['signing-certificate'] });
  fs.writeFileSync(path.join(out, 'image-measurements.json'), JSON.stringify({ Image: path.basename(eif), Version: version, Measurements: m }, null, 2) + '\n');
  process.stderr.write(`build:eif: ${eif}\n  PCR0 ${m.PCR0}\n  PCR1 ${m.PCR1}\n  PCR2 ${m.PCR2}\n${m.PCR8 ? `  PCR8 ${m.PCR8}\n` : ''}  measurements in ${path.join(out, 'image-measurements.json')}\n`);
  return 0;
}

if (import.meta.url === `file://${process.argv[1]}`) main().then((c) => process.exit(c), (e) => { process.stderr.write(`build:eif: ${(e as Error).message}\n`); process.exit(1); });
