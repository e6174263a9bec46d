import type { SchedulerConfig } from './config';
import type { Schedule } from './schedule';

/**
 * UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
 * Diffusion Models") in the form diffusers' UniPCMultistepScheduler runs it for flow-matching
 * models: data prediction (x0 = x - sigma v), alpha = 1 - sigma, lambda = log(alpha / sigma), a
 * B(h) variant, and a warm-up from order 1. Every step is a linear combination of a handful of
 * tensors with scalar coefficients; this module computes those coefficients in float64 and
 * rounds them to float32 (what the engine's `axpy` op receives), so the tensor work stays in the
 * engine and every caller applies the same bits.
 */

/** The solver history one block carries between its steps (its "sampler state"). */
export interface SolverHistory {
  /** x0 predictions of the last steps, oldest first: at most `solverOrder` of them. */
  readonly modelOutputs: readonly Float32Array[];
  /** The corrected sample the last predictor started from; null before the first step. */
  readonly lastSample: Float32Array | null;
  /** diffusers' `lower_order_nums`: steps of multistep warm-up taken, capped at solverOrder. */
  readonly lowerOrderNums: number;
  /** diffusers' `this_order`: the order of the last predictor (0 before the first step). */
  readonly lastOrder: number;
}

/** Coefficients of `out = a * base + sum_j outputs[j] * history[j] + current * x0` (history oldest first). */
export interface Combination {
  readonly base: number;
  readonly outputs: readonly number[];
  readonly current: number;
}

export interface UniPcStep {
  /** x0 = sample + x0FromVelocity * velocity (= -sigma, float32). */
  readonly x0FromVelocity: number;
  /** UniC: the corrected sample from the last sample (base), the stored outputs and x0; null when skipped. */
  readonly corrector: Combination | null;
  /** UniP: the next sample from the corrected sample (base), the stored outputs and x0. */
  readonly predictor: Combination;
  /** Counters of the history after this step. */
  readonly lowerOrderNums: number;
  readonly order: number;
}

const lambdaOf = (sigma: number): number => Math.log(1 - sigma) - Math.log(sigma);

/** Order of the predictor of step `step` (diffusers' this_order). */
export function predictorOrder(config: SchedulerConfig, steps: number, step: number, lowerOrderNums: number): number {
  const cap = config.lowerOrderFinal ? Math.min(config.solverOrder, steps - step) : config.solverOrder;
  return Math.min(cap, lowerOrderNums + 1);
}

/** The history counters a block has before step `step` (they depend on nothing else). */
export function historyCountersAt(config: SchedulerConfig, steps: number, step: number): { outputs: number; lowerOrderNums: number; lastOrder: number; lastSample: boolean } {
  if (config.kind !== 'unipc' || step === 0) return { outputs: 0, lowerOrderNums: 0, lastOrder: 0, lastSample: false };
  let lower = 0;
  let order = 0;
  for (let i = 0; i < step; i++) {
    order = predictorOrder(config, steps, i, lower);
    lower = Math.min(lower + 1, config.solverOrder);
  }
  return { outputs: Math.min(step, config.solverOrder), lowerOrderNums: lower, lastOrder: order, lastSample: true };
}

/**
 * The B(h) terms shared by UniP and UniC: for rks (the last is 1), hh = -h,
 * returns h*phi_1, B(h) and the right-hand side b_k = h phi_{k+1}(h) k! / B(h) of the order
 * conditions sum_j rho_j rk_j^(k-1) = b_k.
 */
function bhTerms(config: SchedulerConfig, h: number, order: number): { hPhi1: number; Bh: number; b: number[] } {
  const hh = -h;
  const hPhi1 = Math.expm1(hh);
  const Bh = config.solverType === 'bh1' ? hh : Math.expm1(hh);
  const b: number[] = [];
  let hPhiK = hPhi1 / hh - 1;
  let factorial = 1;
  for (let k = 1; k <= order; k++) {
    b.push((hPhiK * factorial) / Bh);
    factorial *= k + 1;
    hPhiK = hPhiK / hh - 1 / factorial;
  }
  return { hPhi1, Bh, b };
}

