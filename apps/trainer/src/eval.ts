/**
 * `npm run eval -- [--model NAME|DIR] [--floor NAME|DIR] [--prompts N] [--seeds N] [--metrics-port N] [--json]`:
 * renders the held-out captions with the trained model and with the floor (a model that never
 * saw a clip) and prints how often each shows the asked colour, shape and motion, how close it
 * is to the generator, and how visible the block seams of long videos are (docs/quality.md).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { helpText, intFlag, numberFlag, parseCommand, UsageError, wantsHelp, type CommandSpec } from '@longshot/cli/src/args';
import { flagged, reportError } from '@longshot/cli/src/errors';
import { stoppable, Stopped } from '@longshot/cli/src/signals';
import { resolveModel } from '@longshot/model';
import { framesOf, latentFramesOf, normalizeSpec, SpecError, type JobRequest, type JobSpec } from '@longshot/planner';
import { applyTrainerEnvironment, metricsPortFlag, trainerEnvironment } from './config';
import { withMetrics } from './metrics';
import { pipelineDirOf, SEEDED_FLOOR, seededFloor } from './floor';
import { EVAL_DEFAULTS, evaluateModel, type EvalSettings, type ModelFigures } from './evaluation';
import { heldOutPrompts, loadGrammar, requireParts, type CaptionParts, type Grammar } from './grammar';

/** Next to the trainer's 9467, so a training run and an evaluation can be scraped side by side. */
const EVAL_METRICS_PORT = 9468;
const DEFAULT_SEAM_FRAMES = (g: Grammar) => framesOf(EVAL_DEFAULTS.seamFactor * latentFramesOf(g.frames));

export const EVAL = {
  name: 'eval',
  summary: 'quality of a shapes model on the held-out captions, against the floor',
  usage: 'npm run eval -- [--model NAME|DIR] [--floor NAME|DIR] [--prompts N] [--seeds N] [--steps N] [--guidance X] [--metrics-port N] [--json]',
  description:
    'Renders each held-out caption x seed in this process (one stage, blocks of 4, context 2, 20 steps, guidance 5, ' +
    "the grammar's size, frames and fps) with the model and with the floor, measures colour, shape and motion " +
    'from the decoded frames, and scores the block seams of long videos rendered with DualParal, naive chunks ' +
    'and in one pass. Progress on stderr.',
  flags: {
    model: { value: 'NAME|DIR', help: 'the trained model: a built-in name or a pipeline directory', default: 'longshot-shapes' },
    floor: { value: 'NAME|DIR', help: "the model to beat: 'seeded' is the model's own directory with seeded transformer and VAE weights (never trained), or any model", default: "'seeded' for a pipeline, else tiny" },
    prompts: { value: 'N', help: 'held-out captions to render (50 or more for figures worth comparing)', default: String(EVAL_DEFAULTS.prompts) },
    seeds: { value: 'N', help: 'seeds per caption', default: String(EVAL_DEFAULTS.seeds) },
    steps: { value: 'N', help: 'sampling steps of every render', default: String(EVAL_DEFAULTS.steps) },
    guidance: { value: 'X', help: 'classifier-free guidance scale of every render', default: String(EVAL_DEFAULTS.guidance) },
    prompt: { value: 'TEXT', help: 'render this caption instead of the held-out ones (words outside the grammar are ignored, with a warning)' },
    'seam-prompts': { value: 'N', help: 'the first captions (seed 0) rendered as long videos for the seam scores, 0 for none', default: `${EVAL_DEFAULTS.seamPrompts} or all the captions when fewer` },
    'seam-frames': { value: 'N', help: "frames of the seam videos (4n+1, whole blocks, at least two)", default: '8x the clip length: 253' },
    out: { value: 'DIR', help: 'where the MP4s go, a folder per model', default: 'out/eval' },
    'metrics-port': { value: 'N', help: 'Prometheus /metrics on 127.0.0.1 while it runs, 0 = any free port; the last state is also written to <out>/metrics.prom', default: String(EVAL_METRICS_PORT) },
    json: { help: 'print one JSON object on stdout instead of the table' },
  },
} satisfies CommandSpec;

