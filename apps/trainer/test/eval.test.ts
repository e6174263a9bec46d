import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { longshot, runNode } from '../../../test/e2e/cli';
import { UsageError } from '@longshot/cli/src/args';
import { jobId, renderLocal, textFor } from '@longshot/cli/src/render';
import { frameDigest, resolveModel, videoFrameSha256 } from '@longshot/model';
import { normalizeSpec } from '@longshot/planner';
import { evalCommand, type EvalReport } from '../src/eval';
import type { ModelFigures } from '../src/evaluation';

const ROOT = path.resolve(__dirname, '../../..');
const EVAL = path.join(ROOT, 'apps/trainer/src/eval.ts');
// Any free port for /metrics: the default one may be taken by a run outside the tests.
const evalRun = (args: readonly string[]) => runNode(['--import', 'tsx', EVAL, '--metrics-port', '0', ...args], ROOT);

let dir: string;
let modelDir: string;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-eval-'));
  modelDir = path.join(dir, 'tiny-pipeline');
  const written = await longshot(['model', 'write', '--model', 'tiny', '--out', modelDir], dir);
  expect(written.code, written.stderr).toBe(0);
});

afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Every figure in its range, every count adding up. */
function checkFigures(f: ModelFigures, videos: number, seamVideos: number): void {
  expect(f.videos).toBe(videos);
  expect(f.perVideo).toHaveLength(videos);
  for (const k of ['colour', 'shape', 'motion', 'all'] as const) {
    expect(f.correct[k]).toBe(k === 'all' ? f.perVideo.filter((v) => v.correct.colour && v.correct.shape && v.correct.motion).length : f.perVideo.filter((v) => v.correct[k]).length);
    expect(f.accuracy[k]).toBeCloseTo(f.correct[k] / videos, 12);
  }
  expect(f.objectFound).toBeGreaterThanOrEqual(0);
  expect(f.objectFound).toBeLessThanOrEqual(videos);
  for (const v of [f.fidelity.objectColour, f.fidelity.backgroundColour]) {
    if (v === null) continue;
    expect(v).toBeGreaterThanOrEqual(0);
    expect(v).toBeLessThanOrEqual(255 * Math.sqrt(3));
  }
  if (f.fidelity.radius !== null) expect(f.fidelity.radius).toBeGreaterThanOrEqual(0);
  expect(f.seamVideos).toHaveLength(seamVideos);
  for (const mode of ['dualParal', 'naive', 'onePass'] as const) {
    const s = f.seams[mode]!;
    expect(s.videos).toBe(seamVideos / 3);
    expect(s.score!).toBeGreaterThan(0);
    expect(s.score!).toBeCloseTo(s.atSeams / s.insideBlocks, 9);
  }
  expect(f.seamVideos.map((v) => [v.mode, v.block, v.context])).toEqual([
    ['dualParal', 4, 2],
    ['naive', 4, 0],
    ['onePass', 8, 0],
  ]);
  expect(f.seconds).toBeGreaterThan(0);
}

