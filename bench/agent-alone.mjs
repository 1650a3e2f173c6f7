// The agent alone in a process of its own, from the JavaScript the RPM installs,
// for bench/agent.ts's idle figures: the service that `nitro-acm agent` runs, with
// local mode's enclave controller in place of nitro-cli (which cannot run here)
// and the test cloud's endpoints (in another process) in place of AWS's. Plain
// JavaScript, so that no TypeScript loader adds to the memory measured.
//
//   node bench/agent-alone.mjs INSTALLED_DIR OPTIONS_JSON
//
// OPTIONS_JSON: { configFile, endpoints, controller (LocalEnclaveControllerOptions),
// controlSocket }. Prints "serving N" once the tokens serve; stops on SIGTERM.
const [installed, json] = process.argv.slice(2);
if (!installed || !json) {
  process.stderr.write('usage: node bench/agent-alone.mjs INSTALLED_DIR OPTIONS_JSON\n');
  process.exit(2);
}
const o = JSON.parse(json);
const { startService } = await import(`${installed}/src/agent/service.js`);
const { LocalEnclaveController } = await import(`${installed}/src/local/local-enclave-controller.js`);
const controller = new LocalEnclaveController(o.controller);
const service = await startService({ configFile: o.configFile, controller: () => controller, endpoints: o.endpoints, reload: async () => {}, controlSocket: o.controlSocket });
const serving = [...service.agent.tokens.values()].filter((t) => t.state === 'serving').length;
process.stdout.write(`serving ${serving} enclave ${controller.process?.proc.pid}\n`);
process.once('SIGTERM', () => {
  void (async () => {
    await service.stop();
    await service.agent.stop();
    await controller.stop();
    process.exit(0);
  })();
});
