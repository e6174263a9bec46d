/**
 * The op case table shared by the TypeScript conformance suites and the native driver
 * (libs/engine/check/cases.json; its "about" field describes the format). This module loads and
 * checks it and draws a case's inputs; the native driver (libs/engine/check/cases.cc) does the
 * same in C++ with a port of the same generator, so both see the same numbers. How to add an op's
 * cases (and its driver reference): docs/cuda.md, "Adding an op".
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { OPS, OP_NAMES, type CudaStorage, type OpName } from '@longshot/engine';
import { Rng } from '@longshot/random';

export const CASES_PATH = path.resolve(__dirname, '../../libs/engine/check/cases.json');

/** After drawing, the last `last` elements of every run of `every` (a size expression) are set to `value`. */
export interface Tail {
  every: string;
  last: number;
  value: number;
}
type Drawn = ({ normal: number; mean?: number } | { fanIn: number } | { uniform: [number, number] } | { values: number[] } | { ids: string }) & { tail?: Tail };
export type InputSpec = null | 'normal' | Drawn;

export interface OpCase {
  op: OpName;
  label: string;
  params: number[];
  /** One spec per input slot. */
  specs: InputSpec[];
  /** Element count of every slot, from the op's size expressions. */
  sizes: number[];
  /** Draws the inputs (fresh arrays) from Rng.from('conformance', op, label). */
  inputs(): (Float32Array | null)[];
}

interface TableOp {
  inputs: string[];
  f32Inputs?: string[];
  cases: { label: string; params: number[]; inputs: InputSpec[]; why?: string }[];
}

const paramName = (p: string): string => p.replace(/ \(float\)$/, '');

/** Evaluates a product of param names and integers ("batch*keys*heads*headDim", "2*n"). */
function evalSize(expr: string, names: readonly string[], params: readonly number[], where: string): number {
  let n = 1;
  for (const factor of expr.split('*').map((f) => f.trim())) {
    if (/^\d+$/.test(factor)) n *= Number(factor);
    else {
      const i = names.indexOf(factor);
      if (i < 0) throw new Error(`${where}: size '${expr}' names '${factor}', which is not a param (${names.join(', ')})`);
      n *= params[i];
    }
  }
  return n;
}

/** `size` evaluates a size expression of the case (param names and integers). */
function draw(rng: Rng, spec: InputSpec, n: number, size: (expr: string) => number, where: string): Float32Array | null {
  if (spec === null) return null;
  if (spec === 'normal') return rng.fillNormal(new Float32Array(n), 1);
  const a = drawValues(rng, spec, n, size, where);
  if (spec.tail) {
    const every = size(spec.tail.every);
    if (!(every > 0) || spec.tail.last > every || n % every !== 0) throw new Error(`${where}: tail ${JSON.stringify(spec.tail)} does not fit ${n} elements`);
    for (let row = 0; row < n; row += every) for (let i = every - spec.tail.last; i < every; i++) a[row + i] = spec.tail.value;
  }
  return a;
}

function drawValues(rng: Rng, spec: Drawn, n: number, size: (expr: string) => number, where: string): Float32Array {
  if ('normal' in spec || 'fanIn' in spec) {
    const std = 'fanIn' in spec ? 1 / Math.sqrt(spec.fanIn) : spec.normal;
    const a = rng.fillNormal(new Float32Array(n), std);
    const mean = 'mean' in spec ? (spec.mean ?? 0) : 0;
    if (mean !== 0) for (let i = 0; i < n; i++) a[i] += mean;
    return a;
  }
  if ('uniform' in spec) {
    const [lo, hi] = spec.uniform;
    return Float32Array.from({ length: n }, () => lo + (hi - lo) * rng.uniform());
  }
  if ('values' in spec) {
    if (spec.values.length !== n) throw new Error(`${where}: ${spec.values.length} values given, the slot holds ${n}`);
    return Float32Array.from(spec.values);
  }
  if ('ids' in spec) {
    // The last id of the table, then 0, then uniform ones (repeats included).
    const vocab = size(spec.ids);
    if (!(vocab > 0)) throw new Error(`${where}: ids into an empty table`);
    return Float32Array.from({ length: n }, (_, i) => (i === 0 ? vocab - 1 : i === 1 ? 0 : Math.floor(rng.uniform() * vocab)));
  }
  throw new Error(`${where}: unknown input spec ${JSON.stringify(spec)}`);
}

