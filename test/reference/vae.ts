/**
 * Float64 reference of Wan2.1's VAE decode, written from the published architecture (diffusers'
 * AutoencoderKLWan: WanCausalConv3d, WanRMS_norm, WanResidualBlock, WanAttentionBlock,
 * WanResample, WanMidBlock, WanUpBlock, WanDecoder3d, _decode) and independent of the engine's
 * graph builder (libs/model/src/vae.ts): it works channels-first [C, T, H, W] as PyTorch does,
 * decodes one latent frame per decoder call with the feature cache exactly as the reference keeps
 * it (a list with null, the 'Rep' marker of the first chunk, one-frame caches padded by one zero
 * frame on the second call), and un-normalises with latents / (1 / std) + mean as WanPipeline does.
 * Slow and plain on purpose: for small seeded configs only.
 */
import type { VaeConfig } from '../../libs/model/src/vae-config';

type Weights = ReadonlyMap<string, Float32Array>;

/** A [c, t, h, w] float64 tensor. */
interface Video {
  readonly c: number;
  readonly t: number;
  readonly h: number;
  readonly w: number;
  readonly data: Float64Array;
}

const CACHE_T = 2;

function video(c: number, t: number, h: number, w: number, data?: Float64Array): Video {
  return { c, t, h, w, data: data ?? new Float64Array(c * t * h * w) };
}

const at = (v: Video, c: number, t: number, y: number, x: number): number => v.data[((c * v.t + t) * v.h + y) * v.w + x];

/** Frames [t0, t1) of v. */
function frames(v: Video, t0: number, t1: number): Video {
  const out = video(v.c, t1 - t0, v.h, v.w);
  for (let c = 0; c < v.c; c++)
    for (let t = t0; t < t1; t++) out.data.set(v.data.subarray(((c * v.t + t) * v.h) * v.w, ((c * v.t + t + 1) * v.h) * v.w), ((c * out.t + t - t0) * v.h) * v.w);
  return out;
}

/** torch.cat along time. */
function catTime(a: Video, b: Video): Video {
  const out = video(a.c, a.t + b.t, a.h, a.w);
  const fs = a.h * a.w;
  for (let c = 0; c < a.c; c++) {
    out.data.set(a.data.subarray(c * a.t * fs, (c + 1) * a.t * fs), c * out.t * fs);
    out.data.set(b.data.subarray(c * b.t * fs, (c + 1) * b.t * fs), (c * out.t + a.t) * fs);
  }
  return out;
}

function get(weights: Weights, name: string): Float32Array {
  const t = weights.get(name);
  if (!t) throw new Error(`reference VAE: no tensor ${name}`);
  return t;
}

/**
 * WanCausalConv3d(x, cache): padding (pt, ph, pw) becomes 2*pt zero frames in front (fewer by the
 * cached frames, which are prepended), ph / pw zeros on both sides of space; then a valid conv.
 */
function causalConv(weights: Weights, name: string, x: Video, outC: number, kernel: readonly [number, number, number], padding: readonly [number, number, number], cache: Video | null = null): Video {
  const [kt, kh, kw] = kernel;
  const [pt, ph, pw] = padding;
  const wt = get(weights, `${name}.weight`);
  const b = get(weights, `${name}.bias`);
  let front = 2 * pt;
  let input = x;
  if (cache && front > 0) {
    input = catTime(cache, x);
    front -= cache.t;
  }
  const tIn = input.t + front;
  const outT = tIn - kt + 1;
  const outH = input.h + 2 * ph - kh + 1;
  const outW = input.w + 2 * pw - kw + 1;
  const out = video(outC, outT, outH, outW);
  const value = (c: number, t: number, y: number, xx: number): number => {
    const tt = t - front;
    const yy = y - ph;
    const xs = xx - pw;
    if (tt < 0 || yy < 0 || yy >= input.h || xs < 0 || xs >= input.w) return 0;
    return at(input, c, tt, yy, xs);
  };
  for (let o = 0; o < outC; o++)
    for (let t = 0; t < outT; t++)
      for (let y = 0; y < outH; y++)
        for (let xx = 0; xx < outW; xx++) {
          let s = b[o];
          for (let c = 0; c < input.c; c++)
            for (let dt = 0; dt < kt; dt++)
              for (let dy = 0; dy < kh; dy++)
                for (let dx = 0; dx < kw; dx++) s += wt[(((o * input.c + c) * kt + dt) * kh + dy) * kw + dx] * value(c, t + dt, y + dy, xx + dx);
          out.data[((o * outT + t) * outH + y) * outW + xx] = s;
        }
  return out;
}

/** WanRMS_norm: F.normalize over channels (eps 1e-12) * sqrt(C) * gamma. */
function rmsNorm(weights: Weights, name: string, x: Video): Video {
  const gamma = get(weights, `${name}.gamma`);
  const out = video(x.c, x.t, x.h, x.w);
  const plane = x.t * x.h * x.w;
  for (let p = 0; p < plane; p++) {
    let ss = 0;
    for (let c = 0; c < x.c; c++) ss += x.data[c * plane + p] ** 2;
    const denom = Math.max(Math.sqrt(ss), 1e-12);
    for (let c = 0; c < x.c; c++) out.data[c * plane + p] = (x.data[c * plane + p] / denom) * Math.sqrt(x.c) * gamma[c];
  }
  return out;
}

