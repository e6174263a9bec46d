/**
 * The trainer's Prometheus metrics, for its two batch commands. Each serves them live on
 * `--metrics-port` while it runs and writes its last state at the end, in the text exposition
 * format, to a `metrics.prom` file (for node_exporter's textfile collector):
 *
 * - `npm run train` (about an hour; `<workdir>/metrics.prom`): figures read from the progress
 *   lines the Python stages print,
 *
 *     [dit] step 3850/6000 loss 0.4424 smoothed 0.4602 elapsed 503s eta 1272s
 *
 * - `npm run eval` (`<out>/metrics.prom`): videos rendered and measured, and the accuracies and
 *   seam scores so far, per role (the trained model, the floor).
 */
import * as fs from 'node:fs';
import { counter, gauge, registry, startMetricsServer } from '@longshot/telemetry';
import { UsageError } from '@longshot/cli/src/args';

export const TRAINER_STAGES = ['captions', 'text', 'vae', 'latents', 'dit', 'dit-more', 'export', 'assemble'] as const;
export type TrainerStage = (typeof TRAINER_STAGES)[number];

const stageStep = gauge<'stage'>({ name: 'longshot_trainer_step', help: 'Steps a training stage has completed (from its progress lines)', labelNames: ['stage'] });
const stageSteps = gauge<'stage'>({ name: 'longshot_trainer_steps', help: 'Steps the training stage runs in all', labelNames: ['stage'] });
const stageLoss = gauge<'stage' | 'kind'>({ name: 'longshot_trainer_loss', help: "The stage's latest loss: kind=last (one step) or smoothed (exponential average)", labelNames: ['stage', 'kind'] });
const stageEta = gauge<'stage'>({ name: 'longshot_trainer_eta_seconds', help: "The stage's estimated time to finish", labelNames: ['stage'] });
const stageSeconds = gauge<'stage'>({ name: 'longshot_trainer_stage_seconds', help: 'Wall time of a finished stage in this run (0: not run, or done earlier)', labelNames: ['stage'] });
const stagesFinished = counter<'stage' | 'result'>({
  name: 'longshot_trainer_stages_total',
  help: 'Stages this run finished (ok), skipped as done earlier (skipped) or failed',
  labelNames: ['stage', 'result'],
  known: { stage: TRAINER_STAGES, result: ['ok', 'skipped', 'failed'] },
});

const PROGRESS = /^\[([\w-]+)\] step (\d+)\/(\d+)(.*)$/;

/** Records one line a Python stage printed; false when it is not a progress line. */
export function observeProgressLine(line: string): boolean {
  const m = PROGRESS.exec(line.trim());
  if (!m) return false;
  const [, stage, step, steps, rest] = m;
  stageStep.set({ stage }, Number(step));
  stageSteps.set({ stage }, Number(steps));
  const figure = (name: string): number | null => {
    const f = new RegExp(`\\b${name} (-?[0-9.]+(?:e[+-]?\\d+)?)`).exec(rest);
    return f ? Number(f[1]) : null;
  };
  const loss = figure('loss');
  const smoothed = figure('smoothed');
  const eta = figure('eta');
  if (loss !== null) stageLoss.set({ stage, kind: 'last' }, loss);
  if (smoothed !== null) stageLoss.set({ stage, kind: 'smoothed' }, smoothed);
  if (eta !== null) stageEta.set({ stage }, eta);
  return true;
}

export function stageFinished(stage: TrainerStage, result: 'ok' | 'skipped' | 'failed', seconds = 0): void {
  stagesFinished.inc({ stage, result });
  if (result === 'ok') stageSeconds.set({ stage }, seconds);
}

export const EVAL_ROLES = ['model', 'floor'] as const;
export type EvalRole = (typeof EVAL_ROLES)[number];
export const EVAL_FIGURES = ['colour', 'shape', 'motion', 'all'] as const;
export type EvalFigure = (typeof EVAL_FIGURES)[number];

const evalVideos = counter<'role' | 'kind'>({
  name: 'longshot_eval_videos_total',
  help: 'Videos the evaluation rendered and measured: kind=clip (a held-out caption and seed) or seam (a long video)',
  labelNames: ['role', 'kind'],
  known: { role: EVAL_ROLES, kind: ['clip', 'seam'] },
});
const evalVideosPlanned = gauge<'role' | 'kind'>({ name: 'longshot_eval_videos', help: 'Videos the evaluation renders in all, per role and kind', labelNames: ['role', 'kind'] });
const evalRenderSeconds = counter<'role'>({ name: 'longshot_eval_render_seconds_total', help: 'Wall seconds spent rendering evaluation videos', labelNames: ['role'], known: { role: EVAL_ROLES } });
const evalAccuracy = gauge<'role' | 'figure'>({ name: 'longshot_eval_accuracy', help: 'Share of the clips measured so far that show the asked colour, shape, motion, or all three', labelNames: ['role', 'figure'] });
const evalSeamScore = gauge<'role' | 'mode'>({ name: 'longshot_eval_seam_score', help: 'Mean seam score of the long videos so far (frame change at block seams over inside blocks; 1 = invisible)', labelNames: ['role', 'mode'] });

export const evalMetrics = {
  planned(role: EvalRole, clips: number, seams: number): void {
    evalVideosPlanned.set({ role, kind: 'clip' }, clips);
    evalVideosPlanned.set({ role, kind: 'seam' }, seams);
  },
  /** One clip measured; `accuracy` is over every clip of this role so far. */
  clip(role: EvalRole, seconds: number, accuracy: Record<EvalFigure, number>): void {
    evalVideos.inc({ role, kind: 'clip' });
    evalRenderSeconds.inc({ role }, seconds);
    for (const figure of EVAL_FIGURES) evalAccuracy.set({ role, figure }, accuracy[figure]);
  },
  /** One seam video measured; `score` is the mean of this role's videos of this mode so far (null: none scored). */
  seam(role: EvalRole, mode: string, seconds: number, score: number | null): void {
    evalVideos.inc({ role, kind: 'seam' });
    evalRenderSeconds.inc({ role }, seconds);
    if (score !== null) evalSeamScore.set({ role, mode }, score);
  },
};

/** The registry's current exposition text (what /metrics serves). */
export const metricsText = (): Promise<string> => registry.metrics();

/**
 * Runs `work` with /metrics served on 127.0.0.1:`port` (0 = any free port; `announce` gets the
 * address), then writes the last state to `file`, whether the work succeeded or not.
 */
export async function withMetrics<T>(port: number, file: string, announce: (url: string) => void, work: () => Promise<T>): Promise<T> {
  const server = await startMetricsServer({ port }).catch((e: Error) => {
    throw new UsageError(`--metrics-port: ${e.message.replace(/^metrics server: /, '')} (choose another port, or 0 for any free one)`);
  });
  announce(`http://127.0.0.1:${server.port}/metrics`);
  try {
    return await work();
  } finally {
    fs.writeFileSync(file, await metricsText());
    await server.close();
  }
}