function load(): { cases: Record<OpName, OpCase[]>; f32Inputs: Record<OpName, number[]> } {
  const table = JSON.parse(fs.readFileSync(CASES_PATH, 'utf8')) as { ops: Record<string, TableOp> };
  const unknown = Object.keys(table.ops).filter((op) => !(op in OPS));
  if (unknown.length) throw new Error(`${CASES_PATH}: unknown ops ${unknown.join(', ')}`);
  const cases = {} as Record<OpName, OpCase[]>;
  const f32Inputs = {} as Record<OpName, number[]>;
  for (const op of OP_NAMES) {
    const entry = table.ops[op];
    const spec = OPS[op];
    const slots = spec.inputs.map((s) => s.replace(/\?$/, ''));
    const names = spec.params.map(paramName);
    if (!entry || !entry.cases?.length) throw new Error(`${CASES_PATH}: op '${op}' has no cases`);
    if (entry.inputs.length !== slots.length) throw new Error(`${CASES_PATH}: ${op} gives ${entry.inputs.length} input sizes, the op has ${slots.length} slots`);
    f32Inputs[op] = (entry.f32Inputs ?? []).map((name) => {
      const i = slots.indexOf(name);
      if (i < 0) throw new Error(`${CASES_PATH}: ${op} f32Inputs names '${name}', not an input slot`);
      return i;
    });
    const labels = new Set<string>();
    cases[op] = entry.cases.map((c) => {
      const where = `${CASES_PATH}: ${op} '${c.label}'`;
      if (labels.has(c.label)) throw new Error(`${where}: duplicate label`);
      labels.add(c.label);
      if (c.params.length !== names.length) throw new Error(`${where}: ${c.params.length} params, the op has ${names.length}`);
      if (c.inputs.length !== slots.length) throw new Error(`${where}: ${c.inputs.length} input specs, the op has ${slots.length} slots`);
      c.inputs.forEach((s, i) => {
        if (s === null && !spec.inputs[i].endsWith('?')) throw new Error(`${where}: slot '${slots[i]}' is not optional`);
      });
      const sizes = entry.inputs.map((e) => evalSize(e, names, c.params, where));
      return {
        op,
        label: c.label,
        params: c.params,
        specs: c.inputs,
        sizes,
        inputs: () => {
          const rng = Rng.from('conformance', op, c.label);
          return c.inputs.map((s, i) => draw(rng, s, sizes[i], (expr) => evalSize(expr, names, c.params, where), where));
        },
      };
    });
  }
  return { cases, f32Inputs };
}

const loaded = load();

/** Every op's cases, in table order. */
export const OP_CASES: Readonly<Record<OpName, readonly OpCase[]>> = loaded.cases;

/** Input slots of `op` the CUDA backend keeps in float32 in every storage. */
export function f32Inputs(op: OpName): readonly number[] {
  return loaded.f32Inputs[op];
}

/** Round to nearest even at `bits` significand bits (incl. the implicit one), with `minExp` the smallest normal exponent. */
function roundTo(x: number, bits: number, minExp: number, max: number): number {
  if (x === 0 || !Number.isFinite(x)) return x;
  const ax = Math.abs(x);
  let e = Math.floor(Math.log2(ax));
  if (2 ** e > ax) e -= 1; // log2 may round up just below a power of two
  else if (2 ** (e + 1) <= ax) e += 1;
  e = Math.max(e, minExp);
  const ulp = 2 ** (e - (bits - 1));
  const q = x / ulp;
  let r = Math.floor(q);
  const frac = q - r;
  if (frac > 0.5 || (frac === 0.5 && r % 2 !== 0)) r += 1;
  const y = r * ulp;
  return Math.abs(y) > max ? Math.sign(y) * Infinity : y;
}

/**
 * `a` rounded to the CUDA storage type (bfloat16: 8 significand bits; float16: 11, subnormals
 * below 2^-14, overflow above 65504), as a new Float32Array; a copy for f32.
 */
export function roundToStorage(a: Float32Array, storage: CudaStorage): Float32Array {
  if (storage === 'f32') return Float32Array.from(a);
  const [bits, minExp, max] = storage === 'bf16' ? [8, -126, 3.3895313892515355e38] : [11, -14, 65504];
  return Float32Array.from(a, (x) => roundTo(x, bits, minExp, max));
}
