/**
 * Float64 reference of UniPC multistep (Zhao et al. 2023) as diffusers' UniPCMultistepScheduler
 * runs it for a flow-prediction model (predict_x0, B(h) variants). Written from the paper's
 * update rules and diffusers' structure, tensor by tensor: convert the model output to x0, run
 * UniC on the previous predictor's result, shift the history, run UniP. Nothing here comes from
 * libs/sampler: it builds the order-condition system and solves it generally, keeps divided
 * differences D1 as tensors, and never folds the update into per-tensor coefficients.
 */

export interface ReferenceUniPcConfig {
  readonly solverOrder: number;
  readonly solverType: 'bh1' | 'bh2';
  readonly lowerOrderFinal: boolean;
}

type T = Float64Array;

const axpby = (a: number, x: T, b: number, y: T): T => x.map((v, i) => a * v + b * y[i]);
const scaled = (a: number, x: T): T => x.map((v) => a * v);
const add = (...xs: T[]): T => xs.reduce((acc, x) => acc.map((v, i) => v + x[i]));

/** Solves A z = r by Gauss-Jordan elimination with partial pivoting. */
function solve(A: number[][], r: number[]): number[] {
  const n = r.length;
  const m = A.map((row, i) => [...row, r[i]]);
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let i = c + 1; i < n; i++) if (Math.abs(m[i][c]) > Math.abs(m[p][c])) p = i;
    [m[c], m[p]] = [m[p], m[c]];
    for (let i = 0; i < n; i++) {
      if (i === c) continue;
      const f = m[i][c] / m[c][c];
      for (let k = c; k <= n; k++) m[i][k] -= f * m[c][k];
    }
  }
  return m.map((row, i) => row[n] / row[i]);
}

export class ReferenceUniPc {
  private readonly outputs: (T | null)[];
  private lastSample: T | null = null;
  private lowerOrderNums = 0;
  private thisOrder = 0;
  private index = 0;

  /** `sigmas`: the steps' sigmas and the one after the last step (flow matching: alpha = 1 - sigma). */
  constructor(
    private readonly config: ReferenceUniPcConfig,
    private readonly sigmas: readonly number[],
  ) {
    this.outputs = new Array<T | null>(config.solverOrder).fill(null);
  }

  private lambda(i: number): number {
    const s = this.sigmas[i];
    return Math.log(1 - s) - Math.log(s);
  }

  /** Right-hand sides of the order conditions, b_k = k! h phi_{k+1}(h) / B(h) for hh = -h. */
  private bh(h: number, order: number): { hPhi1: number; B: number; b: number[] } {
    const hh = -h;
    const hPhi1 = Math.expm1(hh);
    const B = this.config.solverType === 'bh1' ? hh : Math.expm1(hh);
    const b: number[] = [];
    let phi = hPhi1 / hh - 1; // h phi_2 scaled as in the paper's recursion
    let fact = 1;
    for (let k = 1; k <= order; k++) {
      b.push((phi * fact) / B);
      fact *= k + 1;
      phi = phi / hh - 1 / fact;
    }
    return { hPhi1, B, b };
  }

  /** UniP-p from sample x at step index i to i + 1, with m0 = the newest stored output. */
  private predictor(x: T, order: number): T {
    const i = this.index;
    const m = this.outputs;
    const m0 = m[m.length - 1]!;
    const aT = 1 - this.sigmas[i + 1];
    const h = this.lambda(i + 1) - this.lambda(i);
    const rks: number[] = [];
    const D1: T[] = [];
    for (let k = 1; k < order; k++) {
      const rk = (this.lambda(i - k) - this.lambda(i)) / h;
      rks.push(rk);
      D1.push(scaled(1 / rk, axpby(1, m[m.length - 1 - k]!, -1, m0)));
    }
    rks.push(1);
    const { hPhi1, B, b } = this.bh(h, order);
    let out = add(scaled(this.sigmas[i + 1] / this.sigmas[i], x), scaled(-aT * hPhi1, m0));
    if (D1.length > 0) {
      // diffusers fixes rho = 1/2 for order 2; higher orders solve the conditions without the last.
      const R = Array.from({ length: order - 1 }, (_, k) => rks.slice(0, order - 1).map((r) => r ** k));
      const rhos = order === 2 ? [0.5] : solve(R, b.slice(0, order - 1));
      out = add(out, ...D1.map((d, k) => scaled(-aT * B * rhos[k], d)));
    }
    return out;
  }

  /** UniC-p: corrects the model's input sample at step index i with its x0 prediction. */
  private corrector(x0: T, last: T, order: number): T {
    const i = this.index;
    const m = this.outputs;
    const m0 = m[m.length - 1]!;
    const aT = 1 - this.sigmas[i];
    const h = this.lambda(i) - this.lambda(i - 1);
    const rks: number[] = [];
    const D1: T[] = [];
    for (let k = 1; k < order; k++) {
      const rk = (this.lambda(i - 1 - k) - this.lambda(i - 1)) / h;
      rks.push(rk);
      D1.push(scaled(1 / rk, axpby(1, m[m.length - 1 - k]!, -1, m0)));
    }
    rks.push(1);
    const { hPhi1, B, b } = this.bh(h, order);
    const R = Array.from({ length: order }, (_, k) => rks.map((r) => r ** k));
    const rhos = order === 1 ? [0.5] : solve(R, b);
    const Dt = axpby(1, x0, -1, m0);
    return add(
      scaled(this.sigmas[i] / this.sigmas[i - 1], last),
      scaled(-aT * hPhi1, m0),
      ...D1.map((d, k) => scaled(-aT * B * rhos[k], d)),
      scaled(-aT * B * rhos[order - 1], Dt),
    );
  }

  /** One step: the model's velocity at `sample` (step index as counted by this object). */
  step(velocity: T, sample: T): T {
    const steps = this.sigmas.length - 1;
    const x0 = axpby(1, sample, -this.sigmas[this.index], velocity);
    let x = sample;
    if (this.index > 0 && this.lastSample) x = this.corrector(x0, this.lastSample, this.thisOrder);
    this.outputs.shift();
    this.outputs.push(x0);
    const cap = this.config.lowerOrderFinal ? Math.min(this.config.solverOrder, steps - this.index) : this.config.solverOrder;
    this.thisOrder = Math.min(cap, this.lowerOrderNums + 1);
    this.lastSample = x;
    const next = this.predictor(x, this.thisOrder);
    this.lowerOrderNums = Math.min(this.lowerOrderNums + 1, this.config.solverOrder);
    this.index++;
    return next;
  }
}
