import * as path from 'node:path';
import { cpuBackend } from '@longshot/engine';
import { latentBlock, Stitcher } from '@longshot/media';
import { modelBlockDecoder, resolveModel, SafetensorsFile, vaeVideoFrames, vaeVideoSize, writeSafetensors } from '@longshot/model';
import { SPEC_DEFAULTS } from '@longshot/planner';
import { intFlag, parseCommand, UsageError, type CommandSpec } from './args';
import { checkReadable, checkWritable, flagged } from './errors';
import { Progress } from './progress';

export const DECODE = {
  name: 'decode',
  summary: 'decode latents (render --save-latents) into an MP4 with the VAE decoder',
  usage: 'longshot decode --model NAME|DIR --latents FILE --out FILE.mp4 [--frames FILE] [--fps N] [--block B] [--json]',
  description:
    "Reads the safetensors tensor 'latents' [16, F, H/8, W/8], decodes it block by block with the\n" +
    "model's VAE decoder (the code the workers run, its feature cache carried from block to block)\n" +
    "on this machine's CPU engine, and encodes the MP4. Prints frameSha256, defined as in a render\n" +
    'result (SHA-256 over the blocks\' frame digests), so with the block size of the render it\n' +
    "equals the render's.",
  flags: {
    model: { value: 'NAME|DIR', help: 'pipeline directory (its vae/), or a seeded model name (tiny, small, ...: its seeded VAE) (required)' },
    latents: { value: 'FILE', help: "safetensors file with tensor 'latents' [16, F, H/8, W/8] (required)" },
    out: { value: 'FILE', help: 'MP4 to write (required)' },
    frames: { value: 'FILE', help: "also write the decoded frames as safetensors tensor 'frames', F32 [frames, H, W, 3] in [-1, 1] (before quantisation to 8 bits)" },
    fps: { value: 'N', help: "frames per second of the MP4, 1..120 (default: the file's 'fps' metadata, else 16)" },
    block: { value: 'B', help: "latent frames per decode call; F must be a multiple (default: the file's 'block' metadata, else 4)" },
    json: { help: 'print one JSON summary line' },
  },
  run: (argv: string[]) => decodeCommand(argv),
} satisfies CommandSpec;

export interface DecodeResult {
  output: string;
  /** Written with --frames, else null. */
  framesFile: string | null;
  frames: number;
  width: number;
  height: number;
  fps: number;
  latentFrames: number;
  block: number;
  blocks: number;
  latentSha256: string;
  frameSha256: string;
  seconds: number;
}

/** A positive integer from the flag, else the file's metadata, else the default. */
function countFlag(flag: 'fps' | 'block', raw: string | undefined, metadata: Readonly<Record<string, string>>, fallback: number, max: number): number {
  const fromFile = raw === undefined && metadata[flag] !== undefined;
  const v = intFlag(flag, raw ?? metadata[flag]) ?? fallback;
  if (v < 1 || v > max) throw new UsageError(`--${flag}: must be in 1..${max}, got ${v}${fromFile ? " (the latents file's metadata)" : ''}`);
  return v;
}

export async function decodeCommand(argv: string[]): Promise<void> {
  const started = performance.now();
  const f = parseCommand(DECODE, argv).values;
  if (f.model === undefined) throw new UsageError('--model: required (a pipeline directory or a model name)');
  if (f.latents === undefined) throw new UsageError("--latents: required (a safetensors file with tensor 'latents')");
  if (f.out === undefined) throw new UsageError('--out: required (the MP4 to write)');
  const latentsFile = path.resolve(f.latents);
  const out = path.resolve(f.out);
  const framesFile = f.frames === undefined ? null : path.resolve(f.frames);
  checkReadable('latents', latentsFile);
  checkWritable('out', out);
  if (framesFile) checkWritable('frames', framesFile);
  const model = flagged('model', () => resolveModel(f.model!));
  const { vae } = model;

  const st = flagged('latents', () => SafetensorsFile.open(latentsFile, f.latents));
  let latents: Float32Array;
  let shape: readonly number[];
  try {
    if (!st.has('latents')) throw new UsageError(`--latents: ${f.latents} has no tensor 'latents' (it has ${st.tensorNames().slice(0, 8).join(', ') || 'none'})`);
    shape = st.info('latents').shape;
    if (shape.length !== 4 || shape[0] !== vae.zDim || shape.some((d) => d < 1)) {
      throw new UsageError(`--latents: tensor 'latents' of ${f.latents} is [${shape.join(', ')}]; the VAE ${vae.name} decodes [${vae.zDim}, F, H/8, W/8]`);
    }
    latents = flagged('latents', () => st.read('latents'));
  } finally {
    st.close();
  }
  const [channels, latentFrames, latentHeight, latentWidth] = shape;
  const block = countFlag('block', f.block, st.metadata, SPEC_DEFAULTS.block, latentFrames);
  if (latentFrames % block !== 0) throw new UsageError(`--block: ${latentFrames} latent frames are not a whole number of blocks of ${block}`);
  const fps = countFlag('fps', f.fps, st.metadata, SPEC_DEFAULTS.fps, 120);
  const blocks = latentFrames / block;
  const frames = vaeVideoFrames(vae, latentFrames);
  const { width, height } = vaeVideoSize(vae, latentHeight, latentWidth);
  const frameValues = width * height * 3;

  const progress = new Progress(process.stderr);
  progress.phase('loading the VAE');
  const geometry = { frames, fps, width, height, block, blocks, latentChannels: channels };
  const stitcher = new Stitcher(out, geometry, modelBlockDecoder(model, { block, latentHeight, latentWidth }, cpuBackend()));
  const rgbFrames = framesFile ? new Float32Array(frames * frameValues) : null;
  let fingerprint;
  try {
    progress.start(`decoding ${path.basename(f.latents)}`, blocks, 'blocks');
    let at = 0;
    for (let i = 0; i < blocks; i++) {
      const b = await stitcher.add(i, latentBlock(latents, channels, block, latentHeight * latentWidth, i));
      rgbFrames?.set(b.values, at);
      at += b.values.length;
      progress.tick();
    }
    fingerprint = await stitcher.finish();
  } catch (e) {
    await stitcher.abort();
    throw e;
  } finally {
    progress.stop();
  }
  if (framesFile && rgbFrames) {
    flagged('frames', () =>
      writeSafetensors(framesFile, [{ name: 'frames', shape: [frames, height, width, 3], data: rgbFrames }], { 'longshot.vae': vae.name, 'longshot.frame_sha256': fingerprint.frameSha256, block: String(block) }),
    );
  }
  const r: DecodeResult = { output: out, framesFile, frames, width, height, fps, latentFrames, block, blocks, latentSha256: fingerprint.latentSha256, frameSha256: fingerprint.frameSha256, seconds: (performance.now() - started) / 1000 };
  if (f.json) process.stdout.write(`${JSON.stringify(r)}\n`);
  else {
    const also = framesFile ? ` and ${framesFile} ('frames' [${frames}, ${height}, ${width}, 3])` : '';
    process.stdout.write(`wrote ${out} (${frames} frames, ${width}x${height} @ ${fps} fps, ${blocks} blocks of ${block} latent frames)${also} in ${r.seconds.toFixed(1)} s\nframeSha256 ${r.frameSha256}\nlatentSha256 ${r.latentSha256}\n`);
  }
}