export interface EvalReport {
  readonly model: string;
  readonly floor: string;
  readonly settings: { readonly width: number; readonly height: number; readonly frames: number; readonly fps: number; readonly prompts: number } & Omit<EvalSettings, 'out'>;
  readonly figures: { readonly model: ModelFigures; readonly floor: ModelFigures };
  readonly seconds: number;
}

function countFlag(name: string, raw: string | undefined, fallback: number, min: number, max = Infinity): number {
  const n = intFlag(name, raw) ?? fallback;
  if (n < min || n > max) throw new UsageError(`--${name}: expected ${Number.isFinite(max) ? `${min} to ${max}` : `${min} or more`}, got ${n}`);
  return n;
}

/** Checks flag values as a job's spec would, and names the flag of a field the spec refuses. */
function asJobSpec(flagOf: (field: string) => string, request: Omit<JobRequest, 'prompt'>): JobSpec {
  try {
    return normalizeSpec({ prompt: 'x', ...request });
  } catch (e) {
    if (e instanceof SpecError) throw new UsageError(`--${flagOf(e.field)}: ${e.message.slice(e.field.length + 2)}`);
    throw e;
  }
}

/** Steps and guidance of every render, within a job's limits. */
function samplingFrom(f: { steps?: string; guidance?: string }): { steps: number; guidance: number } {
  const steps = intFlag('steps', f.steps) ?? EVAL_DEFAULTS.steps;
  const guidance = numberFlag('guidance', f.guidance) ?? EVAL_DEFAULTS.guidance;
  const spec = asJobSpec((field) => field, { steps, guidance });
  return { steps: spec.steps, guidance: spec.guidance };
}

function promptsFrom(g: Grammar, f: { prompt?: string; prompts?: string }): CaptionParts[] {
  if (f.prompt === undefined) {
    const all = heldOutPrompts(g);
    return all.slice(0, countFlag('prompts', f.prompts, EVAL_DEFAULTS.prompts, 1, all.length));
  }
  if (f.prompts !== undefined) throw new UsageError('--prompts: not with --prompt (one caption)');
  const { parts, unknownWords } = flagged('prompt', () => requireParts(g, f.prompt!));
  if (unknownWords.length) process.stderr.write(`eval: warning: '${f.prompt}' has words outside the grammar, ignored: ${unknownWords.join(', ')}\n`);
  return [parts];
}

function seamFramesFrom(g: Grammar, raw: string | undefined): number {
  const frames = intFlag('seam-frames', raw) ?? DEFAULT_SEAM_FRAMES(g);
  asJobSpec(() => 'seam-frames', { frames, block: EVAL_DEFAULTS.block, width: g.width, height: g.height });
  if (latentFramesOf(frames) < 2 * EVAL_DEFAULTS.block) throw new UsageError(`--seam-frames: ${frames} frames are one block; at least ${framesOf(2 * EVAL_DEFAULTS.block)} have a seam`);
  return frames;
}

