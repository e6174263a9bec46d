/**
 * The native driver (libs/engine/check, built by CMake) through the one command a GPU machine
 * runs, `bash deploy/gpu-check.sh OUT`, so neither can rot on machines without a GPU:
 * - it builds (incrementally) and its CPU conformance passes: every case of the shared table on
 *   every SIMD level against its own float64 reference, drawing the very inputs the TypeScript
 *   suites draw (same digest);
 * - without a device, every CUDA case (ops, stage window, benchmark) is reported as skipped, with
 *   the reason; with one, they must pass;
 * - its CPU run of the `small` stage fixture is bit-identical to libs/model's Stage on the same
 *   weights, and the checked-in fixtures are what the Stage builds today;
 * - what the command needs on a GPU machine travels within 10 MiB, without node_modules.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { OP_NAMES, cpuBackend, engineInfo } from '@longshot/engine';
import { OP_CASES } from '../reference/cases';
import { WINDOWS, buildFixture, fixturePath, materialize, runWindow, smallWindow, windowArrays } from './stage-fixture';

const ROOT = path.resolve(__dirname, '../..');
const SCRIPT = path.join(ROOT, 'deploy/gpu-check.sh');
/** Where gpu-check.sh builds the driver (LONGSHOT_CHECK_BUILD overrides it, as for the script). */
const DRIVER = path.join(process.env.LONGSHOT_CHECK_BUILD ?? path.join(ROOT, 'build/engine-check'), 'longshot-check');
const cudaUsable = engineInfo().backends.includes('cuda');

interface Conformance {
  check: string;
  ok: boolean;
  error?: string;
  inputs_digest: string;
  cases: number;
  passed: number;
  skipped: number;
  failures: number;
  failed: string[];
  cpu: { simd: string[]; cases: number; failures: number };
  cuda: { built: boolean; usable: boolean; skip_reason?: string; op_cases: number; op_failures: number };
  stage: { cpu: string; cuda: Record<string, number | string>; skip_reason?: string };
  run_hints: { skip_reason?: string; rewritten_uploaded?: boolean; discard_not_copied?: boolean; resident_kept?: boolean };
  row_independence: {
    skip_reason?: string;
    results?: { storage: string; op?: string; k?: number; n?: number; identical: boolean }[];
  };
  worst: Record<string, Record<string, number>>;
}

let out = '';
let run: { status: number | null; stderr: string };
const read = <T>(name: string): T => JSON.parse(fs.readFileSync(path.join(out, name), 'utf8')) as T;

beforeAll(() => {
  out = fs.mkdtempSync(path.join(os.tmpdir(), 'gpu-check-'));
  // On a GPU machine the 1.3B benchmark (minutes, 5 GB of host memory) is left to the command itself.
  const env = { ...process.env, ...(cudaUsable ? { LONGSHOT_GPU_CHECK_BENCH: '0' } : {}) };
  const r = spawnSync('bash', [SCRIPT, out], { cwd: ROOT, encoding: 'utf8', maxBuffer: 16 << 20, env });
  run = { status: r.status, stderr: r.stderr };
}, 900_000);

