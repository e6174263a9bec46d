/**
 * Stage fixtures for the native driver (libs/engine/check): the op graphs libs/model's `Stage`
 * builds for one block-step, recorded through a backend that only records, and written as JSON
 * the driver runs without Node (format: libs/engine/check/fixture.h). The graph is the Stage's
 * own, so there is no second builder to keep in step: test/native/native-check.test.ts
 * regenerates every fixture and fails when a checked-in one is stale
 * (`npm run check:fixtures` rewrites them).
 *
 * A fixture does not carry weights: each buffer a graph reads before writing it says how it is
 * drawn (seeded normals through libs/random's Rng, which the driver ports bit for bit; constants;
 * or a few literal values), so even the 1.3B stage fits in kilobytes.
 *
 * - `small`: the conformance window, a head+tail stage holding all 8 layers of the `small` model
 *   with a prefix frame, two own frames and the successor's cached K/V, weights perturbed like
 *   the conformance suites' (testWeights). CUDA vs CPU in the driver.
 * - `wan2.1-t2v-1.3b`: the GPU benchmark's middle stage (bench/gpu-stage.ts), timed on CUDA
 *   against bench/gpu_pytorch.py.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Backend, OpNode } from '@longshot/engine';
import { Stage, getConfig, weightSpecs, type BlockStep, type ModelConfig, type StageRange } from '@longshot/model';
import { Rng } from '@longshot/random';
import { GPU_STAGE, GPU_STAGE_RANGE, gpuStageShape, gpuStageStep, pytorchArgs } from '../../bench/gpu-stage';

export const FIXTURE_DIR = path.resolve(__dirname, '../../libs/engine/check');

/** How a buffer's initial values are drawn (the driver implements the same three forms). */
export type Init = { rng: (string | number)[]; normal: number; mean?: number } | { fill: number } | { values: number[] };

/** A stage block-step with every input it reads described by name, size and draw. */
export interface StageWindow {
  /** Fixture file: stage-<name>.json. */
  name: string;
  config: ModelConfig;
  range: StageRange;
  step: BlockStep;
  guidance: number;
  /** Named inputs: weights by their names, and 'text.cond', 'text.uncond', 'input', 'successor.k.<l>', 'successor.v.<l>'. */
  inputs: Map<string, { size: number; init: Init | null }>;
  /** Extra top-level fixture fields (the benchmark's settings). */
  extra?: Record<string, unknown>;
}

export const SMALL_SEED = 1234;

function weightInputs(config: ModelConfig, range: StageRange, seed: number, perturb: boolean): Map<string, { size: number; init: Init | null }> {
  const m = new Map<string, { size: number; init: Init | null }>();
  for (const spec of weightSpecs(config, range)) {
    const size = spec.shape.reduce((a, b) => a * b, 1);
    let init: Init | null;
    if (spec.init === 'normal' || spec.init === 'table') init = { rng: [seed, 'weights', spec.name], normal: 1 / Math.sqrt(spec.fanIn!) };
    // testWeights (test/reference/weights.ts): norm weights and biases made random around 1 and 0.
    else if (perturb) init = spec.init === 'ones' ? { rng: [seed, 'perturb', spec.name], normal: 0.2, mean: 1 } : { rng: [seed, 'perturb', spec.name], normal: 0.2 };
    else init = spec.init === 'ones' ? { fill: 1 } : null;
    m.set(spec.name, { size, init });
  }
  return m;
}

function activationInputs(config: ModelConfig, range: StageRange, step: BlockStep, key: (name: string) => (string | number)[], m: Map<string, { size: number; init: Init | null }>): void {
  const hw = (step.height / 2) * (step.width / 2);
  const frames = step.prefixFrames + step.ownFrames;
  const normal = (name: string): Init => ({ rng: key(name), normal: 1 });
  for (const t of ['text.cond', 'text.uncond']) m.set(t, { size: config.textLen * config.textDim, init: normal(t) });
  m.set('input', { size: range.head ? config.latentChannels * frames * step.height * step.width : 2 * frames * hw * config.dim, init: normal('input') });
  for (let l = 0; l < range.l1 - range.l0; l++) {
    for (const kv of ['k', 'v']) m.set(`successor.${kv}.${l}`, { size: 2 * step.contextFrames * hw * config.dim, init: normal(`successor.${kv}.${l}`) });
  }
}

/** The conformance window: `small`, all layers, head and tail, prefix + own frames + successor K/V. */
export function smallWindow(): StageWindow {
  const config = getConfig('small');
  const range: StageRange = { l0: 0, l1: config.layers, head: true, tail: true };
  // A 6x8 latent grid: 12 tokens per frame, 36 in the window plus 12 extra keys, so attention
  // crosses the CUDA kernel's 32-key and 32-query tiles.
  const step: BlockStep = { iteration: 4, block: 1, step: 3, timestep: 620, prefixFrames: 1, ownFrames: 2, contextFrames: 1, height: 6, width: 8 };
  const inputs = weightInputs(config, range, SMALL_SEED, true);
  activationInputs(config, range, step, (name) => [SMALL_SEED, 'fixture', name], inputs);
  return { name: 'small', config, range, step, guidance: 5, inputs };
}

