import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cpuBackend } from '@longshot/engine';
import { encodePrompt, encodeText, getConfig, loadTextEmbeddings, openPipelineDir, SEEDED_UMT5, seededUmt5Weights, UMT5_SPECIAL, writeSeededPipeline } from '@longshot/model';

const run = promisify(execFile);
const bin = path.resolve(__dirname, '../../apps/cli/bin/longshot.js');
const tiny = getConfig('tiny');
let dir: string;
let pipe: string;

async function longshot(args: string[]): Promise<{ stdout: string; stderr: string; code: number }> {
  try {
    return { ...(await run(process.execPath, [bin, ...args], { cwd: dir, maxBuffer: 16 << 20 })), code: 0 };
  } catch (e) {
    const err = e as { stdout: string; stderr: string; code: number };
    return { stdout: err.stdout, stderr: err.stderr, code: err.code };
  }
}

/** The tensors of a safetensors file, read independently of the library: header JSON, then raw bytes. */
function readTensors(file: string): Map<string, { dtype: string; shape: number[]; values: Float32Array | Int32Array }> {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out = new Map<string, { dtype: string; shape: number[]; values: Float32Array | Int32Array }>();
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const bytes = Buffer.from(buf.subarray(8 + n + t.data_offsets[0], 8 + n + t.data_offsets[1]));
    const values = t.dtype === 'I32' ? new Int32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4) : new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
    out.set(name, { dtype: t.dtype, shape: t.shape, values });
  }
  return out;
}

const same = (a: Float32Array, b: Float32Array) => a.length === b.length && Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-encode-'));
  pipe = path.join(dir, 'pipe');
  writeSeededPipeline(pipe, { config: tiny, seed: 0, shards: 2, dtype: 'F32' });
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('longshot encode', () => {
  it('writes token ids and the padded umT5 embeddings exactly as encodeText gives them in process', async () => {
    const prompt = 'a paper boat drifting down the river at dusk';
    const r = await longshot(['encode', '--model', 'pipe', '--prompt', prompt, '--negative-prompt', 'blurry dark', '--out', 'enc.safetensors', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout.trim().split('\n').at(-1)!);
    expect(summary.encoder).toMatch(/^umT5 text encoder: umt5-tiny/);
    const t = readTensors(path.join(dir, 'enc.safetensors'));
    expect([...t.keys()].sort()).toEqual(['cond', 'cond_ids', 'uncond', 'uncond_ids']);
    const tokenizer = openPipelineDir(pipe).tokenizer;
    const ids = tokenizer.tokenize(prompt).ids;
    const negIds = tokenizer.tokenize('blurry dark').ids;
    expect(t.get('cond_ids')!.dtype).toBe('I32');
    expect([...t.get('cond_ids')!.values]).toEqual(ids);
    expect([...t.get('uncond_ids')!.values]).toEqual(negIds);
    expect(ids.at(-1)).toBe(UMT5_SPECIAL.eos);
    expect(t.get('cond')!.shape).toEqual([tiny.textLen, tiny.textDim]);
    // The seeded directory's encoder is seededUmt5Weights(umt5-tiny, 0): run it here, compare bits.
    const weights = seededUmt5Weights(SEEDED_UMT5.tiny, 0);
    const backend = cpuBackend();
    const cond = await encodeText({ config: SEEDED_UMT5.tiny, weights, ids, textLen: tiny.textLen, backend });
    const uncond = await encodeText({ config: SEEDED_UMT5.tiny, weights, ids: negIds, textLen: tiny.textLen, backend });
    expect(same(t.get('cond')!.values as Float32Array, cond)).toBe(true);
    expect(same(t.get('uncond')!.values as Float32Array, uncond)).toBe(true);
    expect((t.get('cond')!.values as Float32Array).subarray(ids.length * tiny.textDim).every((v) => v === 0)).toBe(true);
    // The file feeds render --text-embeddings unchanged.
    const loaded = loadTextEmbeddings(path.join(dir, 'enc.safetensors'), tiny);
    expect(same(loaded.cond, cond)).toBe(true);
    expect(same(loaded.uncond, uncond)).toBe(true);
  });

  it('encodes "" as the end token alone when no negative prompt is given; a seeded name uses the stand-in', async () => {
    const r = await longshot(['encode', '--model', 'pipe', '--prompt', 'a red fox', '--out', 'plain.safetensors']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/cond and uncond \[\d+, 64\], \d+ \+ 1 tokens/);
    const t = readTensors(path.join(dir, 'plain.safetensors'));
    expect([...t.get('uncond_ids')!.values]).toEqual([UMT5_SPECIAL.eos]);
    const eosOnly = await encodeText({ config: SEEDED_UMT5.tiny, weights: seededUmt5Weights(SEEDED_UMT5.tiny, 0), ids: [UMT5_SPECIAL.eos], textLen: tiny.textLen, backend: cpuBackend() });
    expect(same(t.get('uncond')!.values as Float32Array, eosOnly)).toBe(true);

    const s = await longshot(['encode', '--model', 'tiny', '--prompt', 'a red fox', '--negative-prompt', 'fog', '--out', 'standin.safetensors']);
    expect(s.code, s.stderr).toBe(0);
    const st = readTensors(path.join(dir, 'standin.safetensors'));
    expect([...st.keys()].sort()).toEqual(['cond', 'uncond']);
    expect(same(st.get('cond')!.values as Float32Array, encodePrompt('a red fox', tiny))).toBe(true);
    expect(same(st.get('uncond')!.values as Float32Array, encodePrompt('fog', tiny))).toBe(true);
  });

  it('answers --help, and refuses bad flags with one line naming the flag, exit code 2', async () => {
    const h = await longshot(['encode', '--help']);
    expect(h.code).toBe(0);
    expect(h.stdout).toContain('--negative-prompt');
    const cases: [string[], RegExp][] = [
      [['--model', 'pipe', '--out', 'x.safetensors'], /^longshot: --prompt: required\n$/],
      [['--model', 'pipe', '--prompt', 'x'], /^longshot: --out: required/],
      [['--prompt', 'x', '--out', 'x.safetensors'], /^longshot: --model: required/],
      [['--model', 'no-such-model', '--prompt', 'x', '--out', 'x.safetensors'], /^longshot: --model: /],
      [['--model', 'pipe', '--prompt', 'x', '--out', 'missing/x.safetensors'], /^longshot: --out: missing\/x\.safetensors: its directory does not exist\n$/],
      [['--model', 'pipe', '--prompt', 'x', '--out', 'x.safetensors', '--bogus'], /--bogus/],
    ];
    for (const [args, re] of cases) {
      const r = await longshot(['encode', ...args]);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toMatch(re);
      expect(r.stderr.trim().split('\n'), args.join(' ')).toHaveLength(1);
    }
  });
});
