/**
 * `npm run bench -- vae [--json]`: the VAE decoder on the CPU backend. For each case, the decode of
 * 3 latent frames (9 video frames), its graph run node by node, as frames/s; and every
 * convolution of it (over 99% of its FLOPs) next to the same convolution done the usual way in
 * the same run: im2col in JS, then OpenBLAS sgemm with the same thread count. The
 * baseline's output is checked against the engine's (relative error <= 1e-4), so both do the same
 * computation; `ratio` = baseline GEMM seconds / engine convolution seconds (> 1: the engine is
 * faster even against the GEMM alone, im2col not counted). Also the feature cache's size at
 * 832x480 and 1280x720 for Wan2.1's VAE.
 *
 * Cases: the tiny and small seeded VAEs at 256x256, and Wan2.1's VAE at 832x480 (31.5 TFLOP;
 * several minutes on a few cores).
 */
import { blasCore, blasSgemm, cpuBackend, engineInfo, type OpNode } from '@longshot/engine';
import { SEEDED_VAE, VaeDecoder, WAN21_VAE, seededVaeWeights, vaeCacheBytes, vaeDecodeFlops, type VaeConfig } from '@longshot/model';
import { Rng } from '@longshot/random';

const LATENT_FRAMES = 3;
const IM2COL_ROWS = 8192;
// OpenBLAS worker threads busy-wait for ~0.1 s after a call before sleeping: let them go quiet
// before the engine's next node is timed.
const SETTLE_MS = 250;
const settle = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, SETTLE_MS));

interface DecodeCase {
  name: string;
  config: VaeConfig;
  latentHeight: number;
  latentWidth: number;
}

const CASES: DecodeCase[] = [
  { name: 'vae-tiny 256x256', config: SEEDED_VAE.tiny, latentHeight: 32, latentWidth: 32 },
  { name: 'vae-small 256x256', config: SEEDED_VAE.small, latentHeight: 32, latentWidth: 32 },
  { name: 'wan2.1-vae 832x480', config: WAN21_VAE, latentHeight: 60, latentWidth: 104 },
];

export interface VaeCaseReport {
  name: string;
  latentFrames: number;
  videoFrames: number;
  tflop: number;
  decode: { seconds: number; framesPerSecond: number; gflops: number };
  convolutions: { count: number; engineSeconds: number; baselineGemmSeconds: number; baselineIm2colSeconds: number; maxRelError: number; ratio: number };
}

export interface VaeBenchReport {
  engine: { simd: string; threads: number };
  baseline: string;
  cases: VaeCaseReport[];
  cacheBytes: { '832x480': number; '1280x720': number };
}

const seconds = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e9;

/**
 * im2col + sgemm of one causal_conv3d node, into `out`; returns the seconds of each part. The
 * columns are ordered tap-major with channels innermost, so each im2col entry is one contiguous
 * copy from the channels-last input; the weight is permuted to match once (not timed).
 */
function baselineConv(node: OpNode, out: Float32Array, threads: number): { gemm: number; im2col: number } {
  const [frames, cacheFrames, height, width, cin, cout, kt, kh, kw] = node.params;
  const [x, weight, bias, cache] = node.inputs;
  const taps = kt * kh * kw;
  const k = cin * taps;
  const permuted = new Float32Array(cout * k);
  for (let o = 0; o < cout; o++) for (let c = 0; c < cin; c++) for (let tap = 0; tap < taps; tap++) permuted[o * k + tap * cin + c] = weight![(o * cin + c) * taps + tap];
  const hw = height * width;
  const zeros = kt - 1 - cacheFrames;
  const a = new Float32Array(IM2COL_ROWS * k);
  let gemm = 0;
  let im2col = 0;
  for (let r0 = 0; r0 < frames * hw; r0 += IM2COL_ROWS) {
    const rows = Math.min(IM2COL_ROWS, frames * hw - r0);
    let t0 = process.hrtime.bigint();
    a.fill(0, 0, rows * k);
    for (let i = 0; i < rows; i++) {
      const r = r0 + i;
      const t = Math.floor(r / hw);
      const y = Math.floor(r / width) % height;
      const xx = r % width;
      for (let dt = 0; dt < kt; dt++) {
        const s = t + dt - zeros;
        if (s < 0) continue;
        const frame = s < cacheFrames ? cache! : x!;
        const frameBase = (s < cacheFrames ? s : s - cacheFrames) * hw * cin;
        for (let dy = 0; dy < kh; dy++) {
          const sy = y + dy - (kh >> 1);
          if (sy < 0 || sy >= height) continue;
          for (let dx = 0; dx < kw; dx++) {
            const sx = xx + dx - (kw >> 1);
            if (sx < 0 || sx >= width) continue;
            const src = frameBase + (sy * width + sx) * cin;
            const dst = i * k + ((dt * kh + dy) * kw + dx) * cin;
            // A typed-array copy pays off for long runs only.
            if (cin >= 32) a.set(frame.subarray(src, src + cin), dst);
            else for (let ch = 0; ch < cin; ch++) a[dst + ch] = frame[src + ch];
          }
        }
      }
    }
    im2col += seconds(t0);
    const c = out.subarray(r0 * cout, (r0 + rows) * cout);
    t0 = process.hrtime.bigint();
    blasSgemm(rows, cout, k, a.subarray(0, rows * k), permuted, c, threads);
    gemm += seconds(t0);
    if (bias) for (let i = 0; i < rows; i++) for (let o = 0; o < cout; o++) c[i * cout + o] += bias[o];
  }
  return { gemm, im2col };
}

