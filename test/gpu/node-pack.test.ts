/**
 * deploy/gpu-node-pack.sh: the CUDA suites bundled with test/gpu/vitest-shim.ts run under plain
 * node and declare the same tests vitest runs (here: every CUDA case skipped, the rest passing);
 * the shim reports a failing expectation as a failure.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { engineInfo } from '@longshot/engine';
import { OP_CASES } from '../reference/cases';

const ROOT = path.resolve(__dirname, '../..');
const cudaBuilt = engineInfo().cudaBuilt;
const cudaUsable = engineInfo().backends.includes('cuda');
/** cuda.test.ts runs every case of the op table in each of its three storages (f32, bf16, f16). */
const OP_CASE_TESTS = Object.values(OP_CASES).reduce((n, cases) => n + cases.length, 0) * 3;

interface Summary {
  suite: string;
  passed: number;
  failed: number;
  skipped: number;
  failures: string[];
}

const run = (file: string): { status: number | null; summary: Summary } => {
  const r = spawnSync(process.execPath, [file], { encoding: 'utf8' });
  return { status: r.status, summary: JSON.parse(r.stdout.trim().split('\n').pop()!) as Summary };
};

describe('gpu-node-pack', () => {
  it.skipIf(!cudaBuilt)(`bundles the CUDA suites to run without vitest${cudaBuilt ? '' : ' (skipped: addon built without CUDA)'}`, () => {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'gpu-node-pack-'));
    try {
      execFileSync('bash', [path.join(ROOT, 'deploy/gpu-node-pack.sh'), out], { env: { ...process.env, LONGSHOT_PACK_NODE: '0' }, stdio: 'pipe' });
      expect(fs.readdirSync(path.join(out, 't/d')).sort()).toEqual(['cuda.js', 'stage-parallel.js']);
      const cuda = run(path.join(out, 't/d/cuda.js'));
      const groups = run(path.join(out, 't/d/stage-parallel.js'));
      expect(cuda.status).toBe(0);
      expect(groups.status).toBe(0);
      // As vitest counts them (test/conformance/cuda.test.ts: the op cases and 18 tests of its
      // own, 3 of which need no device; stage-parallel.test.ts).
      expect(cuda.summary.passed + cuda.summary.skipped).toBe(OP_CASE_TESTS + 18);
      expect(groups.summary.passed + groups.summary.skipped).toBe(22);
      if (!cudaUsable) {
        expect(cuda.summary).toMatchObject({ passed: 3, skipped: OP_CASE_TESTS + 15, failed: 0 });
        expect(groups.summary).toMatchObject({ passed: 10, skipped: 12, failed: 0 });
      }

      // A failing expectation fails the bundle.
      const failing = path.join(out, 't/d/failing.js');
      fs.writeFileSync(path.join(out, 'failing.ts'), `import { describe, expect, it, runDeclaredTests } from '${path.join(ROOT, 'test/gpu/vitest-shim')}';\ndescribe('s', () => { it('fails', () => expect(1, 'one').toBe(2)); it('passes', () => expect([1]).toEqual([1])); it.skipIf(true)('skipped', () => undefined); });\nvoid runDeclaredTests('failing').then((s) => process.exit(s.failed > 0 ? 1 : 0));\n`);
      execFileSync(path.join(ROOT, 'node_modules/.bin/esbuild'), [path.join(out, 'failing.ts'), '--bundle', '--platform=node', '--format=cjs', '--log-level=error', `--outfile=${failing}`]);
      const f = run(failing);
      expect(f.status).toBe(1);
      expect(f.summary).toMatchObject({ passed: 1, failed: 1, skipped: 1, failures: ['s > fails: one: expected 1 to be 2'] });
    } finally {
      fs.rmSync(out, { recursive: true, force: true });
    }
  }, 120_000);
});
