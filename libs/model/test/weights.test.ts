import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MODEL_CONFIGS, ModelConfig, weightSpecs } from '../src/config';
import { SafetensorsFile, writeSafetensors } from '../src/safetensors';
import { CONFIG_METADATA_KEY, SEED_METADATA_KEY, loadStageWeights, readModelConfig, seededStageWeights, seededTensor, writeSeededModel } from '../src/weights';

const tiny = MODEL_CONFIGS.tiny;
const all = { l0: 0, l1: tiny.layers, head: true, tail: true };

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-w-'));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function bitsEqual(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

describe('seeded weights', () => {
  it('follow each init kind', () => {
    const specs = weightSpecs(tiny, all);
    const byName = new Map(specs.map((s) => [s.name, s]));
    expect(Array.from(seededTensor(byName.get('blocks.0.norm2.weight')!, 1))).toEqual(new Array(tiny.dim).fill(1));
    expect(Array.from(seededTensor(byName.get('blocks.0.norm2.bias')!, 1))).toEqual(new Array(tiny.dim).fill(0));
    // std ~ 1/sqrt(fanIn) for 'normal' and 'table'.
    for (const name of ['blocks.0.ffn.net.0.proj.weight', 'blocks.0.scale_shift_table', 'condition_embedder.text_embedder.linear_1.weight']) {
      const spec = byName.get(name)!;
      const w = seededTensor(spec, 7);
      const std = Math.sqrt(w.reduce((s, v) => s + v * v, 0) / w.length);
      expect(std * Math.sqrt(spec.fanIn!)).toBeGreaterThan(0.9);
      expect(std * Math.sqrt(spec.fanIn!)).toBeLessThan(1.1);
    }
  });

  it('depend only on (seed, name): identical across stage ranges, different across seeds and names', () => {
    const s0 = seededStageWeights(tiny, { l0: 0, l1: 3, head: true, tail: false }, 42);
    const s1 = seededStageWeights(tiny, { l0: 2, l1: 6, head: false, tail: true }, 42);
    expect(s0.has('patch_embedding.weight')).toBe(true);
    expect(s0.has('proj_out.weight')).toBe(false);
    expect(s1.has('patch_embedding.weight')).toBe(false);
    expect(s1.has('blocks.1.attn1.to_q.weight')).toBe(false);
    expect([...s0.keys()]).toEqual(weightSpecs(tiny, { l0: 0, l1: 3, head: true, tail: false }).map((s) => s.name));
    const shared = [...s0.keys()].filter((k) => s1.has(k));
    expect(shared).toContain('condition_embedder.time_proj.weight');
    expect(shared).toContain('blocks.2.ffn.net.2.weight');
    for (const k of shared) expect(bitsEqual(s0.get(k)!, s1.get(k)!)).toBe(true);
    const other = seededStageWeights(tiny, { l0: 2, l1: 3, head: false, tail: false }, 43);
    expect(bitsEqual(other.get('blocks.2.attn1.to_q.weight')!, s0.get('blocks.2.attn1.to_q.weight')!)).toBe(false);
    expect(bitsEqual(s0.get('blocks.2.attn1.to_q.weight')!, s0.get('blocks.2.attn1.to_k.weight')!)).toBe(false);
  });

  it('reject a range outside the model', () => {
    expect(() => seededStageWeights(tiny, { l0: 4, l1: 9, head: false, tail: false }, 1)).toThrow(/layers \[4, 9\) are not within the model's 6 layers/);
  });
});

describe('checkpoint files', () => {
  it('a written seeded model loads back bit for bit, per stage', () => {
    const p = path.join(dir, 'tiny.safetensors');
    writeSeededModel(p, tiny, 1234);
    const st = SafetensorsFile.open(p);
    expect(JSON.parse(st.metadata[CONFIG_METADATA_KEY])).toEqual(tiny);
    expect(st.metadata[SEED_METADATA_KEY]).toBe('1234');
    expect(st.tensorNames().length).toBe(weightSpecs(tiny, all).length);
    st.close();
    expect(readModelConfig(p)).toEqual(tiny);
    for (const range of [all, { l0: 0, l1: 2, head: true, tail: false }, { l0: 2, l1: 4, head: false, tail: false }, { l0: 4, l1: 6, head: false, tail: true }]) {
      const { config, weights } = loadStageWeights(p, range);
      expect(config).toEqual(tiny);
      const seeded = seededStageWeights(tiny, range, 1234);
      expect([...weights.keys()]).toEqual([...seeded.keys()]);
      for (const [k, v] of seeded) expect(bitsEqual(weights.get(k)!, v)).toBe(true);
    }
  });

  it('BF16 checkpoints load as float32 within rounding', () => {
    const p = path.join(dir, 'tiny-bf16.safetensors');
    writeSeededModel(p, tiny, 5, 'BF16');
    const range = { l0: 1, l1: 2, head: false, tail: false };
    const { weights } = loadStageWeights(p, range);
    const seeded = seededStageWeights(tiny, range, 5);
    for (const [k, v] of seeded) {
      const w = weights.get(k)!;
      let bad = 0;
      for (let i = 0; i < v.length; i++) if (Math.abs(w[i] - v[i]) > Math.abs(v[i]) * 2 ** -8) bad++;
      expect(bad, k).toBe(0);
    }
  });

  it('infers the config from shapes when there is no metadata (diffusers export)', () => {
    // A 128-wide model so heads = dim / 128 applies.
    const cfg: ModelConfig = { ...tiny, name: 'x', dim: 256, ffnDim: 512, layers: 2, heads: 2, textDim: 96, textLen: 512 };
    const specs = weightSpecs(cfg, { l0: 0, l1: 2, head: true, tail: true });
    const p = path.join(dir, 'diffusers.safetensors');
    writeSafetensors(p, specs.map((s) => ({ name: s.name, shape: s.shape, data: () => seededTensor(s, 3) })));
    const { config, weights } = loadStageWeights(p, { l0: 1, l1: 2, head: false, tail: true });
    expect(config).toMatchObject({ dim: 256, ffnDim: 512, layers: 2, heads: 2, textDim: 96, textLen: 512, freqDim: 256, latentChannels: 16 });
    expect(bitsEqual(weights.get('blocks.1.attn2.to_v.weight')!, seededTensor(specs.find((s) => s.name === 'blocks.1.attn2.to_v.weight')!, 3))).toBe(true);

    // Shapes that match a known config take that config (heads and textLen included).
    const q = path.join(dir, 'tiny-nometa.safetensors');
    const tspecs = weightSpecs(tiny, all);
    writeSafetensors(q, tspecs.map((s) => ({ name: s.name, shape: s.shape, data: () => seededTensor(s, 3) })));
    expect(loadStageWeights(q, all).config).toEqual(tiny);
    expect(readModelConfig(q)).toEqual(tiny);
  });

  it('says why a config cannot be inferred', () => {
    const p = path.join(dir, 'noinfer.safetensors');
    writeSafetensors(p, [{ name: 'foo', shape: [1], data: new Float32Array(1) }]);
    expect(() => loadStageWeights(p, all)).toThrow(`${p}: cannot infer the model config: no 'longshot.config' metadata and no tensor 'condition_embedder.time_embedder.linear_2.weight'`);
    const cfg: ModelConfig = { ...tiny, dim: 96, heads: 3, layers: 1 };
    const q = path.join(dir, 'noheads.safetensors');
    const specs = weightSpecs(cfg, { l0: 0, l1: 1, head: true, tail: true });
    writeSafetensors(q, specs.map((s) => ({ name: s.name, shape: s.shape, data: new Float32Array(s.shape.reduce((a, b) => a * b, 1)) })));
    expect(() => loadStageWeights(q, { l0: 0, l1: 1, head: true, tail: true })).toThrow(/dim 96 is not a multiple of Wan's head dim 128/);
  });

  it('lists missing tensors and shape mismatches, naming the file', () => {
    const specs = weightSpecs(tiny, all).filter((s) => s.name !== 'blocks.3.attn1.to_k.bias');
    const p = path.join(dir, 'broken.safetensors');
    writeSafetensors(
      p,
      specs.map((s) => {
        const shape = s.name === 'proj_out.weight' ? [32, 64] : s.shape;
        return { name: s.name, shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) };
      }),
      { [CONFIG_METADATA_KEY]: JSON.stringify(tiny) },
    );
    // The head stage needs neither tensor.
    expect(() => loadStageWeights(p, { l0: 0, l1: 2, head: true, tail: false })).not.toThrow();
    expect(() => loadStageWeights(p, { l0: 2, l1: 4, head: false, tail: false })).toThrow(
      `${p}: not a valid tiny checkpoint for layers [2, 4): missing tensor 'blocks.3.attn1.to_k.bias'`,
    );
    expect(() => loadStageWeights(p, { l0: 4, l1: 6, head: false, tail: true })).toThrow(
      `${p}: not a valid tiny checkpoint for layers [4, 6): tensor 'proj_out.weight': expected [64, 64], file has [32, 64]`,
    );
    expect(() => loadStageWeights(p, { l0: 0, l1: 7, head: true, tail: true })).toThrow(/layers \[0, 7\) are not within the model's 6 layers/);
  });

  it('rejects bad config metadata', () => {
    const p = path.join(dir, 'badmeta.safetensors');
    writeSafetensors(p, [{ name: 'x', shape: [1], data: new Float32Array(1) }], { [CONFIG_METADATA_KEY]: '{"dim": 64' });
    expect(() => loadStageWeights(p, all)).toThrow(`${p}: metadata 'longshot.config' is not valid JSON`);
    writeSafetensors(p, [{ name: 'x', shape: [1], data: new Float32Array(1) }], { [CONFIG_METADATA_KEY]: JSON.stringify({ ...tiny, heads: 3 }) });
    expect(() => loadStageWeights(p, all)).toThrow(/metadata 'longshot.config': model config tiny: dim 64 is not divisible by heads 3/);
  });
});
