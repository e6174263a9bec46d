/** The trainer's one validated configuration: flags over environment over defaults. */
import * as os from 'node:os';
import * as path from 'node:path';
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
  readonly threads: number;
  /** A few steps of each stage with small data (the test suite's smoke run). */
  readonly smoke: boolean;
  readonly vaeSteps: number | null;
  readonly ditSteps: number | null;
  readonly ditClips: number | null;
}

export const SHIPPED_PIPELINE_DIR = path.resolve(TRAINER_DIR, '..', '..', 'libs', 'model', 'pipelines', 'longshot-shapes');
const USAGE = 'usage: npm run train -- [--workdir DIR] [--out DIR] [--threads N] [--smoke] [--vae-steps N] [--dit-steps N] [--dit-clips N]';

export function trainerConfig(argv: readonly string[], env: NodeJS.ProcessEnv): TrainerConfig {
  const flags = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument '${a}'\n${USAGE}`);
    const name = a.slice(2);
    if (name === 'smoke') flags.set(name, true);
    else if (['workdir', 'out', 'threads', 'vae-steps', 'dit-steps', 'dit-clips'].includes(name)) {
      const v = argv[++i];
      if (v === undefined) throw new Error(`--${name}: needs a value\n${USAGE}`);
      flags.set(name, v);
    } else throw new Error(`unknown flag --${name}\n${USAGE}`);
  }
  const int = (name: string): number | null => {
    const v = flags.get(name);
    if (v === undefined) return null;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name}: expected a positive integer, got '${String(v)}'`);
    return n;
  };
  const smoke = flags.get('smoke') === true;
  const str = (name: string): string | null => (typeof flags.get(name) === 'string' ? (flags.get(name) as string) : null);
  const workdir = path.resolve(str('workdir') ?? (smoke ? path.join(os.tmpdir(), `longshot-train-smoke-${process.pid}`) : path.join('.longshot', 'train')));
  return {
    trainerDir: TRAINER_DIR,
    recipe: loadRecipe(),
    workdir,
    out: path.resolve(str('out') ?? (smoke ? path.join(workdir, 'pipeline') : SHIPPED_PIPELINE_DIR)),
    python: env.LONGSHOT_PYTHON || '/usr/bin/python3',
    threads: int('threads') ?? Math.max(1, os.cpus().length),
    smoke,
    vaeSteps: int('vae-steps') ?? (smoke ? 10 : null),
    ditSteps: int('dit-steps') ?? (smoke ? 30 : null),
    ditClips: int('dit-clips') ?? (smoke ? 16 : null),
  };
}
