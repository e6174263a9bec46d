/**
 * The quality evaluation of a shapes model (docs/quality.md): held-out captions rendered through
 * Longshot's single-process path (`renderLocal`, one stage: the bits of a distributed run), the
 * decoded frames measured (analysis.ts) against what the caption asks for, and the block seams of
 * long videos compared across DualParal, naive chunks and one pass.
 */
import * as os from 'node:os';
import * as path from 'node:path';
import { jobId, renderLocal, textFor } from '@longshot/cli/src/render';
import type { ModelSource, TextEmbeddings } from '@longshot/model';
import { hiddenBytes, latentFramesOf, normalizeSpec, SPEC_DEFAULTS, type JobSpec } from '@longshot/planner';
import { analyseVideo, fidelityOf, seamScore, type Fidelity, type SeamScore, type Video } from './analysis';
import { composeCaption, type CaptionParts, type Grammar } from './grammar';
import { evalMetrics, type EvalRole } from './metrics';

/** How every clip is rendered: the grammar's geometry, DualParal with blocks of 4 and context 2. */
export interface EvalSettings {
  readonly steps: number;
  /** Classifier-free guidance scale of every render. */
  readonly guidance: number;
  readonly block: number;
  readonly context: number;
  readonly seeds: number;
  /** Long videos rendered three ways for the seam figures (the first seam prompts, seed 0). */
  readonly seamPrompts: number;
  readonly seamFrames: number;
  /** Where the MP4s go (one folder per model label). */
  readonly out: string;
}

export const EVAL_DEFAULTS = { steps: 20, guidance: SPEC_DEFAULTS.guidance, block: 4, context: 2, seeds: 2, prompts: 64, seamPrompts: 4, seamFactor: 8 } as const;

export interface VideoFigures {
  readonly prompt: string;
  readonly seed: number;
  /** What the clip shows, in the grammar's words (null: no object). */
  readonly colour: string | null;
  readonly shape: string | null;
  readonly motion: string | null;
  readonly correct: { readonly colour: boolean; readonly shape: boolean; readonly motion: boolean };
  readonly fidelity: Fidelity;
  readonly seconds: number;
}

export type SeamMode = 'dualParal' | 'naive' | 'onePass';

export interface SeamVideo {
  readonly prompt: string;
  readonly mode: SeamMode;
  readonly block: number;
  readonly context: number;
  readonly seam: SeamScore;
  readonly seconds: number;
}

export interface SeamFigure {
  /** Mean of the videos' scores (1: seams invisible); null when no video had a score. */
  readonly score: number | null;
  readonly atSeams: number;
  readonly insideBlocks: number;
  readonly videos: number;
}

export interface ModelFigures {
  readonly model: string;
  readonly videos: number;
  /** Clips with an object in at least half their frames. */
  readonly objectFound: number;
  readonly correct: { readonly colour: number; readonly shape: number; readonly motion: number; readonly all: number };
  /** correct / videos, 0..1. */
  readonly accuracy: { readonly colour: number; readonly shape: number; readonly motion: number; readonly all: number };
  /** Means over the clips that have the figure (0..255 units; radius in pixels). */
  readonly fidelity: { readonly objectColour: number | null; readonly backgroundColour: number; readonly radius: number | null };
  readonly seams: { readonly frames: number; readonly dualParal: SeamFigure | null; readonly naive: SeamFigure | null; readonly onePass: SeamFigure | null; readonly onePassSkipped: string | null };
  readonly seconds: number;
  readonly perVideo: readonly VideoFigures[];
  readonly seamVideos: readonly SeamVideo[];
}

/** One line per rendered video, for the progress on stderr. */
export type EvalProgress = (line: string) => void;