describe('bash deploy/gpu-check.sh OUT', () => {
  it('builds and exits 0, writing one JSON line per report', () => {
    expect(run.status, `gpu-check.sh failed:\n${run.stderr.slice(-4000)}`).toBe(0);
    const summary = read<{ ok: boolean; conformance_rc: number; bench_rc: number }>('gpu-check.json');
    expect(summary).toMatchObject({ ok: true, conformance_rc: 0, bench_rc: 0, dataplane_rc: 0 });
    for (const f of ['conformance.json', 'bench.json', 'dataplane.json']) expect(fs.readFileSync(path.join(out, f), 'utf8').trim().split('\n')).toHaveLength(1);
  });

  it('runs the data plane\'s device paths where the GPUs are, and says why not elsewhere', () => {
    type Path = { ok?: boolean; skipped?: boolean; skip_reason?: string; gb_per_s?: number; error?: string };
    const d = read<{ check: string; devices: number; nccl_library: string; cuda_ipc: Path; nccl: Path; nccl_join: Path & { why?: string }; ok: boolean }>('dataplane.json');
    expect(d).toMatchObject({ check: 'dataplane', ok: true });
    if (d.devices === 0) {
      expect(d.cuda_ipc.skip_reason).toMatch(/no CUDA device|built without CUDA/);
      expect(d.nccl.skip_reason).toMatch(/needs two|built without CUDA/);
      expect(d.nccl_join.skip_reason).toMatch(/no CUDA device|built without CUDA/);
    } else {
      expect(d.cuda_ipc, d.cuda_ipc.error).toMatchObject({ ok: true });
      if (d.devices >= 2 && !d.nccl.skipped) expect(d.nccl, d.nccl.error).toMatchObject({ ok: true });
      // A peer that never joins costs the stall time, not a thread for good.
      if (!d.nccl_join.skipped) expect(d.nccl_join, d.nccl_join.why).toMatchObject({ ok: true });
    }
    // The library is named either way: its version, or why it could not be loaded.
    expect(d.nccl_library).toMatch(/^NCCL 2\.|libnccl\.so\.2/);
  });

  it('runs every op and case on every CPU SIMD level, with zero failures, on the inputs the TypeScript suites draw', () => {
    const c = read<Conformance>('conformance.json');
    expect(c.failed).toEqual([]);
    expect(c).toMatchObject({ check: 'conformance', ok: true, failures: 0 });
    const tableCases = OP_NAMES.reduce((n, op) => n + OP_CASES[op].length, 0);
    expect(c.cpu.simd).toEqual(engineInfo().simdAvailable);
    expect(c.cpu.cases).toBe(tableCases * c.cpu.simd.length);
    for (const op of OP_NAMES) {
      for (const level of c.cpu.simd) expect(c.worst[op]?.[`cpu:${level}`], `${op} on ${level}`).toBeLessThanOrEqual(1e-4);
    }
    // FNV-1a over every drawn input, as the driver computes it: both draw the same numbers.
    let h = 0x811c9dc5;
    for (const op of OP_NAMES) {
      for (const cs of OP_CASES[op]) {
        for (const t of cs.inputs()) {
          if (!t) continue;
          for (const b of new Uint8Array(t.buffer, t.byteOffset, t.byteLength)) h = Math.imul(h ^ b, 0x01000193) >>> 0;
        }
      }
    }
    expect(c.inputs_digest).toBe(h.toString(16).padStart(8, '0'));
  });

  /**
   * longshot-check's CUDA row-independence cases per storage (check/driver.cc): the linear's
   * shapes (kRowShapes) and one attention.
   */
  const ROW_INDEPENDENCE_CASES = 3 + 1;

  it(cudaUsable ? 'runs the CUDA cases and passes their bounds' : 'reports every CUDA case as skipped, with the reason', () => {
    const c = read<Conformance>('conformance.json');
    const bench = read<{ skipped?: boolean; skip_reason?: string; ratio?: number | null }>('bench.json');
    const tableCases = OP_NAMES.reduce((n, op) => n + OP_CASES[op].length, 0);
    expect(c.cuda.op_cases).toBe(3 * tableCases);
    expect(Object.keys(c.stage.cuda)).toEqual(['cuda:f32', 'cuda:bf16', 'cuda:f16']);
    if (cudaUsable) {
      expect(c.cuda.usable).toBe(true);
      expect(c.cuda.op_failures).toBe(0);
      expect(c.skipped).toBe(0);
      // docs/cuda.md "Pinned GEMMs": every row range of a linear equals the full call's rows.
      expect(c.row_independence.results?.length).toBe(3 * ROW_INDEPENDENCE_CASES);
      expect(c.row_independence.results?.every((x) => x.identical)).toBe(true);
      expect(c.run_hints).toEqual({ rewritten_uploaded: true, discard_not_copied: true, resident_kept: true });
      expect(bench).toMatchObject({ skipped: true, skip_reason: 'LONGSHOT_GPU_CHECK_BENCH=0' });
    } else {
      expect(c.cuda.usable).toBe(false);
      expect(c.cuda.skip_reason).toMatch(/\w+/);
      expect(c.stage.skip_reason).toBe(c.cuda.skip_reason);
      expect(Object.values(c.stage.cuda)).toEqual(['skipped', 'skipped', 'skipped']);
      expect(c.row_independence.skip_reason).toBe(c.cuda.skip_reason);
      expect(c.run_hints.skip_reason).toBe(c.cuda.skip_reason);
      expect(c.skipped).toBe(3 * tableCases + 3 + 3 * ROW_INDEPENDENCE_CASES + 1); // + the run hints case
      expect(c.passed + c.skipped).toBe(c.cases);
      expect(bench).toMatchObject({ skipped: true, skip_reason: c.cuda.skip_reason });
    }
  });

  it("runs the small stage fixture on the CPU bit for bit like libs/model's Stage", async () => {
    const win = smallWindow();
    const arrays = windowArrays(win, (_name, size, init) => materialize(init, size));
    const { stage, output } = runWindow(win, arrays, cpuBackend());
    const want: [string, Float32Array][] = [['velocity', await output]];
    stage.kvCache!.k.forEach((k, l) => want.push([`kv.k.${l}`, k]));
    stage.kvCache!.v.forEach((v, l) => want.push([`kv.v.${l}`, v]));
    for (const [name, a] of want) {
      const file = path.join(out, 'stage-small-cpu', `${name}.f32`);
      const got = fs.readFileSync(file);
      expect(got.equals(Buffer.from(a.buffer, a.byteOffset, a.byteLength)), `${name} differs from the Stage's`).toBe(true);
    }
  });

  it('times a stage graph and merges the PyTorch report (the benchmark path, on the CPU and the small window)', () => {
    // A stand-in for python3 + bench/gpu_pytorch.py: some chatter, then the one-line report.
    const stub = path.join(out, 'pytorch-stub.sh');
    fs.writeFileSync(stub, 'echo "warming up"\necho "{\\"seconds\\": 0.5, \\"runs\\": [0.5], \\"device\\": \\"stub\\", \\"args\\": $1}"\n');
    const r = spawnSync(DRIVER, ['bench', '--fixture', fixturePath('small'), '--backend', 'cpu', '--pytorch', stub, '--python', 'bash'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const b = JSON.parse(r.stdout.trim());
    expect(b).toMatchObject({ check: 'bench', model: 'small', device: 'cpu', pytorch: { seconds: 0.5, device: 'stub', args: {} } });
    expect(b.longshot.seconds).toBeGreaterThan(0);
    expect(b.longshot.runs).toHaveLength(2);
    expect(b.flops.total).toBeGreaterThan(0);
    expect(b.ratio).toBeCloseTo(0.5 / b.longshot.seconds, 2);
    const { attention, gemm, rest } = b.longshot.shares;
    expect(attention).toBeGreaterThan(0);
    expect(gemm).toBeGreaterThan(0);
    expect(attention + gemm + rest).toBeCloseTo(1, 2);
    expect(Object.keys(b.longshot.profile_ms)).toEqual(expect.arrayContaining(['linear', 'attention', 'rope3d']));
  });

  it('validates both stage fixtures node by node without running them', () => {
    const r = spawnSync(DRIVER, ['validate', ...Object.keys(WINDOWS).map(fixturePath)], { encoding: 'utf8' });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    const v = JSON.parse(r.stdout.trim());
    expect(v.fixtures.map((f: { fixture: string }) => f.fixture)).toEqual(Object.keys(WINDOWS).map((n) => `stage-${n}.json`));
    // The 1.3B block-step: 8 layers of 9360 tokens x CFG 2, about 24 TFLOP of GEMMs and attention.
    expect(v.fixtures[1].forward_flops).toBeGreaterThan(2e13);
  });

  it('refuses a case table that misses an op of the engine', () => {
    const table = JSON.parse(fs.readFileSync(path.join(ROOT, 'libs/engine/check/cases.json'), 'utf8'));
    delete table.ops.axpy;
    const file = path.join(out, 'cases-without-axpy.json');
    fs.writeFileSync(file, JSON.stringify(table));
    const r = spawnSync(DRIVER, ['conformance', '--cases', file], { encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(JSON.parse(r.stdout.trim())).toMatchObject({ ok: false, error: expect.stringMatching(/axpy: the op has no cases/) });
  });
});

describe('stage fixtures', () => {
  it.each(Object.keys(WINDOWS))('stage-%s.json is what libs/model builds today (npm run check:fixtures)', async (name) => {
    const file = fixturePath(name);
    expect(fs.existsSync(file), `${file} is missing: run npm run check:fixtures`).toBe(true);
    const fresh = await buildFixture(WINDOWS[name]());
    expect(fresh === fs.readFileSync(file, 'utf8'), `${path.relative(ROOT, file)} is stale: run npm run check:fixtures`).toBe(true);
  });
});

describe('what travels to a GPU machine', () => {
  const files = execFileSync('bash', [SCRIPT, '--manifest'], { cwd: ROOT, encoding: 'utf8' }).trim().split('\n');

  it('is sources only, within 10 MiB, none ignored by git', () => {
    expect(files.length).toBeGreaterThan(10);
    expect(files.filter((f) => f.includes('node_modules'))).toEqual([]);
    const bytes = files.reduce((n, f) => n + fs.statSync(path.join(ROOT, f)).size, 0);
    expect(bytes).toBeLessThan(10 * 1024 * 1024);
    const ignored = spawnSync('git', ['check-ignore', ...files], { cwd: ROOT, encoding: 'utf8' }).stdout.trim();
    expect(ignored, 'git-ignored files would not travel').toBe('');
  });

  it('is enough to configure the build on its own', () => {
    const copy = fs.mkdtempSync(path.join(os.tmpdir(), 'gpu-check-manifest-'));
    for (const f of files) {
      fs.mkdirSync(path.dirname(path.join(copy, f)), { recursive: true });
      fs.copyFileSync(path.join(ROOT, f), path.join(copy, f));
    }
    const r = spawnSync('cmake', ['-S', path.join(copy, 'libs/engine'), '-B', path.join(copy, 'build'), '-DLONGSHOT_CUDA=OFF'], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    fs.rmSync(copy, { recursive: true, force: true });
  });
});
