import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { probeFrameCount } from '@longshot/media';
import { SafetensorsFile, writeSafetensors } from '@longshot/model';
import { seededInitialNoise } from '@longshot/pipeline';
import { normalizeSpec, planJob } from '@longshot/planner';
import { longshot as runCli } from './cli';

const root = path.resolve(__dirname, '../..');
let dir: string;

const longshot = (args: string[]) => runCli(args, dir);

async function render(args: string[]): Promise<Record<string, unknown>> {
  const r = await longshot(['render', '--json', ...args]);
  expect(r.code, r.stderr).toBe(0);
  const last = r.stdout.trim().split('\n').pop()!;
  return JSON.parse(last) as Record<string, unknown>;
}

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-render-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('longshot render', () => {
  const common = ['--prompt', 'a paper boat on a rainy street', '--seconds', '2', '--size', '64x48', '--steps', '4', '--block', '3', '--context', '1'];

  it('gives the same latents in process and through the service with 1 and 3 stages, and an MP4 with the reported frame count', async () => {
    const local = await render([...common, '--in-process', '--out', 'local.mp4']);
    expect(local.mode).toBe('in-process');
    const one = await render([...common, '--stages', '1', '--out', 'one.mp4']);
    const three = await render([...common, '--stages', '3', '--out', 'three.mp4']);
    expect(one.mode).toBe('service');
    expect((three.workers as string[]).length).toBe(3);
    expect(one.latentSha256).toBe(local.latentSha256);
    // Decoded on a worker (service) and in this process (--in-process): the same frames.
    expect(one.frameSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(one.frameSha256).toBe(local.frameSha256);
    for (const key of ['id', 'frames', 'width', 'height', 'fps', 'steps', 'blocks', 'stages', 'latentSha256', 'output', 'seconds']) {
      expect(one, key).toHaveProperty(key);
    }
    expect(three.latentSha256).toBe(one.latentSha256);
    expect(three.frameSha256).toBe(one.frameSha256);
    expect(one.latentSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(three.stages).toBe(3);
    expect(await probeFrameCount(one.output as string)).toBe(one.frames);
    expect(await probeFrameCount(three.output as string)).toBe(three.frames);
    const other = await render([...common, '--in-process', '--seed', '1', '--out', 'seed1.mp4']);
    expect(other.latentSha256).not.toBe(one.latentSha256);
  });

  it('uploads --text-embeddings to the controller (it never reads a client path) with the in-process result', async () => {
    const enc = await longshot(['encode', '--model', 'tiny', '--prompt', 'a heron at dawn', '--out', 'heron.safetensors']);
    expect(enc.code, enc.stderr).toBe(0);
    const args = [...common.slice(2), '--text-embeddings', 'heron.safetensors'];
    const local = await render([...args, '--in-process', '--out', 'heron-local.mp4']);
    const service = await render([...args, '--stages', '1', '--out', 'heron-service.mp4']);
    expect(service.mode).toBe('service');
    expect(service.latentSha256).toBe(local.latentSha256);
  });

  it('renders from a written safetensors model exactly as from the seeded init', async () => {
    const w = await longshot(['model', 'write', '--model', 'tiny', '--out', 'tiny.safetensors']);
    expect(w.code, w.stderr).toBe(0);
    const seeded = await render([...common, '--in-process', '--stages', '2', '--out', 'seeded.mp4']);
    const file = await render([...common, '--in-process', '--stages', '2', '--model', path.join(dir, 'tiny.safetensors'), '--out', 'file.mp4']);
    expect(file.latentSha256).toBe(seeded.latentSha256);
  });

  it('renders a pipeline directory written in 3 shards exactly as the single-file one, on 1 and on 3 workers', async () => {
    for (const [out, shards] of [['pipe-one', '1'], ['pipe-three', '3']]) {
      const w = await longshot(['model', 'write', '--model', 'tiny', '--dtype', 'BF16', '--shards', shards, '--out', out]);
      expect(w.code, w.stderr).toBe(0);
    }
    const one = path.join(dir, 'pipe-one');
    const three = path.join(dir, 'pipe-three');
    const reference = await render([...common, '--in-process', '--model', one, '--out', 'pipe-ref.mp4']);
    const sharded1 = await render([...common, '--stages', '1', '--model', three, '--out', 'pipe-s1.mp4']);
    const sharded3 = await render([...common, '--stages', '3', '--model', three, '--out', 'pipe-s3.mp4']);
    const single3 = await render([...common, '--in-process', '--stages', '3', '--model', one, '--out', 'pipe-13.mp4']);
    expect((sharded3.workers as string[]).length).toBe(3);
    expect(sharded1.latentSha256).toBe(reference.latentSha256);
    expect(sharded3.latentSha256).toBe(reference.latentSha256);
    expect(single3.latentSha256).toBe(reference.latentSha256);
    // The directory's own tokenizer and text encoder condition it, not the seeded name's stand-in.
    const seededName = await render([...common, '--in-process', '--out', 'pipe-seeded.mp4']);
    expect(reference.latentSha256).not.toBe(seededName.latentSha256);
    // A negative prompt changes the uncond side, the same on a worker as in process.
    const negative = ['--negative-prompt', 'blurry, dark water'];
    const negRef = await render([...common, ...negative, '--in-process', '--model', one, '--out', 'pipe-neg-ref.mp4']);
    const negSharded = await render([...common, ...negative, '--stages', '3', '--model', three, '--out', 'pipe-neg-s3.mp4']);
    expect(negRef.latentSha256).not.toBe(reference.latentSha256);
    expect(negSharded.latentSha256).toBe(negRef.latentSha256);
  });

  it('renders the shipped trained model (longshot-shapes) with the same bits in process and on 2 and 4 workers', async () => {
    const shapes = ['--model', 'longshot-shapes', '--prompt', 'a small green square moving right on a gray background', '--frames', '29', '--size', '64x64', '--steps', '6', '--block', '2', '--context', '1'];
    const reference = await render([...shapes, '--in-process', '--out', 'shapes-ref.mp4']);
    for (const K of [2, 4]) {
      const r = await render([...shapes, '--stages', String(K), '--out', `shapes-${K}.mp4`]);
      expect((r.workers as string[]).length).toBe(K);
      expect(r.latentSha256, `K = ${K}`).toBe(reference.latentSha256);
      expect(r.frameSha256, `K = ${K}`).toBe(reference.frameSha256);
    }
  });

  it('rejects bad flags and bad files with a message naming them', async () => {
    const cases: [string[], RegExp][] = [
      [['--prompt', 'x', '--frames', '10'], /--frames/],
      [['--prompt', 'x', '--size', '100x64'], /--size/],
      [['--prompt', 'x', '--size', 'big'], /--size/],
      [['--prompt', 'x', '--steps', 'many'], /--steps/],
      [['--prompt', 'x', '--stages', '7'], /--stages/],
      // The tiny model has 2 heads; groups run on the service only.
      [['--prompt', 'x', '--ulysses', '3'], /--ulysses: .*2 attention heads/],
      [['--prompt', 'x', '--ulysses', 'two'], /--ulysses/],
      [['--prompt', 'x', '--in-process', '--ulysses', '2'], /--ulysses/],
      [['--prompt', 'x', '--in-process', '--cfg-parallel'], /--cfg-parallel/],
      [['--prompt', 'x', '--model', 'nope'], /--model/],
      [['--frames', '9'], /--prompt/],
      [['--prompt', 'x', '--bogus'], /--bogus/],
    ];
    for (const [args, re] of cases) {
      const r = await longshot(['render', ...args]);
      expect(r.code, args.join(' ')).not.toBe(0);
      expect(r.stderr, args.join(' ')).toMatch(re);
    }
    fs.writeFileSync(path.join(dir, 'broken.safetensors'), fs.readFileSync(path.join(dir, 'tiny.safetensors')).subarray(0, 5000));
    const r = await longshot(['render', '--in-process', '--prompt', 'x', '--model', path.join(dir, 'broken.safetensors')]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/broken\.safetensors/);
  });
});

describe('longshot schedule', () => {
  const fixture = JSON.parse(fs.readFileSync(path.join(root, 'test/reference/fixtures/schedules.json'), 'utf8')) as {
    cases: { kind: string; shift: number; steps: number; sigmas: number[]; timesteps: number[] }[];
  };
  const expected = (kind: string, shift: number, steps: number) => fixture.cases.find((c) => c.kind === kind && c.shift === shift && c.steps === steps)!;

  it("prints the model scheduler's sigmas and timesteps, with --sampler and --shift applied", async () => {
    const wan = await longshot(['schedule', '--model', 'wan2.1-t2v-1.3b', '--steps', '10', '--json']);
    expect(wan.code, wan.stderr).toBe(0);
    const r = JSON.parse(wan.stdout);
    expect(r).toMatchObject({ sampler: 'unipc', shift: 3, steps: 10, numTrainTimesteps: 1000 });
    expect([r.sigmas, r.timesteps]).toEqual([expected('unipc', 3, 10).sigmas, expected('unipc', 3, 10).timesteps]);
    const euler = JSON.parse((await longshot(['schedule', '--steps', '20', '--sampler', 'euler', '--shift', '5', '--json'])).stdout);
    expect(euler).toMatchObject({ sampler: 'euler', shift: 5 });
    expect([euler.sigmas, euler.timesteps]).toEqual([expected('euler', 5, 20).sigmas, expected('euler', 5, 20).timesteps]);
    for (const [args, re] of [
      [['--steps', '0'], /--steps: must be in 1\.\.1000/],
      [['--sampler', 'ddim'], /--sampler: must be one of unipc, euler/],
      [['--shift', '0'], /--shift: must be a positive number/],
      [['--model', 'nope'], /--model: unknown model 'nope'/],
    ] as const) {
      const bad = await longshot(['schedule', ...args]);
      expect(bad.code, args.join(' ')).toBe(2);
      expect(bad.stderr).toMatch(re);
    }
  });
});

describe('longshot render --save-latents / --init-noise', () => {
  const flags = { prompt: 'a kite over dunes', seconds: 1, width: 32, height: 32, steps: 5, block: 2, context: 1 };
  const common = ['--in-process', '--prompt', flags.prompt, '--seconds', '1', '--size', '32x32', '--steps', '5', '--block', '2', '--context', '1'];

  it('writes the final latents and reproduces a seeded run from its noise written out', async () => {
    const seeded = await render([...common, '--seed', '3', '--save-latents', 'latents.safetensors', '--out', 'seeded.mp4']);
    expect([seeded.sampler, seeded.shift]).toEqual(['unipc', 3]);
    const spec = normalizeSpec({ ...flags, seed: 3 });
    const plan = planJob(spec);
    const st = SafetensorsFile.open(path.join(dir, 'latents.safetensors'));
    const latents = st.read('latents', [16, plan.latentFrames, plan.latentHeight, plan.latentWidth]);
    st.close();
    expect(createHash('sha256').update(Buffer.from(latents.buffer, latents.byteOffset, latents.byteLength)).digest('hex')).toBe(seeded.latentSha256);

    // The seeded noise written out, given to a run with another seed: the seeded run's bits.
    const noise = seededInitialNoise(spec, plan, 16);
    writeSafetensors(path.join(dir, 'noise.safetensors'), [{ name: 'noise', shape: [16, plan.latentFrames, plan.latentHeight, plan.latentWidth], data: noise }]);
    const fromNoise = await render([...common, '--seed', '77', '--init-noise', 'noise.safetensors', '--out', 'noise.mp4']);
    expect(fromNoise.latentSha256).toBe(seeded.latentSha256);
    const otherSeed = await render([...common, '--seed', '77', '--out', 'other.mp4']);
    expect(otherSeed.latentSha256).not.toBe(seeded.latentSha256);

    const shifted = await render([...common, '--seed', '3', '--shift', '5', '--sampler', 'euler', '--out', 'euler.mp4']);
    expect([shifted.sampler, shifted.shift]).toEqual(['euler', 5]);
    expect(shifted.latentSha256).not.toBe(seeded.latentSha256);
  });

  it('names the flag and the tensor when the noise file does not fit, and needs --in-process', async () => {
    writeSafetensors(path.join(dir, 'small.safetensors'), [{ name: 'noise', shape: [16, 1, 4, 4], data: new Float32Array(256) }]);
    const small = await longshot(['render', ...common, '--init-noise', 'small.safetensors']);
    expect(small.code).toBe(2);
    expect(small.stderr).toMatch(/--init-noise: .*'noise'.*\[16, 1, 4, 4\]/);
    const service = await longshot(['render', '--prompt', 'x', '--save-latents', 'x.safetensors']);
    expect(service.code).toBe(2);
    expect(service.stderr).toMatch(/--save-latents: needs --in-process/);
  });
});