export async function evalCommand(argv: string[]): Promise<{ report: EvalReport; json: boolean }> {
  const f = parseCommand(EVAL, argv).values;
  const g = loadGrammar();
  const prompts = promptsFrom(g, f);
  const modelName = f.model ?? 'longshot-shapes';
  // The seeded floor needs a pipeline directory to copy; a seeded model name is compared with tiny.
  const floorName = f.floor ?? (pipelineDirOf(modelName) !== null ? SEEDED_FLOOR : 'tiny');
  const model = flagged('model', () => resolveModel(modelName));
  const floor = flagged('floor', () => {
    if (floorName !== SEEDED_FLOOR) return resolveModel(floorName);
    const dir = pipelineDirOf(modelName);
    if (dir === null) throw new UsageError(`--floor ${SEEDED_FLOOR}: the model must be a pipeline directory or a shipped pipeline; name a floor model instead`);
    const built = seededFloor(dir);
    process.once('exit', () => fs.rmSync(built.dir, { recursive: true, force: true }));
    return built.source;
  });
  const settings: EvalSettings = {
    ...samplingFrom(f),
    block: EVAL_DEFAULTS.block,
    context: EVAL_DEFAULTS.context,
    seeds: countFlag('seeds', f.seeds, EVAL_DEFAULTS.seeds, 1),
    seamPrompts: countFlag('seam-prompts', f['seam-prompts'], Math.min(EVAL_DEFAULTS.seamPrompts, prompts.length), 0, prompts.length),
    seamFrames: seamFramesFrom(g, f['seam-frames']),
    out: path.resolve(f.out ?? path.join('out', 'eval')),
  };
  const metricsPort = metricsPortFlag(f['metrics-port']) ?? EVAL_METRICS_PORT;
  const started = performance.now();
  const progress = (line: string) => process.stderr.write(`eval: ${line}\n`);
  fs.mkdirSync(settings.out, { recursive: true });
  const figures = await withMetrics(metricsPort, path.join(settings.out, 'metrics.prom'), (url) => progress(`metrics on ${url}`), () =>
    stoppable(async (signal) => ({
      model: await evaluateModel(g, model, modelName, 'model', prompts, settings, progress, signal),
      floor: await evaluateModel(g, floor, floorName, 'floor', prompts, settings, progress, signal),
    })),
  );
  const { out: _out, ...rest } = settings;
  const report = {
    model: modelName,
    floor: floorName,
    settings: { width: g.width, height: g.height, frames: g.frames, fps: g.fps, prompts: prompts.length, ...rest },
    figures,
    seconds: (performance.now() - started) / 1000,
  };
  return { report, json: f.json === true };
}

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
const num = (x: number | null | undefined, digits = 1) => (x === null || x === undefined ? '-' : x.toFixed(digits));

/** The report as a table: one row per figure, a column for the model and one for the floor. */
export function reportTable(r: EvalReport): string {
  const { model: m, floor: fl } = r.figures;
  const s = r.settings;
  const rows: [string, (x: ModelFigures) => string][] = [
    ['colour accuracy', (x) => pct(x.accuracy.colour)],
    ['shape accuracy', (x) => pct(x.accuracy.shape)],
    ['motion accuracy', (x) => pct(x.accuracy.motion)],
    ['all three right', (x) => pct(x.accuracy.all)],
    ['object found', (x) => `${x.objectFound}/${x.videos}`],
    ['object colour error (0..255)', (x) => num(x.fidelity.objectColour)],
    ['background colour error (0..255)', (x) => num(x.fidelity.backgroundColour)],
    ['radius error (px)', (x) => num(x.fidelity.radius, 2)],
    [`seams DualParal (B${s.block} C${s.context})`, (x) => num(x.seams.dualParal?.score, 3)],
    [`seams naive chunks (B${s.block} C0)`, (x) => num(x.seams.naive?.score, 3)],
    ['seams one pass', (x) => (x.seams.onePassSkipped ? 'skipped' : num(x.seams.onePass?.score, 3))],
    ['seconds', (x) => num(x.seconds)],
  ];
  const head = ['', `model (${r.model})`, `floor (${r.floor})`];
  const body = rows.map(([name, cell]) => [name, cell(m), cell(fl)]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
  const line = (row: string[]) => row.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('   ');
  const title = `${s.prompts} held-out captions x ${s.seeds} seeds, ${s.width}x${s.height}, ${s.frames} frames, ${s.steps} steps, guidance ${s.guidance}, blocks of ${s.block} with context ${s.context}; seams on ${s.seamFrames}-frame videos (1.000: invisible)`;
  const skipped = m.seams.onePassSkipped ?? fl.seams.onePassSkipped;
  return [title, '', line(head), ...body.map(line), ...(skipped ? ['', `one pass skipped: ${skipped}`] : []), '', `${r.seconds.toFixed(1)} s in all`, ''].join('\n');
}

async function main(argv: string[]): Promise<void> {
  if (wantsHelp(argv)) {
    process.stdout.write(helpText(EVAL));
    return;
  }
  applyTrainerEnvironment(trainerEnvironment(process.env));
  const { report, json } = await evalCommand(argv);
  process.stdout.write(json ? `${JSON.stringify(report)}\n` : reportTable(report));
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    () => process.exit(process.exitCode ?? 0),
    (e: unknown) => {
      if (e instanceof Stopped) process.exit(e.exitCode);
      const { message, exitCode } = reportError(e);
      process.stderr.write(`${message.replace(/^longshot:/, 'eval:')}\n`);
      process.exit(exitCode);
    },
  );
}
