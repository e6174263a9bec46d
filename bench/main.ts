/**
 * `npm run bench -- NAME [--json]`: runs one benchmark. Each prints JSON with --json (the whole
 * report as one line) and reports ratios measured side by side in the same run.
 */
import { configureEngine, engineSettingsFromEnv } from '@longshot/engine';
import { parseLogLevel, setLogLevel } from '@longshot/telemetry';

const BENCHES: Record<string, () => Promise<(opts: { json: boolean }) => Promise<object>>> = {
  kernels: async () => (await import('./kernels')).kernelsBench,
  transport: async () => (await import('./transport')).transportBench,
  pipeline: async () => (await import('./pipeline')).pipelineBench,
  scaling: async () => (await import('./scaling')).scalingBench,
  gpu: async () => (await import('./gpu')).gpuBench,
  load: async () => (await import('./load')).loadBench,
  vae: async () => (await import('./vae')).vaeBench,
};

async function main(argv: string[]): Promise<void> {
  const json = argv.includes('--json');
  const names = argv.filter((a) => !a.startsWith('--'));
  const unknownFlag = argv.find((a) => a.startsWith('--') && a !== '--json');
  if (unknownFlag) throw new Error(`unknown flag ${unknownFlag} (only --json)`);
  if (names.length !== 1 || !BENCHES[names[0]]) throw new Error(`usage: npm run bench -- ${Object.keys(BENCHES).join('|')} [--json]`);
  // The engine and the loggers read no environment: the benches take the apps' variables (docs/configuration.md).
  setLogLevel(parseLogLevel(process.env.LONGSHOT_LOG_LEVEL));
  configureEngine(engineSettingsFromEnv(process.env));
  const bench = await BENCHES[names[0]]();
  const report = await bench({ json });
  if (json) process.stdout.write(`${JSON.stringify(report)}\n`);
}

main(process.argv.slice(2)).then(
  () => process.exit(0),
  (e: unknown) => {
    process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  },
);
