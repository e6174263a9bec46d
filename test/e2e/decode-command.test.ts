import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { probeFrameCount } from '@longshot/media';
import { blockVideoFrames, SafetensorsFile, SEEDED_VAE, videoFrameSha256, writeSafetensors } from '@longshot/model';
import { longshot as runCli } from './cli';

let dir: string;
let render: Record<string, unknown>;
const longshot = (args: string[]) => runCli(args, dir);

async function json(args: string[]): Promise<Record<string, unknown>> {
  const r = await longshot([...args, '--json']);
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
}

function readFrames(file: string): { shape: readonly number[]; values: Float32Array } {
  const st = SafetensorsFile.open(path.join(dir, file));
  try {
    return { shape: st.info('frames').shape, values: st.read('frames') };
  } finally {
    st.close();
  }
}

const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-decode-'));
  // 9 latent frames in blocks of 3: 33 frames of 64x48.
  render = await json(['render', '--in-process', '--prompt', 'a lighthouse at night', '--seconds', '2', '--size', '64x48', '--steps', '2', '--block', '3', '--context', '1', '--out', 'render.mp4', '--save-latents', 'L.safetensors']);
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('longshot decode', () => {
  it("decodes render --save-latents to the render's frameSha256, an MP4 of its frame count, and the [F, H, W, 3] frames the digest covers", async () => {
    const r = await json(['decode', '--model', 'tiny', '--latents', 'L.safetensors', '--out', 'd.mp4', '--frames', 'f.safetensors']);
    expect(r.frameSha256).toBe(render.frameSha256);
    expect(r.latentSha256).toBe(render.latentSha256);
    expect([r.frames, r.width, r.height, r.fps, r.block, r.blocks, r.latentFrames]).toEqual([33, 64, 48, 16, 3, 3, 9]);
    expect(await probeFrameCount(path.join(dir, 'd.mp4'))).toBe(33);

    const f = readFrames('f.safetensors');
    expect(f.shape).toEqual([33, 48, 64, 3]);
    expect(f.values.every((v) => v >= -1 && v <= 1)).toBe(true);
    expect(new Set(f.values).size).toBeGreaterThan(256); // floats, not quantised bytes
    // The digest definition: SHA-256 of each block's float32 frames, then SHA-256 over those.
    const frameValues = 48 * 64 * 3;
    const digests: string[] = [];
    let at = 0;
    for (let i = 0; i < 3; i++) {
      const n = blockVideoFrames(SEEDED_VAE.tiny, 3, i) * frameValues;
      digests.push(createHash('sha256').update(bits(f.values.subarray(at, at + n))).digest('hex'));
      at += n;
    }
    expect(at).toBe(f.values.length);
    expect(videoFrameSha256(digests)).toBe(render.frameSha256);
  });

  it('decodes the same frames bit for bit with another --block (the digest, per block, differs)', async () => {
    const r = await json(['decode', '--model', 'tiny', '--latents', 'L.safetensors', '--out', 'd1.mp4', '--frames', 'f1.safetensors', '--block', '1', '--fps', '8']);
    expect([r.block, r.blocks, r.fps]).toEqual([1, 9, 8]);
    expect(bits(readFrames('f1.safetensors').values).equals(bits(readFrames('f.safetensors').values))).toBe(true);
    expect(r.frameSha256).not.toBe(render.frameSha256);
    expect(await probeFrameCount(path.join(dir, 'd1.mp4'))).toBe(33);
  });

  it('shows its progress on stderr and a summary on stdout', async () => {
    const r = await longshot(['decode', '--model', 'tiny', '--latents', 'L.safetensors', '--out', 'd2.mp4']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/decoding L\.safetensors .*3\/3 blocks/);
    expect(r.stdout).toContain(`frameSha256 ${render.frameSha256 as string}`);
  });

  it('refuses bad inputs with one line naming the flag, exit status 2', async () => {
    writeSafetensors(path.join(dir, 'noise.safetensors'), [{ name: 'noise', shape: [16, 3, 6, 8], data: new Float32Array(16 * 3 * 48) }]);
    writeSafetensors(path.join(dir, 'narrow.safetensors'), [{ name: 'latents', shape: [8, 3, 6, 8], data: new Float32Array(8 * 3 * 48) }]);
    fs.writeFileSync(path.join(dir, 'junk.safetensors'), 'not safetensors');
    const cases: [string[], RegExp][] = [
      [['--latents', 'missing.safetensors', '--out', 'x.mp4'], /^longshot: --latents: cannot read .*missing\.safetensors \(no such file or directory\)$/],
      [['--latents', 'junk.safetensors', '--out', 'x.mp4'], /^longshot: --latents: junk\.safetensors/],
      [['--latents', 'noise.safetensors', '--out', 'x.mp4'], /^longshot: --latents: noise\.safetensors has no tensor 'latents' \(it has noise\)$/],
      [['--latents', 'narrow.safetensors', '--out', 'x.mp4'], /^longshot: --latents: tensor 'latents' of narrow\.safetensors is \[8, 3, 6, 8\]; the VAE vae-tiny decodes \[16, F, H\/8, W\/8\]$/],
      [['--latents', 'L.safetensors', '--out', 'L.safetensors/x.mp4'], /^longshot: --out: cannot write .*L\.safetensors \(a parent is not a directory\)$/],
      [['--latents', 'L.safetensors', '--out', 'x.mp4', '--frames', 'L.safetensors/f.safetensors'], /^longshot: --frames: cannot write /],
      [['--latents', 'L.safetensors', '--out', 'x.mp4', '--block', '2'], /^longshot: --block: 9 latent frames are not a whole number of blocks of 2$/],
      [['--latents', 'L.safetensors', '--out', 'x.mp4', '--fps', '0'], /^longshot: --fps: must be in 1\.\.120, got 0$/],
      [['--model', 'no-such-model', '--latents', 'L.safetensors', '--out', 'x.mp4'], /^longshot: --model: /],
      [['--model', 'tiny', '--out', 'x.mp4'], /^longshot: --latents: required/],
    ];
    for (const [args, message] of cases) {
      const r = await longshot(['decode', ...(args.includes('--model') ? [] : ['--model', 'tiny']), ...args]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
      expect(r.stderr.trim(), args.join(' ')).toMatch(message);
    }
    expect(fs.existsSync(path.join(dir, 'x.mp4'))).toBe(false);
  });
});
