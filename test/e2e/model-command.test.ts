import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { longshot as runCli } from './cli';

let dir: string;

const longshot = (args: string[]) => runCli(args, dir);

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-model-cmd-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('longshot model', () => {
  it('inspect prints components, configs, parameter counts, dtypes and the bytes of each stage', async () => {
    const w = await longshot(['model', 'write', '--model', 'tiny', '--shards', '2', '--dtype', 'F16', '--out', 'tiny-pipe']);
    expect(w.code, w.stderr).toBe(0);
    const r = await longshot(['model', 'inspect', 'tiny-pipe', '--stages', '2']);
    expect(r.code, r.stderr).toBe(0);
    const out = r.stdout;
    expect(out).toContain('pipeline  WanPipeline');
    for (const c of ['transformer   diffusers.WanTransformer3DModel', 'text_encoder  transformers.UMT5EncoderModel', 'tokenizer     transformers.T5TokenizerFast', 'vae           diffusers.AutoencoderKLWan', 'scheduler     diffusers.UniPCMultistepScheduler']) {
      expect(out).toContain(c);
    }
    expect(out).toContain('transformer  tiny: dim 64, ffn 160, layers 6, heads 2 x 32, text_dim 64');
    // 177 tensors in F16 over the two shards; the text encoder is the seeded umT5 of width 64.
    expect(out).toMatch(/parameters 0\.39 M in 177 tensors \(F16 x177\), 0\.8 MB in 2 file\(s\): transformer\/diffusion_pytorch_model-00001-of-00002\.safetensors, transformer\/diffusion_pytorch_model-00002-of-00002\.safetensors/);
    expect(out).toContain('text_encoder  umt5-tiny: d_model 64, layers 2, heads 4 x 16, d_ff 128, vocab 512');
    expect(out).toContain('runs as: umT5 text encoder: umt5-tiny');
    expect(out).toContain('scheduler  UniPCMultistepScheduler: flow_shift 3, solver_order 2');
    expect(out).toContain('vae  AutoencoderKLWan vae-tiny: base_dim 4, z_dim 16, dim_mult [1, 2, 4, 4], num_res_blocks 2');
    expect(out).toContain('parameters 0.14 M in 108 tensors (F16 x108), 0.3 MB in 1 file(s): vae/diffusion_pytorch_model.safetensors');
    expect(out).toMatch(/stage 0 {2}layers \[0, 3\) head +0\.\d+ M params +0\.\d MB read +0\.\d MB held/);
    expect(out).toMatch(/stage 1 {2}layers \[3, 6\) tail /);
  });

  it('inspects the layout of the real 1.3B written without values, stage by stage', async () => {
    const w = await longshot(['model', 'write', '--model', 'wan2.1-t2v-1.3b', '--dtype', 'BF16', '--shards', '2', '--layout-only', '--out', 'wan13']);
    expect(w.code, w.stderr).toBe(0);
    const r = await longshot(['model', 'inspect', 'wan13']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('parameters 1.419 B in 825 tensors (BF16 x825), 2.84 GB');
    expect(r.stdout).toContain('text_encoder  umt5-xxl: d_model 4096, layers 24, heads 64 x 64, d_ff 10240, vocab 256384');
    // Wan2.1's VAE decoder side (the encoder is not written: decoding never reads it).
    expect(r.stdout).toContain('vae  AutoencoderKLWan wan2.1-vae: base_dim 96, z_dim 16, dim_mult [1, 2, 4, 4], num_res_blocks 2, temperal_downsample [false, true, true]');
    expect(r.stdout).toContain('parameters 73.30 M in 108 tensors (BF16 x108), 146.6 MB in 1 file(s): vae/diffusion_pytorch_model.safetensors');
    expect(r.stdout).toMatch(/stage 0 {2}layers \[0, 30\) head\+tail +1\.419 B params +2\.84 GB read +5\.68 GB held/);
    for (const k of [1, 2, 4, 8]) expect(r.stdout).toContain(`stages K=${k} `);
  });

  it('refuses an unsupported directory naming the file and field, not the server path', async () => {
    await longshot(['model', 'write', '--model', 'tiny', '--out', 'i2v']);
    const cfg = path.join(dir, 'i2v/transformer/config.json');
    fs.writeFileSync(cfg, JSON.stringify({ ...JSON.parse(fs.readFileSync(cfg, 'utf8')), in_channels: 36 }));
    const r = await longshot(['model', 'inspect', path.join(dir, 'i2v')]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("transformer/config.json: 'in_channels' = 36 is not supported");
    const render = await longshot(['render', '--in-process', '--prompt', 'x', '--model', 'i2v']);
    expect(render.code).toBe(2);
    expect(render.stderr).toContain("--model: transformer/config.json: 'in_channels' = 36 is not supported");
    expect(render.stderr).not.toContain(dir);
  });
});
