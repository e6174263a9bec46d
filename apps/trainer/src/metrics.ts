/**
 * The trainer's Prometheus metrics. Served live on `--metrics-port` while `npm run train` runs
 * (a run takes about an hour) and written at the end, in the text exposition format, to
 * `<workdir>/metrics.prom` (for node_exporter's textfile collector: a batch job's last state).
 * The figures come from the progress lines the Python stages print:
 *
 *   [dit] step 3850/6000 loss 0.4424 smoothed 0.4602 elapsed 503s eta 1272s
 */
import { counter, gauge, registry } from '@longshot/telemetry';

export const TRAINER_STAGES = ['captions', 'text', 'vae', 'dit', 'export', 'assemble'] as const;
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

const PROGRESS = /^\[(\w+)\] step (\d+)\/(\d+)(.*)$/;

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

/** The registry's current exposition text (what /metrics serves). */
export const metricsText = (): Promise<string> => registry.metrics();