/** The benchmark's window (bench/gpu-stage.ts): seeded weights as `npm run bench -- gpu` uses. */
export function benchWindow(): StageWindow {
  const config = getConfig(GPU_STAGE.model);
  const range = GPU_STAGE_RANGE;
  const step = gpuStageStep(0);
  const inputs = weightInputs(config, range, 0, false);
  activationInputs(config, range, step, (name) => [0, 'gpu bench', name], inputs);
  return {
    name: GPU_STAGE.model,
    config,
    range,
    step,
    guidance: GPU_STAGE.guidance,
    inputs,
    extra: {
      shape: gpuStageShape(),
      bench: { storage: GPU_STAGE.storage, warmup: GPU_STAGE.warmup, reps: GPU_STAGE.reps },
      pytorch: pytorchArgs(config),
    },
  };
}

export const WINDOWS: Readonly<Record<string, () => StageWindow>> = { small: smallWindow, [GPU_STAGE.model]: benchWindow };

export const fixturePath = (name: string): string => path.join(FIXTURE_DIR, `stage-${name}.json`);

/** The values an init draws, with libs/random (what the driver computes in C++). */
export function materialize(init: Init | null, size: number): Float32Array {
  const a = new Float32Array(size);
  if (!init) return a;
  if ('rng' in init) {
    Rng.from(...init.rng).fillNormal(a, init.normal);
    if (init.mean) for (let i = 0; i < size; i++) a[i] += init.mean;
  } else if ('fill' in init) {
    a.fill(init.fill);
  } else {
    a.set(init.values);
  }
  return a;
}

/** The stage's inputs: real values (materialize) or, for recording, zeros with a marker. */
export interface WindowArrays {
  weights: Map<string, Float32Array>;
  text: { cond: Float32Array; uncond: Float32Array };
  input: Float32Array;
  successor: { k: Float32Array[]; v: Float32Array[] };
}

export function windowArrays(win: StageWindow, make: (name: string, size: number, init: Init | null) => Float32Array): WindowArrays {
  const get = (name: string): Float32Array => {
    const e = win.inputs.get(name);
    if (!e) throw new Error(`window ${win.name}: no input ${name}`);
    return make(name, e.size, e.init);
  };
  const weights = new Map<string, Float32Array>();
  for (const spec of weightSpecs(win.config, win.range)) weights.set(spec.name, get(spec.name));
  const layers = win.range.l1 - win.range.l0;
  return {
    weights,
    text: { cond: get('text.cond'), uncond: get('text.uncond') },
    input: get('input'),
    successor: { k: Array.from({ length: layers }, (_, l) => get(`successor.k.${l}`)), v: Array.from({ length: layers }, (_, l) => get(`successor.v.${l}`)) },
  };
}

/** A Stage over `arrays` on `backend` with the successor's cache in place; returns forward's promise. */
export function runWindow(win: StageWindow, arrays: WindowArrays, backend: Backend): { stage: Stage; output: Promise<Float32Array> } {
  const stage = new Stage({ config: win.config, range: win.range, weights: arrays.weights, backend, text: arrays.text, guidance: win.guidance });
  stage.kvCache = { iteration: win.step.iteration, block: win.step.block + 1, k: arrays.successor.k, v: arrays.successor.v };
  return { stage, output: stage.forward(win.step, arrays.input) };
}

/** A backend that only records the graphs it is asked to run. */
class Recorder implements Backend {
  readonly name = 'recorder';
  readonly graphs: OpNode[][] = [];
  /** Records anything: it never runs a node. */
  supportsOp(): boolean {
    return true;
  }
  run(nodes: readonly OpNode[]): Promise<void> {
    this.graphs.push([...nodes]);
    return Promise.resolve();
  }
  runSync(nodes: readonly OpNode[]): void {
    this.graphs.push([...nodes]);
  }
}

const GRAPH_NAMES = ['cross-attention', 'forward'];
/** Graph inputs the stage creates itself (the timestep) are stored literally up to this size. */
const LITERAL_LIMIT = 16;
const MARK = 1234567.5;

