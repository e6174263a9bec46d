/**
 * The VAE of a pipeline directory: vae/config.json parsed into the decoder config, the decoder's
 * tensors read from vae/diffusion_pytorch_model.safetensors (F32, BF16, F16) with diffusers'
 * names, and the refusals, each naming the file and the reason.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getConfig } from '../src/config';
import { parseVaeConfig, vaeConfigJson } from '../src/pipeline-config';
import { loadPipelineVae, openPipelineDir, writeSeededPipeline } from '../src/pipeline-dir';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '@longshot/dtype';
import { SafetensorsFile, writeSafetensors, type SafetensorsDtype, type TensorInput } from '../src/safetensors';
import { resolveModel } from '../src/source';
import { seededVaeWeights } from '../src/vae';
import { SEEDED_VAE, WAN21_VAE, vaeDecoderTensorSpecs } from '../src/vae-config';
import { dirVariants, editJson, openRefusal } from './dir-variants';

const tiny = getConfig('tiny');
const VAE_FILE = 'vae/diffusion_pytorch_model.safetensors';
let root: string;
let copyWith: ReturnType<typeof dirVariants>;
const dirs: Partial<Record<SafetensorsDtype, string>> = {};

beforeAll(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-vae-'));
  copyWith = dirVariants(root);
  for (const dtype of ['F32', 'BF16', 'F16'] as const) {
    dirs[dtype] = path.join(root, dtype);
    writeSeededPipeline(dirs[dtype]!, { config: tiny, seed: 5, shards: 1, dtype });
  }
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const variant = (edit: (dir: string) => void): string => copyWith(dirs.F32!, edit);

/** Rewrites the VAE file with `change` applied to its tensor list. */
function editTensors(dir: string, change: (ts: TensorInput[]) => TensorInput[]): void {
  const file = path.join(dir, VAE_FILE);
  const st = SafetensorsFile.open(file);
  const tensors: TensorInput[] = st.tensorNames().map((n) => ({ name: n, shape: st.info(n).shape, data: st.read(n) }));
  st.close();
  writeSafetensors(file, change(tensors));
}

const refusal = (dir: string): string => openRefusal(dir, root);

describe('vae/config.json', () => {
  it("reads Wan2.1-T2V's VAE config (diffusers' keys) as Wan2.1's VAE, and the seeded ones by name", () => {
    const json = {
      _class_name: 'AutoencoderKLWan', _diffusers_version: '0.33.0.dev0', attn_scales: [], base_dim: 96, dim_mult: [1, 2, 4, 4], dropout: 0.0,
      latents_mean: [...WAN21_VAE.latentsMean], latents_std: [...WAN21_VAE.latentsStd], num_res_blocks: 2, temperal_downsample: [false, true, true], z_dim: 16,
    };
    expect(parseVaeConfig(json)).toEqual(WAN21_VAE);
    // Absent keys take diffusers' defaults, which are Wan2.1's.
    expect(parseVaeConfig({ _class_name: 'AutoencoderKLWan', z_dim: 16 })).toEqual(WAN21_VAE);
    expect(parseVaeConfig(vaeConfigJson(SEEDED_VAE.tiny))).toEqual(SEEDED_VAE.tiny);
    expect(parseVaeConfig({ ...json, decoder_base_dim: 8 }).baseDim).toBe(8);
  });

  it('refuses what Wan2.1 is not, naming the key', () => {
    const base = vaeConfigJson(WAN21_VAE);
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ is_residual: true }, /vae\/config\.json: 'is_residual' = true is not supported/],
      [{ patch_size: 2 }, /'patch_size' = 2 is not supported/],
      [{ z_dim: 48 }, /'z_dim' = 48 is not supported/],
      [{ out_channels: 12 }, /'out_channels' = 12 is not supported/],
      [{ temperal_downsample: [false, true] }, /temporalDownsample needs 3 entries/],
      [{ latents_std: [1, 2] }, /latentsMean and latentsStd need 16 values each/],
      [{ scale_factor_spatial: 16 }, /'scale_factor_spatial' = 16 is not supported/],
      [{ new_knob: 1 }, /unknown key 'new_knob'/],
    ];
    for (const [edit, reason] of cases) expect(() => parseVaeConfig({ ...base, ...edit }), JSON.stringify(edit)).toThrow(reason);
  });
});

