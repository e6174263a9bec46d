import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getConfig, MODEL_CONFIGS } from '../src/config';
import { parseTransformerConfig, parseUmt5Config, transformerConfigJson, umt5ConfigJson } from '../src/pipeline-config';
import { loadPipelineStage, openPipelineDir, stageFootprint, writeSeededPipeline } from '../src/pipeline-dir';
import { SafetensorsFile, writeSafetensors, type TensorInput } from '../src/safetensors';
import { resolveModel } from '../src/source';
import { cpuBackend } from '@longshot/engine';
import { SEEDED_UMT5, UMT5_XXL } from '../src/umt5-config';
import { encodeText, seededUmt5Weights } from '../src/umt5';
import { UMT5_SPECIAL } from '../src/tokenizer';
import { seededStageWeights } from '../src/weights';
import { dirVariants, editJson, openRefusal } from './dir-variants';

const tiny = getConfig('tiny');
let root: string;
let copyWith: ReturnType<typeof dirVariants>;
let single: string;
let sharded: string;

beforeAll(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-pipeline-'));
  copyWith = dirVariants(root);
  single = path.join(root, 'single');
  sharded = path.join(root, 'sharded');
  writeSeededPipeline(single, { config: tiny, seed: 0, shards: 1, dtype: 'F32' });
  writeSeededPipeline(sharded, { config: tiny, seed: 0, shards: 3, dtype: 'F32' });
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

/** A copy of a seeded directory with one edit applied. */
const variant = (from: string, edit: (dir: string) => void): string => copyWith(from, edit);

/** Rewrites a single-file component with extra tensors added. */
function addTensors(dir: string, rel: string, extra: TensorInput[]): void {
  const file = path.join(dir, rel);
  const st = SafetensorsFile.open(file);
  const tensors: TensorInput[] = st.tensorNames().map((n) => ({ name: n, shape: st.info(n).shape, data: st.read(n) }));
  st.close();
  writeSafetensors(file, [...tensors, ...extra]);
}

const refusal = (dir: string): string => openRefusal(dir, root);

const TRANSFORMER = 'transformer/diffusion_pytorch_model.safetensors';

describe('pipeline directory: refusals', () => {
  it('refuses each unsupported kind of checkpoint with the reason', () => {
    const D = tiny.dim;
    const cases: [string, (dir: string) => void, RegExp][] = [
      ['i2v image embedder', (d) => addTensors(d, TRANSFORMER, [{ name: 'condition_embedder.image_embedder.ff.net.0.proj.weight', shape: [D, 8], data: new Float32Array(D * 8) }]), /transformer\/diffusion_pytorch_model\.safetensors: tensor 'condition_embedder\.image_embedder\.ff\.net\.0\.proj\.weight' \(image embedder\) belongs to an image-to-video checkpoint/],
      ['i2v add_k_proj', (d) => addTensors(d, TRANSFORMER, [{ name: 'blocks.0.attn2.add_k_proj.weight', shape: [D, D], data: new Float32Array(D * D) }]), /tensor 'blocks\.0\.attn2\.add_k_proj\.weight' \(image key\/value projection\) belongs to an image-to-video checkpoint/],
      ['unknown tensor', (d) => addTensors(d, TRANSFORMER, [{ name: 'blocks.0.extra.weight', shape: [2], data: new Float32Array(2) }]), /unknown tensor 'blocks\.0\.extra\.weight'/],
      ['transformer_2', (d) => editJson(d, 'model_index.json', (j) => void (j.transformer_2 = ['diffusers', 'WanTransformer3DModel'])), /model_index\.json: 'transformer_2' = .*a second transformer \(Wan2\.2 two-expert denoising\) is not supported/],
      ['pipeline class', (d) => editJson(d, 'model_index.json', (j) => void (j._class_name = 'WanImageToVideoPipeline')), /model_index\.json: pipeline class "WanImageToVideoPipeline" is not supported/],
      ['boundary_ratio', (d) => editJson(d, 'model_index.json', (j) => void (j.boundary_ratio = 0.875)), /model_index\.json: 'boundary_ratio' = 0\.875/],
      ['expand_timesteps', (d) => editJson(d, 'model_index.json', (j) => void (j.expand_timesteps = true)), /model_index\.json: 'expand_timesteps' = true: expand_timesteps/],
      ['in_channels 20', (d) => editJson(d, 'transformer/config.json', (j) => void (j.in_channels = 20)), /transformer\/config\.json: 'in_channels' = 20 is not supported/],
      ['image_dim', (d) => editJson(d, 'transformer/config.json', (j) => void (j.image_dim = 1280)), /transformer\/config\.json: 'image_dim' = 1280 is not supported/],
      ['added_kv_proj_dim', (d) => editJson(d, 'transformer/config.json', (j) => void (j.added_kv_proj_dim = 64)), /transformer\/config\.json: 'added_kv_proj_dim' = 64 is not supported/],
      ['unknown config key', (d) => editJson(d, 'transformer/config.json', (j) => void (j.new_knob = 1)), /transformer\/config\.json: unknown key 'new_knob'/],
      ['VAE z_dim 48', (d) => editJson(d, 'vae/config.json', (j) => void (j.z_dim = 48)), /vae\/config\.json: 'z_dim' = 48 is not supported/],
      ['scheduler', (d) => editJson(d, 'scheduler/scheduler_config.json', (j) => void (j._class_name = 'DDIMScheduler')), /scheduler\/scheduler_config\.json: _class_name: must be UniPCMultistepScheduler or FlowMatchEulerDiscreteScheduler, got "DDIMScheduler"/],
      ['karras sigmas', (d) => editJson(d, 'scheduler/scheduler_config.json', (j) => void (j.use_karras_sigmas = true)), /scheduler\/scheduler_config\.json: use_karras_sigmas: must be false/],
      ['text encoder act', (d) => editJson(d, 'text_encoder/config.json', (j) => void (j.feed_forward_proj = 'relu')), /text_encoder\/config\.json: 'feed_forward_proj' = "relu" is not supported/],
      ['text width', (d) => editJson(d, 'text_encoder/config.json', (j) => void (j.d_model = 32)), /text_encoder\/config\.json: d_model 32 does not match the transformer's text_dim 64/],
    ];
    for (const [what, edit, reason] of cases) expect(refusal(variant(single, edit)), what).toMatch(reason);
  });

  it('names the file, relative to the model directory, for a truncated shard or a weight_map naming a missing file', () => {
    const shard2 = 'transformer/diffusion_pytorch_model-00002-of-00003.safetensors';
    const truncated = variant(sharded, (d) => {
      const f = path.join(d, shard2);
      fs.truncateSync(f, fs.statSync(f).size - 100);
    });
    expect(refusal(truncated)).toMatch(new RegExp(`^${shard2.replace(/\./g, '\\.')}: tensor '.*': truncated file`));
    const missing = variant(sharded, (d) => fs.rmSync(path.join(d, 'text_encoder/model-00003-of-00003.safetensors')));
    expect(refusal(missing)).toBe('text_encoder/model.safetensors.index.json: weight_map names text_encoder/model-00003-of-00003.safetensors, which does not exist');
    const remapped = variant(sharded, (d) =>
      editJson(d, 'transformer/diffusion_pytorch_model.safetensors.index.json', (j) => void ((j.weight_map as Record<string, string>)['proj_out.bias'] = 'elsewhere.safetensors')),
    );
    expect(refusal(remapped)).toMatch(/weight_map names transformer\/elsewhere\.safetensors, which does not exist/);
    const noWeights = variant(single, (d) => fs.rmSync(path.join(d, TRANSFORMER)));
    expect(refusal(noWeights)).toMatch(/^transformer\/: no weights/);
  });

  it('accepts the tied copy of the token embedding and uses shared.weight, refusing a mismatched one', () => {
    const te = 'text_encoder/model.safetensors';
    const table = SafetensorsFile.open(path.join(single, te));
    const shared = table.read('shared.weight');
    const shape = table.info('shared.weight').shape;
    table.close();
    const tied = variant(single, (d) => addTensors(d, te, [{ name: 'encoder.embed_tokens.weight', shape, data: shared }]));
    expect(openPipelineDir(tied).embeddingTable).toBe('shared.weight');
    const wrong = variant(single, (d) => addTensors(d, te, [{ name: 'encoder.embed_tokens.weight', shape: [2, 2], data: new Float32Array(4) }]));
    expect(refusal(wrong)).toMatch(/tensor 'encoder\.embed_tokens\.weight' \(tied to 'shared\.weight'\) has shape \[2, 2\], expected \[512, 64\]/);
  });
});

describe('pipeline directory: configs', () => {
  it("reads Wan2.1-T2V-1.3B's transformer config.json as the 1.3B config", () => {
    const json = {
      _class_name: 'WanTransformer3DModel', _diffusers_version: '0.33.0.dev0', added_kv_proj_dim: null, attention_head_dim: 128, cross_attn_norm: true, eps: 1e-6, ffn_dim: 8960,
      freq_dim: 256, image_dim: null, in_channels: 16, num_attention_heads: 12, num_layers: 30, out_channels: 16, patch_size: [1, 2, 2], qk_norm: 'rms_norm_across_heads', rope_max_seq_len: 1024, text_dim: 4096,
    };
    expect(parseTransformerConfig(json, 512, 'x')).toEqual(MODEL_CONFIGS['wan2.1-t2v-1.3b']);
    expect(parseTransformerConfig(transformerConfigJson(MODEL_CONFIGS['wan2.1-t2v-14b']), 512, 'x')).toEqual(MODEL_CONFIGS['wan2.1-t2v-14b']);
  });

  it("reads google/umt5-xxl's config.json as umT5-XXL", () => {
    const json = {
      architectures: ['UMT5EncoderModel'], classifier_dropout: 0.0, d_ff: 10240, d_kv: 64, d_model: 4096, decoder_start_token_id: 0, dense_act_fn: 'gelu_new', dropout_rate: 0.1, eos_token_id: 1,
      feed_forward_proj: 'gated-gelu', initializer_factor: 1.0, is_encoder_decoder: true, is_gated_act: true, layer_norm_epsilon: 1e-6, model_type: 'umt5', num_decoder_layers: 24, num_heads: 64,
      num_layers: 24, output_past: true, pad_token_id: 0, relative_attention_max_distance: 128, relative_attention_num_buckets: 32, scalable_attention: true, tie_word_embeddings: false,
      tokenizer_class: 'T5Tokenizer', torch_dtype: 'float32', use_cache: true, vocab_size: 256384,
    };
    expect(parseUmt5Config(json, 'umt5-xxl')).toEqual(UMT5_XXL);
    expect(parseUmt5Config(umt5ConfigJson(UMT5_XXL), 'umt5-xxl')).toEqual(UMT5_XXL);
  });
});

describe('pipeline directory: weights', () => {
  it('loads each stage from whichever shards hold its tensors, equal to the seeded weights', () => {
    const p = openPipelineDir(sharded);
    expect(p.transformer.shards).toHaveLength(3);
    for (const range of [{ l0: 0, l1: 2, head: true, tail: false }, { l0: 2, l1: 6, head: false, tail: true }]) {
      const got = loadPipelineStage(p, range);
      const want = seededStageWeights(tiny, range, 0);
      expect([...got.keys()]).toEqual([...want.keys()]);
      for (const [name, w] of want) expect(Buffer.from(got.get(name)!.buffer).equals(Buffer.from(w.buffer)), name).toBe(true);
      const fp = stageFootprint(p, range);
      expect(fp.engineBytes).toBe([...want.values()].reduce((n, w) => n + w.byteLength, 0));
      expect(fp.storedBytes).toBe(fp.engineBytes); // F32 on disk
    }
  });

  it('conditions a pipeline on its tokenizer and the umT5 encoder over its own seeded weights, never the stand-in', async () => {
    const s = resolveModel(single);
    expect(s.kind).toBe('pipeline');
    expect(s.textEncoder.description).toMatch(/^umT5 text encoder: umt5-tiny/);
    const backend = cpuBackend();
    const e = await s.textEncoder.encode('a paper boat', '', backend);
    const p = openPipelineDir(single);
    expect([...e.condIds!]).toEqual(p.tokenizer.tokenize('a paper boat').ids);
    expect([...e.uncondIds!]).toEqual([UMT5_SPECIAL.eos]); // "" is the end token alone, as WanPipeline encodes it
    // `model write` stores exactly the seeded encoder: the same bits as umT5 on seededUmt5Weights.
    const weights = seededUmt5Weights(SEEDED_UMT5.tiny, 0);
    const { textLen, textDim } = s.config;
    const want = await encodeText({ config: SEEDED_UMT5.tiny, weights, ids: e.condIds!, textLen, backend });
    expect(Buffer.from(e.cond.buffer).equals(Buffer.from(want.buffer))).toBe(true);
    const wantUncond = await encodeText({ config: SEEDED_UMT5.tiny, weights, ids: [UMT5_SPECIAL.eos], textLen, backend });
    expect(Buffer.from(e.uncond.buffer).equals(Buffer.from(wantUncond.buffer))).toBe(true);
    // Rows past the 4 tokens are zero.
    expect(e.cond.subarray(4 * textDim).every((v) => v === 0)).toBe(true);
    expect(e.cond.subarray(0, 4 * textDim).some((v) => v !== 0)).toBe(true);
    // Sharded and single-file directories condition identically and fingerprint identically.
    const sh = resolveModel(sharded).textEncoder;
    expect(Buffer.from((await sh.encode('a paper boat', '', backend)).cond.buffer).equals(Buffer.from(e.cond.buffer))).toBe(true);
    expect(await s.textEncoder.fingerprint()).toMatch(/^[0-9a-f]{64}$/);
    expect(resolveModel('tiny').textEncoder.description).toMatch(/^stand-in text encoder \(seeded models only/);
  });

  it('fingerprints the text encoder by content: another seed or tokenizer gives another fingerprint', async () => {
    const base = await resolveModel(single).textEncoder.fingerprint();
    expect(await resolveModel(single).textEncoder.fingerprint()).toBe(base);
    const otherSeed = path.join(root, 'seed1');
    writeSeededPipeline(otherSeed, { config: tiny, seed: 1, shards: 1, dtype: 'F32' });
    expect(await resolveModel(otherSeed).textEncoder.fingerprint()).not.toBe(base);
    const otherTokenizer = variant(single, (d) => editJson(d, 'tokenizer/tokenizer.json', (j) => ((j.model as { vocab: [string, number][] }).vocab[5][1] -= 1)));
    expect(await resolveModel(otherTokenizer).textEncoder.fingerprint()).not.toBe(base);
  });
});