/** Records `win`'s graphs and returns the fixture as JSON text (stable: the staleness test compares it). */
export async function buildFixture(win: StageWindow): Promise<string> {
  // Zeros, with two marker values in front: a copy the stage makes of an input (Float32Array
  // slice) is recognised by them. Untouched zero pages cost nothing, even for the 1.3B stage.
  const named: { name: string; array: Float32Array; init: Init | null }[] = [];
  const arrays = windowArrays(win, (name, size, init) => {
    const a = new Float32Array(size);
    if (size >= 2) {
      a[0] = MARK;
      a[1] = named.length;
    }
    named.push({ name, array: a, init });
    return a;
  });
  const recorder = new Recorder();
  const { stage, output } = runWindow(win, arrays, recorder);
  const out = await output;
  if (recorder.graphs.length !== GRAPH_NAMES.length) throw new Error(`window ${win.name}: the stage ran ${recorder.graphs.length} graphs, expected ${GRAPH_NAMES.length} (${GRAPH_NAMES.join(', ')})`);

  const byBuffer = new Map<ArrayBufferLike, { name: string; init: Init | null }>();
  for (const n of named) {
    if (n.array.byteOffset !== 0 || n.array.length * 4 !== n.array.buffer.byteLength) throw new Error(`window ${win.name}: input ${n.name} is a view`);
    byBuffer.set(n.array.buffer, n);
  }
  const ids = new Map<ArrayBufferLike, number>();
  const buffers: { name?: string; size: number; init?: Init }[] = [];
  const firstIsRead = new Map<number, boolean>();
  const id = (a: Float32Array): number => {
    let i = ids.get(a.buffer);
    if (i === undefined) {
      i = buffers.length;
      ids.set(a.buffer, i);
      buffers.push({ size: a.buffer.byteLength / 4 });
    }
    return i;
  };
  const view = (a: Float32Array): [number, number, number] => [id(a), a.byteOffset / 4, a.length];
  const graphs = recorder.graphs.map((nodes, g) => ({
    name: GRAPH_NAMES[g],
    nodes: nodes.map((n) => {
      const inputs = n.inputs.map((t) => {
        if (!t) return null;
        const v = view(t);
        if (!firstIsRead.has(v[0])) firstIsRead.set(v[0], true);
        return v;
      });
      const output = view(n.output);
      if (!firstIsRead.has(output[0])) firstIsRead.set(output[0], false);
      return [n.op, inputs, output, n.params] as const;
    }),
  }));

  // Initial values of every buffer a graph reads before writing it.
  for (const [buffer, i] of ids) {
    const known = byBuffer.get(buffer);
    const b = buffers[i];
    if (known) {
      b.name = known.name;
      if (known.init) b.init = known.init;
      continue;
    }
    if (!firstIsRead.get(i)) continue; // written first: scratch, zeros
    const a = new Float32Array(buffer as ArrayBuffer);
    const copied = a.length >= 2 && a[0] === MARK ? named[a[1]] : undefined;
    if (copied && copied.array.length === a.length) {
      b.name = `${copied.name} (copy)`;
      if (copied.init) b.init = copied.init;
    } else if (a.length <= LITERAL_LIMIT) {
      b.name = 'literal';
      b.init = { values: Array.from(a) };
    } else {
      throw new Error(`window ${win.name}: buffer ${i} (${a.length} values) is read before it is written but is no known input`);
    }
  }

  const outputs = [{ name: win.range.tail ? 'velocity' : 'hidden', view: view(out) }];
  const cache = stage.kvCache;
  if (!cache) throw new Error(`window ${win.name}: no K/V cache after the forward`);
  cache.k.forEach((k, l) => outputs.push({ name: `kv.k.${l}`, view: view(k) }));
  cache.v.forEach((v, l) => outputs.push({ name: `kv.v.${l}`, view: view(v) }));

  const j = (x: unknown): string => JSON.stringify(x);
  const head = {
    format: 'longshot-stage-fixture/1',
    about: 'Generated by test/native/stage-fixture.ts from libs/model Stage (npm run check:fixtures); do not edit.',
    model: win.config,
    range: win.range,
    step: win.step,
    guidance: win.guidance,
    ...(win.extra ?? {}),
  };
  const lines = ['{'];
  for (const [k, v] of Object.entries(head)) lines.push(`  ${j(k)}: ${j(v)},`);
  lines.push('  "buffers": [');
  buffers.forEach((b, i) => lines.push(`    ${j(b)}${i + 1 < buffers.length ? ',' : ''}`));
  lines.push('  ],');
  lines.push('  "graphs": [');
  graphs.forEach((g, gi) => {
    lines.push(`    { "name": ${j(g.name)}, "nodes": [`);
    g.nodes.forEach((n, i) => lines.push(`      ${j(n)}${i + 1 < g.nodes.length ? ',' : ''}`));
    lines.push(`    ] }${gi + 1 < graphs.length ? ',' : ''}`);
  });
  lines.push('  ],');
  lines.push('  "outputs": [');
  outputs.forEach((o, i) => lines.push(`    ${j(o)}${i + 1 < outputs.length ? ',' : ''}`));
  lines.push('  ]');
  lines.push('}');
  return `${lines.join('\n')}\n`;
}

/** Writes every fixture (npm run check:fixtures). */
export async function writeFixtures(): Promise<string[]> {
  const written: string[] = [];
  for (const make of Object.values(WINDOWS)) {
    const win = make();
    fs.writeFileSync(fixturePath(win.name), await buildFixture(win));
    written.push(fixturePath(win.name));
  }
  return written;
}

if (require.main === module) {
  writeFixtures().then(
    (files) => files.forEach((f) => console.log(`wrote ${path.relative(process.cwd(), f)} (${fs.statSync(f).size} bytes)`)),
    (e: unknown) => {
      console.error(e);
      process.exit(1);
    },
  );
}