describe('npm run eval', () => {
  it('measures the very frames frameSha256 digests: renderLocal hands them over as it decodes', async () => {
    const model = resolveModel('tiny');
    const spec = normalizeSpec({ prompt: 'a big red circle moving left on a black background', frames: 29, width: 64, height: 64, steps: 4, stages: 1 });
    const digests: string[] = [];
    const onFrames = (_block: number, frames: Float32Array) => digests.push(frameDigest(frames));
    const r = await renderLocal({ spec, model, text: await textFor(spec, model), id: jobId(spec), out: path.join(dir, 'frames.mp4'), onFrames });
    expect(digests).toHaveLength(2);
    expect(videoFrameSha256(digests)).toBe(r.frameSha256);
  });

  it('renders held-out captions with a pipeline directory and the floor, and reports figures in range', async () => {
    const out = path.join(dir, 'out');
    const r = await evalRun(['--model', modelDir, '--floor', 'tiny', '--prompts', '2', '--seeds', '1', '--seam-prompts', '1', '--seam-frames', '29', '--out', out, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as EvalReport;
    expect(Object.keys(report).sort()).toEqual(['figures', 'floor', 'model', 'seconds', 'settings']);
    expect([report.model, report.floor]).toEqual([modelDir, 'tiny']);
    expect(report.settings).toEqual({ width: 64, height: 64, frames: 29, fps: 16, prompts: 2, steps: 20, guidance: 5, block: 4, context: 2, seeds: 1, seamPrompts: 1, seamFrames: 29 });
    checkFigures(report.figures.model, 2, 3);
    checkFigures(report.figures.floor, 2, 3);
    expect(report.figures.model.perVideo.map((v) => v.prompt)).toEqual(['a small red circle moving left on a black background', 'a small red square growing on a gray background']);
    // The two models differ (umT5 from the directory, the stand-in encoder for the name): so do their clips.
    expect(report.figures.model.seamVideos[0].seam.atSeams).not.toBe(report.figures.floor.seamVideos[0].seam.atSeams);
    // A progress line per video on stderr, the MP4s in a folder per model.
    expect(r.stderr.match(/^eval: (model|floor) \d\/2 /gm)).toHaveLength(4);
    expect(r.stderr.match(/^eval: (model|floor) seams \d\/3 /gm)).toHaveLength(6);
    expect(fs.readdirSync(path.join(out, 'floor')).sort()).toEqual([
      'seam-dualParal-small-red-circle-moving-left-black.mp4',
      'seam-naive-small-red-circle-moving-left-black.mp4',
      'seam-onePass-small-red-circle-moving-left-black.mp4',
      'small-red-circle-moving-left-black-seed0.mp4',
      'small-red-square-growing-gray-seed0.mp4',
    ]);
    expect(report.seconds).toBeGreaterThan(report.figures.model.seconds);
    // Metrics served while it ran, their last state left next to the MP4s.
    expect(r.stderr).toMatch(/^eval: metrics on http:\/\/127\.0\.0\.1:\d+\/metrics$/m);
    const prom = fs.readFileSync(path.join(out, 'metrics.prom'), 'utf8');
    const value = (series: string) => Number(prom.split('\n').find((l) => l.startsWith(`${series} `))?.split(' ')[1]);
    for (const role of ['model', 'floor'] as const) {
      expect(value(`longshot_eval_videos_total{role="${role}",kind="clip"}`)).toBe(2);
      expect(value(`longshot_eval_videos_total{role="${role}",kind="seam"}`)).toBe(3);
      expect(value(`longshot_eval_videos{role="${role}",kind="clip"}`)).toBe(2);
      expect(value(`longshot_eval_accuracy{role="${role}",figure="colour"}`)).toBe(report.figures[role].accuracy.colour);
      expect(value(`longshot_eval_accuracy{role="${role}",figure="motion"}`)).toBe(report.figures[role].accuracy.motion);
      expect(value(`longshot_eval_render_seconds_total{role="${role}"}`)).toBeGreaterThan(0);
    }
  });

  it('warns about words outside the grammar and prints a table without --json', async () => {
    const r = await evalRun(['--model', 'tiny', '--prompt', 'a shiny big blue triangle orbiting on a gray background', '--seeds', '1', '--seam-prompts', '0', '--out', path.join(dir, 'one')]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain("eval: warning: 'a shiny big blue triangle orbiting on a gray background' has words outside the grammar, ignored: shiny");
    expect(r.stdout).toMatch(/^1 held-out captions x 1 seeds, 64x64, 29 frames/);
    expect(r.stdout).toMatch(/^colour accuracy +\d+\.\d% +\d+\.\d%$/m);
    expect(r.stdout).toMatch(/^seams DualParal \(B4 C2\) +- +-$/m);
  });

  it('refuses bad flags with a message naming the flag, before rendering anything', async () => {
    const cases: [string[], RegExp][] = [
      [['--prompts', '0'], /^--prompts: expected 1 to 360, got 0$/],
      [['--seeds', 'two'], /^--seeds: expected an integer, got 'two'$/],
      [['--steps', '0'], /^--steps: must be in 1\.\.\d+, got 0$/],
      [['--guidance', 'high'], /^--guidance: expected a number, got 'high'$/],
      [['--guidance', '101'], /^--guidance: must be in 0\.\.100, got 101$/],
      [['--seam-frames', '30'], /^--seam-frames: must be 4n\+1/],
      [['--prompts', '2', '--seam-prompts', '3'], /^--seam-prompts: expected 0 to 2, got 3$/],
      [['--seam-frames', '13'], /^--seam-frames: 13 frames are one block; at least 29 have a seam$/],
      [['--prompt', 'a red circle moving left on a black background', '--prompts', '3'], /^--prompts: not with --prompt/],
      [['--model', 'no-such-model'], /^--model: /],
      [['--metrics-port', '70000'], /^--metrics-port: expected a port in 0\.\.65535, got 70000$/],
      [['--prompt', 'a red blob'], /^--prompt: 'a red blob' names no shape, no motion, no background of the grammar$/],
    ];
    for (const [args, message] of cases) {
      const model = args.includes('--model') ? [] : ['--model', 'tiny'];
      const refused = evalCommand([...args, ...model, '--out', path.join(dir, 'refused')]);
      await expect(refused, args.join(' ')).rejects.toThrow(UsageError);
      await expect(refused, args.join(' ')).rejects.toThrow(message);
    }
    expect(fs.existsSync(path.join(dir, 'refused'))).toBe(false);
  });
});