function silu(x: Video): Video {
  return video(x.c, x.t, x.h, x.w, x.data.map((v) => v / (1 + Math.exp(-v))));
}

function add(a: Video, b: Video): Video {
  return video(a.c, a.t, a.h, a.w, a.data.map((v, i) => v + b.data[i]));
}

/** The reference's feature cache: a tensor, null (never run) or the first chunk's 'Rep' marker. */
type CacheEntry = Video | null | 'Rep';
interface Cache {
  entries: CacheEntry[];
  idx: number;
}

/** The cache update every cached conv of the decoder does: last CACHE_T input frames, one old frame prepended when short. */
function cachedConv(weights: Weights, name: string, x: Video, outC: number, cache: Cache | null): Video {
  if (!cache) return causalConv(weights, name, x, outC, [3, 3, 3], [1, 1, 1]);
  const idx = cache.idx;
  const old = cache.entries[idx];
  let cacheX = frames(x, Math.max(0, x.t - CACHE_T), x.t);
  if (cacheX.t < 2 && old !== null && old !== undefined && old !== 'Rep') cacheX = catTime(frames(old, old.t - 1, old.t), cacheX);
  const y = causalConv(weights, name, x, outC, [3, 3, 3], [1, 1, 1], old === 'Rep' ? null : (old ?? null));
  cache.entries[idx] = cacheX;
  cache.idx++;
  return y;
}

function residualBlock(weights: Weights, prefix: string, x: Video, inDim: number, outDim: number, cache: Cache | null): Video {
  const h = inDim !== outDim ? causalConv(weights, `${prefix}.conv_shortcut`, x, outDim, [1, 1, 1], [0, 0, 0]) : x;
  let y = silu(rmsNorm(weights, `${prefix}.norm1`, x));
  y = cachedConv(weights, `${prefix}.conv1`, y, outDim, cache);
  y = silu(rmsNorm(weights, `${prefix}.norm2`, y));
  y = cachedConv(weights, `${prefix}.conv2`, y, outDim, cache);
  return add(y, h);
}

/** WanAttentionBlock: per frame, one head over the pixels, scale 1/sqrt(C); x + proj(attn). */
function attentionBlock(weights: Weights, prefix: string, x: Video): Video {
  const C = x.c;
  const n = rmsNorm(weights, `${prefix}.norm`, x);
  const qkvW = get(weights, `${prefix}.to_qkv.weight`);
  const qkvB = get(weights, `${prefix}.to_qkv.bias`);
  const pW = get(weights, `${prefix}.proj.weight`);
  const pB = get(weights, `${prefix}.proj.bias`);
  const P = x.h * x.w;
  const out = video(C, x.t, x.h, x.w);
  for (let t = 0; t < x.t; t++) {
    // qkv[p][j], j over 3C output channels of the 1x1 conv; q = [0, C), k = [C, 2C), v = [2C, 3C).
    const qkv: Float64Array[] = [];
    for (let p = 0; p < P; p++) {
      const row = new Float64Array(3 * C);
      for (let j = 0; j < 3 * C; j++) {
        let s = qkvB[j];
        for (let c = 0; c < C; c++) s += qkvW[j * C + c] * n.data[(c * x.t + t) * P + p];
        row[j] = s;
      }
      qkv.push(row);
    }
    for (let i = 0; i < P; i++) {
      const scores = new Float64Array(P);
      for (let j = 0; j < P; j++) {
        let s = 0;
        for (let c = 0; c < C; c++) s += qkv[i][c] * qkv[j][C + c];
        scores[j] = s / Math.sqrt(C);
      }
      const max = Math.max(...scores);
      let denom = 0;
      for (let j = 0; j < P; j++) denom += Math.exp(scores[j] - max);
      const attended = new Float64Array(C);
      for (let j = 0; j < P; j++) {
        const p = Math.exp(scores[j] - max) / denom;
        for (let c = 0; c < C; c++) attended[c] += p * qkv[j][2 * C + c];
      }
      for (let o = 0; o < C; o++) {
        let s = pB[o];
        for (let c = 0; c < C; c++) s += pW[o * C + c] * attended[c];
        out.data[(o * x.t + t) * P + i] = s + x.data[(o * x.t + t) * P + i];
      }
    }
  }
  return out;
}

/** nn.Upsample(scale 2, 'nearest-exact'): source index floor((dst + 0.5) * in / out). */
function upsampleNearestExact(x: Video): Video {
  const H = 2 * x.h;
  const W = 2 * x.w;
  const out = video(x.c, x.t, H, W);
  for (let c = 0; c < x.c; c++)
    for (let t = 0; t < x.t; t++)
      for (let y = 0; y < H; y++)
        for (let xx = 0; xx < W; xx++) {
          const sy = Math.min(x.h - 1, Math.floor((y + 0.5) * (x.h / H)));
          const sx = Math.min(x.w - 1, Math.floor((xx + 0.5) * (x.w / W)));
          out.data[((c * x.t + t) * H + y) * W + xx] = at(x, c, t, sy, sx);
        }
  return out;
}