describe('vae/ weights', () => {
  it.each(['F32', 'BF16', 'F16'] as const)('loads the decoder from a %s file with diffusers names', (dtype) => {
    const p = openPipelineDir(dirs[dtype]!);
    expect(p.vae).toEqual(SEEDED_VAE.tiny);
    const got = loadPipelineVae(p);
    const want = seededVaeWeights(SEEDED_VAE.tiny, 5);
    expect([...got.keys()]).toEqual([...want.keys()]);
    const round = dtype === 'F32' ? (x: number) => x : dtype === 'BF16' ? (x: number) => bf16ToF32(f32ToBf16(x)) : (x: number) => f16ToF32(f32ToF16(x));
    for (const [name, w] of want) expect(Array.from(got.get(name)!), name).toEqual(Array.from(w, round));
    expect(got.get('decoder.conv_in.weight')!.length).toBe(16 * 16 * 27);
  });

  it('accepts the encoder tensors a full checkpoint carries, and reads only the decoder', () => {
    const dir = variant((d) => editTensors(d, (ts) => [...ts, { name: 'encoder.conv_in.weight', shape: [4, 3, 3, 3, 3], data: new Float32Array(324) }, { name: 'quant_conv.bias', shape: [32], data: new Float32Array(32) }]));
    const loaded = loadPipelineVae(openPipelineDir(dir));
    expect(loaded.has('encoder.conv_in.weight')).toBe(false);
    expect(loaded.size).toBe(vaeDecoderTensorSpecs(SEEDED_VAE.tiny).length);
  });

  it('refuses missing weights, a missing or unknown tensor, a wrong shape and a config the weights do not fit', () => {
    expect(refusal(variant((d) => fs.rmSync(path.join(d, VAE_FILE))))).toMatch(/^vae\/: no weights \(diffusion_pytorch_model\.safetensors/);
    expect(refusal(variant((d) => editTensors(d, (ts) => ts.filter((t) => t.name !== 'decoder.mid_block.attentions.0.proj.bias'))))).toBe(
      "vae/diffusion_pytorch_model.safetensors: missing tensor 'decoder.mid_block.attentions.0.proj.bias'",
    );
    expect(refusal(variant((d) => editTensors(d, (ts) => [...ts, { name: 'decoder.extra.weight', shape: [2], data: new Float32Array(2) }])))).toMatch(
      /^vae\/diffusion_pytorch_model\.safetensors: unknown tensor 'decoder\.extra\.weight'/,
    );
    expect(
      refusal(variant((d) => editTensors(d, (ts) => ts.map((t) => (t.name === 'decoder.conv_out.weight' ? { ...t, shape: [3, 4, 1, 3, 9] } : t))))),
    ).toBe("vae/diffusion_pytorch_model.safetensors: tensor 'decoder.conv_out.weight': expected [3, 4, 3, 3, 3], file has [3, 4, 1, 3, 9]");
    expect(refusal(variant((d) => editJson(d, 'vae/config.json', (j) => void (j.base_dim = 8))))).toMatch(/^vae\/diffusion_pytorch_model\.safetensors: tensor '.*': expected \[/);
  });
});

describe('the VAE of a model source', () => {
  it("is a pipeline directory's own, and the seeded one of the config for a seeded name", () => {
    const fromDir = resolveModel(dirs.F32!);
    expect(fromDir.vae).toEqual(SEEDED_VAE.tiny);
    const weights = fromDir.loadVae();
    const want = seededVaeWeights(SEEDED_VAE.tiny, 5);
    expect(Array.from(weights.get('decoder.conv_out.weight')!)).toEqual(Array.from(want.get('decoder.conv_out.weight')!));
    const seeded = resolveModel('tiny');
    expect(seeded.vae).toEqual(SEEDED_VAE.tiny);
    expect(Array.from(seeded.loadVae().get('decoder.conv_in.weight')!)).toEqual(Array.from(seededVaeWeights(SEEDED_VAE.tiny, 0).get('decoder.conv_in.weight')!));
    expect(resolveModel('small').vae).toEqual(SEEDED_VAE.small);
    expect(resolveModel('wan2.1-t2v-1.3b').vae).toEqual(WAN21_VAE);
  });
});
