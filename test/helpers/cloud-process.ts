// The test cloud's server in a process of its own (startTestCloud(dir, { process:
// 'child' })): the benchmarks measure the agent's own work, where in production
// S3 and KMS run elsewhere. Prints what the parent needs as one JSON line; stops
// on SIGTERM, or when its parent is gone.
import { startLocalCloud } from '../../src/local/cloud/server.ts';
import { testCloudOptions } from './cloud.ts';

const cloud = await startLocalCloud(testCloudOptions(process.argv[2]));
// BENCH_S3_DELAY_MS (bench/agent.ts): S3 answering after that long, as a real S3 does
// from an instance, where the local cloud answers in well under a millisecond.
const s3DelayMs = Number(process.env.BENCH_S3_DELAY_MS ?? 0);
if (s3DelayMs > 0) cloud.faults.s3 = { delayMs: s3DelayMs };
const { identity, endpoint, kmsTlsEndpoint, httpsPort, tlsCaPem, kmsHostname } = cloud;
process.stdout.write(`${JSON.stringify({ identity, endpoint, kmsTlsEndpoint, httpsPort, tlsCaPem, kmsHostname, bucket: cloud.bucket() })}\n`);
process.once('SIGTERM', () => { void cloud.stop().then(() => process.exit(0)); });
// A parent that was killed sends no SIGTERM: then this process has a new parent, and goes too.
const parent = process.ppid;
const watch = setInterval(() => {
  if (process.ppid === parent) return;
  clearInterval(watch);
  void cloud.stop().then(() => process.exit(0));
}, 1000);
watch.unref();