/** WanResample for the decoder's modes, with the reference's upsample3d cache rules. */
function resample(weights: Weights, prefix: string, x: Video, mode: 'upsample3d' | 'upsample2d', cache: Cache | null): Video {
  const C = x.c;
  if (mode === 'upsample3d' && cache) {
    const idx = cache.idx;
    const old = cache.entries[idx];
    if (old === null || old === undefined) {
      cache.entries[idx] = 'Rep';
      cache.idx++;
    } else {
      let cacheX = frames(x, Math.max(0, x.t - CACHE_T), x.t);
      if (cacheX.t < 2 && old !== 'Rep') cacheX = catTime(frames(old, old.t - 1, old.t), cacheX);
      if (cacheX.t < 2 && old === 'Rep') cacheX = catTime(video(C, 1, x.h, x.w), cacheX);
      const y = causalConv(weights, `${prefix}.time_conv`, x, 2 * C, [3, 1, 1], [1, 0, 0], old === 'Rep' ? null : old);
      cache.entries[idx] = cacheX;
      cache.idx++;
      // [2C, t] viewed as [2, C, t] and stacked on a new axis after t: frame 2t + s is half s.
      const doubled = video(C, 2 * x.t, x.h, x.w);
      const fs = x.h * x.w;
      for (let s = 0; s < 2; s++)
        for (let c = 0; c < C; c++)
          for (let t = 0; t < x.t; t++) doubled.data.set(y.data.subarray(((s * C + c) * x.t + t) * fs, ((s * C + c) * x.t + t + 1) * fs), (c * doubled.t + 2 * t + s) * fs);
      x = doubled;
    }
  }
  const up = upsampleNearestExact(x);
  return causalConv(weights, `${prefix}.resample.1`, up, C / 2, [1, 3, 3], [0, 1, 1]);
}

/** WanDecoder3d.forward on one chunk. */
function decoder3d(weights: Weights, cfg: VaeConfig, x: Video, cache: Cache): Video {
  const d = cfg.baseDim;
  const m = cfg.dimMult;
  const dims = [d * m[m.length - 1], ...[...m].reverse().map((k) => d * k)];
  const temperalUpsample = [...cfg.temporalDownsample].reverse();
  x = cachedConv(weights, 'decoder.conv_in', x, dims[0], cache);
  x = residualBlock(weights, 'decoder.mid_block.resnets.0', x, dims[0], dims[0], cache);
  x = attentionBlock(weights, 'decoder.mid_block.attentions.0', x);
  x = residualBlock(weights, 'decoder.mid_block.resnets.1', x, dims[0], dims[0], cache);
  for (let i = 0; i < dims.length - 1; i++) {
    let inDim = i > 0 ? dims[i] / 2 : dims[i];
    const outDim = dims[i + 1];
    for (let j = 0; j < cfg.numResBlocks + 1; j++) {
      x = residualBlock(weights, `decoder.up_blocks.${i}.resnets.${j}`, x, inDim, outDim, cache);
      inDim = outDim;
    }
    if (i !== m.length - 1) x = resample(weights, `decoder.up_blocks.${i}.upsamplers.0`, x, temperalUpsample[i] ? 'upsample3d' : 'upsample2d', cache);
  }
  x = silu(rmsNorm(weights, 'decoder.norm_out', x));
  return cachedConv(weights, 'decoder.conv_out', x, 3, cache);
}

/**
 * WanPipeline's un-normalisation and AutoencoderKLWan._decode: latents [z, F, h, w] (normalised,
 * as the DiT produces them) -> video [3, T, 8h, 8w] in [-1, 1], channels-first.
 */
export function referenceVaeDecode(cfg: VaeConfig, weights: Weights, latents: Float32Array, F: number, h: number, w: number): { data: Float64Array; frames: number; height: number; width: number } {
  const z = cfg.zDim;
  const un = video(z, F, h, w);
  for (let c = 0; c < z; c++) {
    const inverseStd = 1 / cfg.latentsStd[c];
    for (let i = 0; i < F * h * w; i++) un.data[c * F * h * w + i] = latents[c * F * h * w + i] / inverseStd + cfg.latentsMean[c];
  }
  const x = causalConv(weights, 'post_quant_conv', un, z, [1, 1, 1], [0, 0, 0]);
  const cache: Cache = { entries: [], idx: 0 };
  let out: Video | null = null;
  for (let i = 0; i < F; i++) {
    cache.idx = 0;
    const chunk = decoder3d(weights, cfg, frames(x, i, i + 1), cache);
    out = out ? catTime(out, chunk) : chunk;
  }
  const clamped = out!.data.map((v) => Math.min(1, Math.max(-1, v)));
  return { data: clamped, frames: out!.t, height: out!.h, width: out!.w };
}
