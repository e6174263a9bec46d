/**
 * `npm run train`: trains the shipped pipeline (libs/model/pipelines/longshot-shapes) from
 * scratch, in resumable stages:
 *
 *   captions  the grammar's captions and words (Python, apps/trainer/python)
 *   text      the closed-vocabulary tokenizer and the seeded umT5 encoder; every caption encoded
 *             by Longshot's engine, exactly as a render will encode it (this process)
 *   vae       AutoencoderKLWan on generated clips (Python)
 *   latents   the DiT phases' training clips encoded by the VAE, once (Python)
 *   dit       WanTransformer3D with flow matching on the VAE's latents (Python)
 *   dit-more  the recipe's second DiT phase, from the first's weights (Python; when it has one)
 *   export    the trained weights as diffusers safetensors (Python)
 *   assemble  configs, tokenizer, text encoder, scheduler and model card around them (this process)
 *
 * A stage that finished leaves `<stage>.done` in the work directory and is skipped on the next
 * run; the Python stages checkpoint as they go, so an interrupted run continues where it stopped.
 * `--smoke` runs a few steps of each into a scratch directory (the test suite's smoke test).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { spawnTied } from '@longshot/cache';
import { helpText, wantsHelp } from '@longshot/cli/src/args';
import { reportError } from '@longshot/cli/src/errors';
import { applyTrainerEnvironment, TRAIN, trainerConfig, trainerEnvironment, type TrainerConfig } from './config';
import { assemblePipeline } from './assemble';
import { observeProgressLine, stageFinished, TRAINER_STAGES, withMetrics, type TrainerStage } from './metrics';
import { encodeCaptions } from './text';

type Stage = TrainerStage;

export async function train(cfg: TrainerConfig): Promise<void> {
  fs.mkdirSync(cfg.workdir, { recursive: true });
  // The run's last state goes to metrics.prom for node_exporter's textfile collector, failed or not.
  await withMetrics(cfg.metricsPort, path.join(cfg.workdir, 'metrics.prom'), (url) => log(`metrics on ${url}`), async () => {
    const started = Date.now();
    for (const stage of TRAINER_STAGES) {
      const done = path.join(cfg.workdir, `${stage}.done`);
      if (fs.existsSync(done)) {
        log(`${stage}: done earlier (${path.relative(process.cwd(), done)})`);
        stageFinished(stage, 'skipped');
        continue;
      }
      if (stage === 'dit-more' && !cfg.recipe.dit.more) {
        stageFinished(stage, 'skipped');
        continue;
      }
      const t0 = Date.now();
      log(`${stage}: starting`);
      try {
        await runStage(stage, cfg);
      } catch (e) {
        stageFinished(stage, 'failed');
        throw e;
      }
      fs.writeFileSync(done, `${new Date().toISOString()}\n`);
      stageFinished(stage, 'ok', (Date.now() - t0) / 1000);
      log(`${stage}: finished in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    }
    log(`pipeline written to ${path.relative(process.cwd(), cfg.out) || cfg.out} in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  });
}

async function runStage(stage: Stage, cfg: TrainerConfig): Promise<void> {
  switch (stage) {
    case 'captions':
    case 'vae':
    case 'latents':
    case 'dit':
    case 'dit-more':
      return python(cfg, [stage, '--workdir', cfg.workdir, ...stepFlags(stage, cfg), ...(cfg.smoke ? ['--smoke'] : [])]);
    case 'export':
      return python(cfg, ['export', '--workdir', cfg.workdir, '--out', cfg.out]);
    case 'text':
      return encodeCaptions(cfg.workdir, cfg.recipe);
    case 'assemble':
      return assemblePipeline(cfg.workdir, cfg.out, cfg.recipe);
  }
}

function stepFlags(stage: Stage, cfg: TrainerConfig): string[] {
  if (stage === 'vae' && cfg.vaeSteps) return ['--steps', String(cfg.vaeSteps)];
  const clips = cfg.ditClips ? ['--clips', String(cfg.ditClips)] : [];
  if (stage === 'latents') return clips;
  if (stage === 'dit' || stage === 'dit-more') return [...(cfg.ditSteps ? ['--steps', String(cfg.ditSteps)] : []), ...clips];
  return [];
}

/** Runs a trainer stage in Debian's Python, its progress lines passed through; it dies with this process. */
function python(cfg: TrainerConfig, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    // The trainer sets the recipe's threads and kernel choices itself, before torch loads.
    const child = spawnTied(cfg.python, ['-m', 'longshot_trainer.train', ...args, ...(cfg.threads ? ['--threads', String(cfg.threads)] : [])], {
      cwd: path.join(cfg.trainerDir, 'python'),
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    // Progress lines pass through to stdout and feed the metrics.
    createInterface({ input: child.stdout! }).on('line', (line) => {
      process.stdout.write(`${line}\n`);
      observeProgressLine(line);
    });
    child.on('error', (e) => reject(new Error(`trainer: cannot run ${cfg.python}: ${e.message} (install python3-torch: npm run setup)`)));
    child.on('close', (code, signal) => (code === 0 ? resolve() : reject(new Error(`trainer stage '${args[0]}' failed (${signal ?? `exit ${code}`})`))));
  });
}

function log(line: string): void {
  process.stderr.write(`[train] ${line}\n`);
}

async function main(argv: string[]): Promise<void> {
  if (wantsHelp(argv)) {
    process.stdout.write(helpText(TRAIN));
    return;
  }
  const config = trainerConfig(argv, process.env);
  applyTrainerEnvironment(trainerEnvironment(process.env));
  await train(config);
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    const { message, exitCode } = reportError(e);
    process.stderr.write(`${message.replace(/^longshot:/, 'train:')}\n`);
    process.exit(exitCode);
  });
}
