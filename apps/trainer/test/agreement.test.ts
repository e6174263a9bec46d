/**
 * The trainer's own PyTorch forward (apps/trainer/python) of the shipped pipeline's weights and
 * Longshot's engine agree: the DiT's velocity on a whole clip and the VAE's decoded video, within
 * 1e-4 of the largest value (docs/trainer.md). Both read the same F16 files; the engine decodes
 * block by block with its feature cache, PyTorch in one pass over the clip.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cpuBackend } from '@longshot/engine';
import { resolveModel, SafetensorsFile, Stage, VaeDecoder, writeSafetensors, type ModelSource } from '@longshot/model';
import { Rng } from '@longshot/random';
import { relError } from '../../../test/reference/error';
import { SHIPPED_PIPELINE_DIR } from '../src/config';

const PYTHON_DIR = path.resolve(__dirname, '../python');
const F = 5; // latent frames: 17 video frames
const H = 8; // latent grid of a 64x64 video
const W = 8;

let dir: string;
let model: ModelSource;
let torchOut: SafetensorsFile;
let context: Float32Array;
const rng = Rng.from('trainer agreement');
const latents = rng.fillNormal(new Float32Array(16 * F * H * W), 1);
const vaeLatents = rng.fillNormal(new Float32Array(16 * F * H * W), 1);
const timestep = 640;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-agreement-'));
  model = resolveModel('longshot-shapes');
  context = rng.fillNormal(new Float32Array(model.config.textLen * model.config.textDim), 0.3);
  const inputs = path.join(dir, 'inputs.safetensors');
  writeSafetensors(inputs, [
    { name: 'latents', shape: [16, F, H, W], dtype: 'F32', data: latents },
    { name: 'timestep', shape: [1], dtype: 'F32', data: Float32Array.of(timestep) },
    { name: 'context', shape: [model.config.textLen, model.config.textDim], dtype: 'F32', data: context },
    { name: 'vae_latents', shape: [16, F, H, W], dtype: 'F32', data: vaeLatents },
  ]);
  const out = path.join(dir, 'torch.safetensors');
  execFileSync('/usr/bin/python3', ['-m', 'longshot_trainer.forward', '--model', SHIPPED_PIPELINE_DIR, '--inputs', inputs, '--out', out], { cwd: PYTHON_DIR, stdio: ['ignore', 'ignore', 'pipe'] });
  torchOut = SafetensorsFile.open(out);
}, 120_000);

afterAll(() => {
  torchOut?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('the trainer and the engine compute the same model', () => {
  it('DiT velocity of a whole clip (engine stage with guidance 1 = the conditional output)', async () => {
    const c = model.config;
    const range = { l0: 0, l1: c.layers, head: true, tail: true };
    const stage = new Stage({ config: c, range, weights: model.loadStage(range), backend: cpuBackend(), text: { cond: context, uncond: context }, guidance: 1 });
    const step = { iteration: 0, block: 0, step: 0, timestep, prefixFrames: 0, ownFrames: F, contextFrames: 0, height: H, width: W };
    const engine = await stage.forward(step, latents);
    const err = relError(engine, torchOut.read('velocity', [16, F, H, W]));
    expect(err).toBeLessThanOrEqual(1e-4);
  });

  it('VAE decode of the same latents (engine block-wise vs PyTorch one pass), [-1, 1] after the clamp', async () => {
    const engine = await new VaeDecoder(model.vae, model.loadVae(), H, W).decode(cpuBackend(), vaeLatents, F);
    const torchVideo = torchOut.read('video'); // [3, T, 64, 64]
    const T = engine.length / (64 * 64 * 3);
    expect(T).toBe(1 + 4 * (F - 1));
    const channelsLast = new Float32Array(engine.length);
    for (let ch = 0; ch < 3; ch++) for (let t = 0; t < T; t++) for (let p = 0; p < 64 * 64; p++) channelsLast[(t * 64 * 64 + p) * 3 + ch] = torchVideo[(ch * T + t) * 64 * 64 + p];
    const err = relError(engine, channelsLast);
    expect(err).toBeLessThanOrEqual(1e-4);
  });
});