/** Solves R rho = b with R[k][j] = rks[j]^k (a Vandermonde system), Gaussian elimination in float64. */
function solveVandermonde(rks: readonly number[], b: readonly number[]): number[] {
  const n = rks.length;
  const a = Array.from({ length: n }, (_, k) => [...rks.map((r) => r ** k), b[k]]);
  for (let col = 0; col < n; col++) {
    let pivot = col;
    for (let r = col + 1; r < n; r++) if (Math.abs(a[r][col]) > Math.abs(a[pivot][col])) pivot = r;
    [a[col], a[pivot]] = [a[pivot], a[col]];
    for (let r = col + 1; r < n; r++) {
      const f = a[r][col] / a[col][col];
      for (let c = col; c <= n; c++) a[r][c] -= f * a[col][c];
    }
  }
  const x = new Array<number>(n).fill(0);
  for (let r = n - 1; r >= 0; r--) {
    let s = a[r][n];
    for (let c = r + 1; c < n; c++) s -= a[r][c] * x[c];
    x[r] = s / a[r][r];
  }
  return x;
}

/**
 * The coefficients of UniPC step `step` for a block whose history holds `counters`. Stored
 * outputs are indexed oldest first; `outputs.length` of each combination equals the history's.
 */
export function unipcStep(config: SchedulerConfig, schedule: Schedule, step: number, counters: { outputs: number; lowerOrderNums: number; lastOrder: number; lastSample: boolean }): UniPcStep {
  const sig = schedule.sigmas;
  const steps = schedule.timesteps.length;
  if (!Number.isInteger(step) || step < 0 || step >= steps) throw new RangeError(`step ${step} is outside 0..${steps - 1}`);
  const n = counters.outputs;
  const f = Math.fround;
  // History index of the output j steps back (j = 1 is the newest stored one).
  const back = (j: number) => n - j;

  let corrector: Combination | null = null;
  if (step > 0 && counters.lastSample && !config.disableCorrector.includes(step - 1)) {
    const p = counters.lastOrder;
    if (p < 1 || p > n) throw new RangeError(`step ${step}: corrector of order ${p} needs ${p} stored outputs, the history has ${n}`);
    const sT = sig[step];
    const sS0 = sig[step - 1];
    const aT = 1 - sT;
    const lS0 = lambdaOf(sS0);
    const h = lambdaOf(sT) - lS0;
    const rks: number[] = [];
    for (let j = 1; j < p; j++) rks.push((lambdaOf(sig[step - (j + 1)]) - lS0) / h);
    rks.push(1);
    const { hPhi1, Bh, b } = bhTerms(config, h, p);
    const rhos = p === 1 ? [0.5] : solveVandermonde(rks, b);
    const outputs = new Array<number>(n).fill(0);
    // D1_j = (m_j - m0) / rk_j and D1_t = (x0 - m0); m0 is the newest stored output.
    let m0 = -aT * hPhi1 + aT * Bh * rhos[p - 1];
    for (let j = 1; j < p; j++) {
      outputs[back(j + 1)] += -aT * Bh * (rhos[j - 1] / rks[j - 1]);
      m0 += aT * Bh * (rhos[j - 1] / rks[j - 1]);
    }
    outputs[back(1)] += m0;
    corrector = { base: f(sT / sS0), outputs: outputs.map(f), current: f(-aT * Bh * rhos[p - 1]) };
  }

  const q = predictorOrder(config, steps, step, counters.lowerOrderNums);
  if (q - 1 > n) throw new RangeError(`step ${step}: predictor of order ${q} needs ${q - 1} stored outputs, the history has ${n}`);
  const sT = sig[step + 1];
  const sS0 = sig[step];
  const aT = 1 - sT;
  const lS0 = lambdaOf(sS0);
  const h = lambdaOf(sT) - lS0;
  const outputs = new Array<number>(n).fill(0);
  let current: number;
  if (q === 1) {
    current = -aT * Math.expm1(-h);
  } else {
    const rks: number[] = [];
    for (let j = 1; j < q; j++) rks.push((lambdaOf(sig[step - j]) - lS0) / h);
    rks.push(1);
    const { hPhi1, Bh, b } = bhTerms(config, h, q);
    const rhos = q === 2 ? [0.5] : solveVandermonde(rks.slice(0, -1), b.slice(0, -1));
    current = -aT * hPhi1;
    // The predictor's own x0 is m0 here; stored output j back is its m_j.
    for (let j = 1; j < q; j++) {
      outputs[back(j)] += -aT * Bh * (rhos[j - 1] / rks[j - 1]);
      current += aT * Bh * (rhos[j - 1] / rks[j - 1]);
    }
  }
  return {
    x0FromVelocity: f(-sS0),
    corrector,
    predictor: { base: f(sT / sS0), outputs: outputs.map(f), current: f(current) },
    lowerOrderNums: Math.min(counters.lowerOrderNums + 1, config.solverOrder),
    order: q,
  };
}