function mean(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

const meanOrNull = (values: readonly (number | null)[]): number | null => {
  const known = values.filter((v): v is number => v !== null);
  return known.length ? mean(known) : null;
};

/** A file name for a caption: "big-red-circle-moving-left-black". */
function slug(parts: CaptionParts): string {
  return [parts.size, parts.colour, parts.shape, parts.motion, parts.background].filter(Boolean).join('-').replace(/ /g, '-');
}

/**
 * Whether rendering all `latentFrames` as one block is expected to fit in this machine's free
 * memory: the attention is fused (no score matrix), so the working set is a few copies of the
 * window's hidden states, guided (x2), plus the feed-forward activations.
 */
export function onePassFits(model: ModelSource, spec: JobSpec, freeBytes = os.freemem()): { fits: boolean; bytes: number } {
  const tokensPerFrame = (spec.height / 16) * (spec.width / 16);
  const window = { tokensPerFrame, prefixFrames: 0, ownFrames: latentFramesOf(spec.frames), successorFrames: 0 };
  const hidden = hiddenBytes(model.config, window);
  const bytes = hidden * (8 + (2 * model.config.ffnDim) / model.config.dim);
  return { fits: bytes < freeBytes / 2, bytes };
}

/** Renders one clip in this process and returns its decoded frames, as the stitcher got them. */
class ClipRenderer {
  private readonly texts = new Map<string, TextEmbeddings>();

  constructor(
    private readonly grammar: Grammar,
    private readonly model: ModelSource,
    private readonly modelName: string,
    private readonly signal?: AbortSignal,
  ) {}

  spec(prompt: string, seed: number, frames: number, block: number, context: number, sampling: { steps: number; guidance: number }): JobSpec {
    const { width, height, fps } = this.grammar;
    const { steps, guidance } = sampling;
    return normalizeSpec({ prompt, seed, frames, width, height, fps, steps, guidance, block, context, stages: 1, model: this.modelName });
  }

  async render(spec: JobSpec, out: string): Promise<{ video: Video; seconds: number }> {
    const started = performance.now();
    let text = this.texts.get(spec.prompt);
    if (!text) {
      text = await textFor(spec, this.model);
      this.texts.set(spec.prompt, text);
    }
    const data = new Float32Array(spec.frames * spec.height * spec.width * 3);
    let filled = 0;
    await renderLocal({
      spec,
      model: this.model,
      text,
      id: jobId(spec),
      out,
      signal: this.signal,
      onFrames: (_block, frames) => {
        data.set(frames, filled);
        filled += frames.length;
      },
    });
    if (filled !== data.length) throw new Error(`the render decoded ${filled / (spec.height * spec.width * 3)} frames, expected ${spec.frames}`);
    return { video: { data, frames: spec.frames, height: spec.height, width: spec.width }, seconds: (performance.now() - started) / 1000 };
  }
}

function seamFigure(videos: readonly SeamVideo[], mode: SeamMode): SeamFigure | null {
  const of = videos.filter((v) => v.mode === mode);
  if (of.length === 0) return null;
  return { score: meanOrNull(of.map((v) => v.seam.score)), atSeams: mean(of.map((v) => v.seam.atSeams)), insideBlocks: mean(of.map((v) => v.seam.insideBlocks)), videos: of.length };
}

/** How many of the clips show the asked colour, shape, motion, and all three, and as shares. */
function tally(videos: readonly VideoFigures[]): Pick<ModelFigures, 'correct' | 'accuracy'> {
  const count = (ok: (v: VideoFigures) => boolean) => videos.filter(ok).length;
  const correct = {
    colour: count((v) => v.correct.colour),
    shape: count((v) => v.correct.shape),
    motion: count((v) => v.correct.motion),
    all: count((v) => v.correct.colour && v.correct.shape && v.correct.motion),
  };
  const n = videos.length;
  return { correct, accuracy: { colour: correct.colour / n, shape: correct.shape / n, motion: correct.motion / n, all: correct.all / n } };
}

/**
 * Renders every prompt x seed and the seam videos with `model` and measures them. `label` names
 * the model in progress lines and its MP4 folder ('model', 'floor').
 */
export async function evaluateModel(
  g: Grammar,
  model: ModelSource,
  modelName: string,
  label: EvalRole,
  prompts: readonly CaptionParts[],
  s: EvalSettings,
  progress: EvalProgress,
  signal?: AbortSignal,
): Promise<ModelFigures> {
  const started = performance.now();
  const renderer = new ClipRenderer(g, model, modelName, signal);
  const dir = path.join(s.out, label);
  const perVideo: VideoFigures[] = [];
  const total = prompts.length * s.seeds;
  const seamLatents = latentFramesOf(s.seamFrames);
  const modes: { mode: SeamMode; block: number; context: number }[] = [
    { mode: 'dualParal', block: s.block, context: s.context },
    { mode: 'naive', block: s.block, context: 0 },
    { mode: 'onePass', block: seamLatents, context: 0 },
  ];
  const seamParts = prompts.slice(0, s.seamPrompts);
  const onePass = onePassFits(model, renderer.spec(composeCaption(g, prompts[0]), 0, s.seamFrames, seamLatents, 0, s));
  const onePassSkipped = onePass.fits ? null : `one block of ${seamLatents} latent frames needs about ${(onePass.bytes / 2 ** 30).toFixed(1)} GiB, over half the free memory`;
  const seamTotal = seamParts.length * (onePassSkipped ? 2 : 3);
  evalMetrics.planned(label, total, seamTotal);
  for (const parts of prompts) {
    const prompt = composeCaption(g, parts);
    for (let seed = 0; seed < s.seeds; seed++) {
      const spec = renderer.spec(prompt, seed, g.frames, s.block, s.context, s);
      const { video, seconds } = await renderer.render(spec, path.join(dir, `${slug(parts)}-seed${seed}.mp4`));
      const a = analyseVideo(g, video);
      const correct = { colour: a.colour === parts.colour, shape: a.shape === parts.shape, motion: a.motion === parts.motion };
      perVideo.push({ prompt, seed, colour: a.colour, shape: a.shape, motion: a.motion, correct, fidelity: fidelityOf(g, a, parts), seconds });
      const mark = (ok: boolean, got: string | null) => `${ok ? '+' : '-'}${got ?? 'none'}`;
      evalMetrics.clip(label, seconds, tally(perVideo).accuracy);
      progress(`${label} ${perVideo.length}/${total} ${seconds.toFixed(1)}s '${prompt}' seed ${seed}: colour ${mark(correct.colour, a.colour)} shape ${mark(correct.shape, a.shape)} motion ${mark(correct.motion, a.motion)}`);
    }
  }

  const seamVideos: SeamVideo[] = [];
  for (const parts of seamParts) {
    const prompt = composeCaption(g, parts);
    for (const { mode, block, context } of modes) {
      if (mode === 'onePass' && onePassSkipped) continue;
      const spec = renderer.spec(prompt, 0, s.seamFrames, block, context, s);
      const { video, seconds } = await renderer.render(spec, path.join(dir, `seam-${mode}-${slug(parts)}.mp4`));
      // Every mode is scored at the same frames: the boundaries of the DualParal blocks.
      const seam = seamScore(video, s.block);
      seamVideos.push({ prompt, mode, block, context, seam, seconds });
      evalMetrics.seam(label, mode, seconds, seamFigure(seamVideos, mode)?.score ?? null);
      progress(`${label} seams ${seamVideos.length}/${seamTotal} ${seconds.toFixed(1)}s '${prompt}' ${mode} (block ${block}, context ${context}): ${seam.score === null ? 'no change inside blocks' : seam.score.toFixed(3)}`);
    }
  }

  const { correct, accuracy } = tally(perVideo);
  const n = perVideo.length;
  return {
    model: modelName,
    videos: n,
    objectFound: perVideo.filter((v) => v.fidelity.framesWithObject >= v.fidelity.frames / 2).length,
    correct,
    accuracy,
    fidelity: {
      objectColour: meanOrNull(perVideo.map((v) => v.fidelity.objectColour)),
      backgroundColour: mean(perVideo.map((v) => v.fidelity.backgroundColour)),
      radius: meanOrNull(perVideo.map((v) => v.fidelity.radius)),
    },
    seams: { frames: s.seamFrames, dualParal: seamFigure(seamVideos, 'dualParal'), naive: seamFigure(seamVideos, 'naive'), onePass: seamFigure(seamVideos, 'onePass'), onePassSkipped },
    seconds: (performance.now() - started) / 1000,
    perVideo,
    seamVideos,
  };
}
