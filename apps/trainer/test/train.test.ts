/**
 * The trainer's smoke run: every stage of `npm run train` (captions, text, vae, dit, dit-more,
 * export, assemble) for a few steps on small batches, in Debian's PyTorch, into a scratch directory.
 * The losses must fall and the result must be a pipeline directory the engine opens.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveModel } from '@longshot/model';
import { runNode } from '../../../test/e2e/cli';
import { trainerConfig } from '../src/config';

const ROOT = path.resolve(__dirname, '../../..');
let workdir: string;
let run: { code: number | null; stdout: string; stderr: string };

/** The losses a stage reported, in step order. */
function losses(stage: string): number[] {
  const re = new RegExp(`^\\[${stage}\\] step \\d+/\\d+ loss ([0-9.e+-]+)`, 'gm');
  return [...run.stdout.matchAll(re)].map((m) => Number(m[1]));
}
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

/** The smoke run's configuration, as `npm run train -- --smoke` reads it. */
const SMOKE = trainerConfig(['--smoke'], process.env);

/** Runs the trainer's Python in its package directory; its stdout (throws with stderr on failure). */
function python(args: string[]): string {
  const r = spawnSync(SMOKE.python, args, { cwd: path.join(SMOKE.trainerDir, 'python'), encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`python ${args.slice(0, 4).join(' ')} failed (${r.signal ?? `exit ${r.status}`}): ${r.stderr}`);
  return r.stdout;
}

beforeAll(async () => {
  workdir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-train-'));
  run = await runNode(['--import', 'tsx', 'apps/trainer/src/train.ts', '--smoke', '--workdir', workdir], ROOT);
}, 300_000);

afterAll(() => fs.rmSync(workdir, { recursive: true, force: true }));

describe('npm run train -- --smoke', () => {
  it('runs every stage and reports each', () => {
    expect(run.code, run.stderr).toBe(0);
    for (const stage of ['captions', 'text', 'vae', 'latents', 'dit', 'dit-more', 'export', 'assemble']) expect(run.stderr).toContain(`[train] ${stage}: finished`);
  });

  it('the VAE and the DiT learn: their losses fall well below the first step\'s', () => {
    const vae = losses('vae');
    const dit = losses('dit');
    const more = losses('dit-more');
    expect(vae).toHaveLength(14); // 10 steps, then 2 of the decoder alone on long clips, 2 more on colour
    expect(dit).toHaveLength(30);
    expect(more).toHaveLength(30);
    // One fixed batch each: the VAE's first phase (single frames) gets well below its first loss
    // (Adam at the recipe's rate wobbles after a few steps on 4 frames, so the best step counts),
    // and the DiT's loss falls from its first steps to its last.
    expect(Math.min(...vae.slice(1, 10))).toBeLessThan(0.9 * vae[0]);
    expect(mean(dit.slice(-5))).toBeLessThan(mean(dit.slice(0, 5)));
    // The second DiT phase starts from the first's weights, not from a seeded init.
    expect(mean(more.slice(0, 5))).toBeLessThan(mean(dit.slice(0, 5)));
  });

  it('serves Prometheus metrics during the run and leaves its last state in metrics.prom', () => {
    expect(run.stderr).toMatch(/\[train\] metrics on http:\/\/127\.0\.0\.1:\d+\/metrics/);
    const prom = fs.readFileSync(path.join(workdir, 'metrics.prom'), 'utf8');
    const value = (series: string): number => {
      const line = prom.split('\n').find((l) => l.startsWith(`${series} `));
      expect(line, `${series} in metrics.prom`).toBeDefined();
      return Number(line!.split(' ')[1]);
    };
    // The last progress line of each Python stage, and every stage finished in this run.
    expect(value('longshot_trainer_step{stage="dit"}')).toBe(30);
    expect(value('longshot_trainer_steps{stage="dit"}')).toBe(30);
    expect(value('longshot_trainer_loss{stage="dit",kind="last"}')).toBe(losses('dit').at(-1));
    for (const stage of ['captions', 'text', 'vae', 'latents', 'dit', 'dit-more', 'export', 'assemble']) {
      expect(value(`longshot_trainer_stages_total{stage="${stage}",result="ok"}`)).toBe(1);
      expect(value(`longshot_trainer_stages_total{stage="${stage}",result="failed"}`)).toBe(0);
    }
  });

  it('writes a pipeline directory the engine opens, every file well under 5 MB', () => {
    const dir = path.join(workdir, 'pipeline');
    const model = resolveModel(dir);
    expect(model.kind).toBe('pipeline');
    expect(model.config.textLen).toBe(16);
    const files = fs.readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile());
    for (const f of files) expect(fs.statSync(path.join(f.parentPath, f.name)).size).toBeLessThan(4 * 1024 * 1024);
  });

  it('a DiT phase interrupted and resumed gives the bits of the run that went straight through', () => {
    // The recipe's threads and kernel choices make a run a function of its seeds; a resume must
    // not change that (optimiser, moving average and batch order all carry on).
    const again = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-train-resume-'));
    try {
      for (const f of ['captions.json', 'text-embeddings.safetensors', 'vae-final.pt', 'latents.pt']) fs.copyFileSync(path.join(workdir, f), path.join(again, f));
      const dit = (...extra: string[]) =>
        python(['-m', 'longshot_trainer.train', 'dit', '--smoke', '--workdir', again, '--steps', String(SMOKE.ditSteps), '--clips', String(SMOKE.ditClips), ...extra]);
      expect(dit('--halt-after', '10')).toContain('[dit] halted after the checkpoint at step 10');
      expect(fs.existsSync(path.join(again, 'dit-final.pt'))).toBe(false);
      expect(dit()).toContain('[dit] resuming at step 10/30');
      const compare = `import sys, torch
a, b = (torch.load(p) for p in sys.argv[1:])
names = [f"{part}.{k}" for part in ("model", "last") for k in a[part] if not torch.equal(a[part][k], b[part][k])]
print(f"{len(a['model']) + len(a['last'])} tensors, {len(names)} differ {names[:3]}")`;
      const diff = python(['-c', compare, path.join(workdir, 'dit-final.pt'), path.join(again, 'dit-final.pt')]);
      expect(diff).toMatch(/^\d+ tensors, 0 differ/);
    } finally {
      fs.rmSync(again, { recursive: true, force: true });
    }
  });

  it('a second run finds every stage done and does nothing', async () => {
    const again = await runNode(['--import', 'tsx', 'apps/trainer/src/train.ts', '--smoke', '--workdir', workdir], ROOT);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toContain('vae: done earlier');
    expect(again.stdout).not.toContain('[vae] step');
  });
});
