/** The trainer's one validated configuration: flags over environment over defaults. */
import * as os from 'node:os';
import * as path from 'node:path';
import { intFlag, parseCommand, UsageError, type CommandSpec } from '@longshot/cli/src/args';
import { configureEngine, engineSettingsFromEnv, type EngineSettings } from '@longshot/engine';
import { parseLogLevel, setLogLevel, type LogLevel } from '@longshot/telemetry';
import { loadRecipe, TRAINER_DIR, type Recipe } from './recipe';

export interface TrainerConfig {
  readonly trainerDir: string;
  readonly recipe: Recipe;
  /** Where stages keep checkpoints, latents and embeddings (resumable). */
  readonly workdir: string;
  /** The pipeline directory written at the end. */
  readonly out: string;
  /** Debian's Python with python3-torch (LONGSHOT_PYTHON; default /usr/bin/python3). */
  readonly python: string;
  /** PyTorch's threads when not the recipe's (null: the recipe's; another count gives other bits). */
  readonly threads: number | null;
  /** A few steps of each stage with small data (the test suite's smoke run). */
  readonly smoke: boolean;
  readonly vaeSteps: number | null;
  readonly ditSteps: number | null;
  readonly ditClips: number | null;
  /** Prometheus /metrics on 127.0.0.1 while the run lasts (--metrics-port; 0 = any free port). */
  readonly metricsPort: number;
}

export const SHIPPED_PIPELINE_DIR = path.resolve(TRAINER_DIR, '..', '..', 'libs', 'model', 'pipelines', 'longshot-shapes');

export const TRAIN = {
  name: 'train',
  summary: 'train the shipped longshot-shapes pipeline from scratch, in resumable stages',
  usage: 'npm run train -- [--workdir DIR] [--out DIR] [--threads N] [--smoke] [--vae-steps N] [--dit-steps N] [--dit-clips N] [--metrics-port N]',
  flags: {
    workdir: { value: 'DIR', help: 'checkpoints, latents and embeddings (a rerun resumes from them)', default: '.longshot/train' },
    out: { value: 'DIR', help: 'the pipeline directory to write', default: 'libs/model/pipelines/longshot-shapes' },
    threads: { value: 'N', help: "PyTorch's threads (another count than the recipe's gives other weights)", default: "the recipe's (reproducibility.threads)" },
    smoke: { help: 'a few steps of every stage on small batches into a scratch directory (the test suite)' },
    'vae-steps': { value: 'N', help: "override the recipe's VAE steps" },
    'dit-steps': { value: 'N', help: "override the recipe's DiT steps" },
    'dit-clips': { value: 'N', help: "override the recipe's DiT clips" },
    'metrics-port': { value: 'N', help: 'Prometheus /metrics on 127.0.0.1 during the run, 0 = any free port; the last state is also written to <workdir>/metrics.prom', default: '9467 (0 with --smoke)' },
  },
} satisfies CommandSpec;

/** `--metrics-port N` of the trainer's commands: a TCP port, 0 for any free one. */
export function metricsPortFlag(raw: string | undefined): number | undefined {
  const n = intFlag('metrics-port', raw);
  if (n !== undefined && (n < 0 || n > 65535)) throw new UsageError(`--metrics-port: expected a port in 0..65535, got ${n}`);
  return n;
}

export function trainerConfig(argv: string[], env: NodeJS.ProcessEnv): TrainerConfig {
  const f = parseCommand(TRAIN, argv).values;
  const int = (name: 'threads' | 'vae-steps' | 'dit-steps' | 'dit-clips'): number | null => {
    const n = intFlag(name, f[name]);
    if (n !== undefined && n < 1) throw new UsageError(`--${name}: expected a positive integer, got ${n}`);
    return n ?? null;
  };
  const smoke = f.smoke === true;
  const workdir = path.resolve(f.workdir ?? (smoke ? path.join(os.tmpdir(), `longshot-train-smoke-${process.pid}`) : path.join('.longshot', 'train')));
  return {
    trainerDir: TRAINER_DIR,
    recipe: loadRecipe(),
    workdir,
    out: path.resolve(f.out ?? (smoke ? path.join(workdir, 'pipeline') : SHIPPED_PIPELINE_DIR)),
    python: env.LONGSHOT_PYTHON || '/usr/bin/python3',
    threads: int('threads'),
    smoke,
    vaeSteps: int('vae-steps') ?? (smoke ? 10 : null),
    ditSteps: int('dit-steps') ?? (smoke ? 30 : null),
    ditClips: int('dit-clips') ?? (smoke ? 16 : null),
    metricsPort: metricsPortFlag(f['metrics-port']) ?? (smoke ? 0 : 9467),
  };
}

/**
 * What every trainer command (train, eval, describe) reads from its environment besides its
 * flags (docs/configuration.md), checked and applied by each one's main before it runs: the
 * libraries read no environment.
 */
export interface TrainerEnvironment {
  readonly logLevel: LogLevel;
  /** The engine the text encoder and the evaluation's renders run on. */
  readonly engine: EngineSettings;
}

export function trainerEnvironment(env: NodeJS.ProcessEnv): TrainerEnvironment {
  return { logLevel: parseLogLevel(env.LONGSHOT_LOG_LEVEL), engine: engineSettingsFromEnv(env) };
}

export function applyTrainerEnvironment(e: TrainerEnvironment): void {
  setLogLevel(e.logLevel);
  configureEngine(e.engine);
}