function relError(got: Float32Array, ref: Float32Array): number {
  let diff = 0;
  let max = 0;
  for (let i = 0; i < ref.length; i++) {
    diff = Math.max(diff, Math.abs(got[i] - ref[i]));
    max = Math.max(max, Math.abs(ref[i]));
  }
  return diff / Math.max(1e-6, max);
}

async function benchCase(c: DecodeCase, threads: number): Promise<VaeCaseReport> {
  const cpu = cpuBackend();
  const weights = seededVaeWeights(c.config, 1);
  const { zDim } = c.config;
  const latents = Rng.from('vae bench', c.name).fillNormal(new Float32Array(zDim * LATENT_FRAMES * c.latentHeight * c.latentWidth), 1);
  const flops = vaeDecodeFlops(c.config, c.latentHeight, c.latentWidth, LATENT_FRAMES);

  // The decode graph run node by node (the same nodes, in order, as one run), every convolution
  // also done by the baseline on the same inputs.
  const dec = new VaeDecoder(c.config, weights, c.latentHeight, c.latentWidth);
  const shape = dec.outputShape(LATENT_FRAMES);
  const videoFrames = shape.frames;
  const nodes = dec.decodeNodes(latents, LATENT_FRAMES, new Float32Array(shape.frames * shape.height * shape.width * 3));
  let decodeSeconds = 0;
  let engineSeconds = 0;
  let gemmSeconds = 0;
  let im2colSeconds = 0;
  let maxRelError = 0;
  let count = 0;
  for (const node of nodes) {
    const t0 = process.hrtime.bigint();
    cpu.runSync([node]);
    const s = seconds(t0);
    decodeSeconds += s;
    if (node.op !== 'causal_conv3d') continue;
    engineSeconds += s;
    const out = new Float32Array(node.output.length);
    const b = baselineConv(node, out, threads);
    gemmSeconds += b.gemm;
    im2colSeconds += b.im2col;
    maxRelError = Math.max(maxRelError, relError(out, node.output));
    count++;
    await settle();
  }
  if (!(maxRelError <= 1e-4)) throw new Error(`${c.name}: the baseline convolutions differ from the engine's by ${maxRelError}`);
  return {
    name: c.name,
    latentFrames: LATENT_FRAMES,
    videoFrames,
    tflop: flops / 1e12,
    decode: { seconds: decodeSeconds, framesPerSecond: videoFrames / decodeSeconds, gflops: flops / decodeSeconds / 1e9 },
    convolutions: { count, engineSeconds, baselineGemmSeconds: gemmSeconds, baselineIm2colSeconds: im2colSeconds, maxRelError, ratio: gemmSeconds / engineSeconds },
  };
}

export async function vaeBench(opts: { json: boolean }): Promise<VaeBenchReport> {
  const info = engineInfo();
  const report: VaeBenchReport = {
    engine: { simd: info.simd, threads: info.threads },
    baseline: `im2col (JS) + OpenBLAS sgemm (${blasCore()} kernels), same threads`,
    cases: [],
    cacheBytes: { '832x480': vaeCacheBytes(WAN21_VAE, 60, 104), '1280x720': vaeCacheBytes(WAN21_VAE, 90, 160) },
  };
  if (!opts.json) {
    console.log(`vae (${info.simd}, ${info.threads} threads)`);
    console.log(`  feature cache of wan2.1-vae: 832x480 ${(report.cacheBytes['832x480'] / 2 ** 30).toFixed(2)} GiB, 1280x720 ${(report.cacheBytes['1280x720'] / 2 ** 30).toFixed(2)} GiB`);
  }
  for (const c of CASES) {
    const r = await benchCase(c, info.threads);
    report.cases.push(r);
    if (!opts.json) {
      const v = r.convolutions;
      console.log(
        `  ${r.name}: ${r.latentFrames} latent -> ${r.videoFrames} frames, ${r.tflop.toFixed(3)} TFLOP: ${r.decode.seconds.toFixed(2)} s, ${r.decode.framesPerSecond.toFixed(2)} frames/s, ${r.decode.gflops.toFixed(1)} GFLOP/s` +
          `\n    ${v.count} convolutions: engine ${v.engineSeconds.toFixed(2)} s; baseline sgemm ${v.baselineGemmSeconds.toFixed(2)} s (+ im2col ${v.baselineIm2colSeconds.toFixed(2)} s); ratio ${v.ratio.toFixed(2)}; max rel diff ${v.maxRelError.toExponential(2)}`,
      );
    }
  }
  return report;
}
