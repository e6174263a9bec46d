import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MODEL_CONFIGS } from '../src/config';
import { writeSafetensors } from '../src/safetensors';
import { encodePrompt, loadTextEmbeddings, tokenize } from '../src/text';

const tiny = MODEL_CONFIGS.tiny; // textLen 16, textDim 64
const { textLen, textDim } = tiny;

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-t-'));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

const row = (e: Float32Array, i: number) => e.subarray(i * textDim, (i + 1) * textDim);
const isZero = (a: Float32Array) => a.every((v) => v === 0);

describe('stand-in prompt encoder', () => {
  it('tokenises lower-case words and drops punctuation', () => {
    expect(tokenize('A Cat, jumping over the MOON! Don\'t stop.')).toEqual(['a', 'cat', 'jumping', 'over', 'the', 'moon', "don't", 'stop']);
    expect(tokenize('  ')).toEqual([]);
  });

  it('has shape [textLen, textDim], token rows then zero rows', () => {
    const e = encodePrompt('a red fox', tiny);
    expect(e.length).toBe(textLen * textDim);
    for (let i = 0; i < 4; i++) expect(isZero(row(e, i))).toBe(false); // 3 words + end token
    for (let i = 4; i < textLen; i++) expect(isZero(row(e, i))).toBe(true);
  });

  it('is deterministic, case-insensitive, and order-sensitive', () => {
    expect(encodePrompt('A Red Fox', tiny)).toEqual(encodePrompt('a red fox', tiny));
    expect(encodePrompt('fox red a', tiny)).not.toEqual(encodePrompt('a red fox', tiny));
    // A word's vector is the same wherever it appears, up to the small position term.
    const a = row(encodePrompt('fox', tiny), 0);
    const b = row(encodePrompt('the fox', tiny), 1);
    let diff = 0;
    for (let j = 0; j < textDim; j++) diff = Math.max(diff, Math.abs(a[j] - b[j]));
    expect(diff).toBeGreaterThan(0);
    expect(diff).toBeLessThan(0.25);
  });

  it('the empty prompt is just the end token', () => {
    const e = encodePrompt('', tiny);
    expect(isZero(row(e, 0))).toBe(false);
    for (let i = 1; i < textLen; i++) expect(isZero(row(e, i))).toBe(true);
    expect(encodePrompt('?!', tiny)).toEqual(e);
  });

  it('keeps at most textLen - 1 words plus the end token', () => {
    const long = Array.from({ length: 40 }, (_, i) => `w${i}`).join(' ');
    const e = encodePrompt(long, tiny);
    for (let i = 0; i < textLen; i++) expect(isZero(row(e, i))).toBe(false);
    const end = row(encodePrompt('', tiny), 0);
    // The last row is the end token at position textLen - 1, not word 15.
    const last = row(e, textLen - 1);
    let diff = 0;
    for (let j = 0; j < textDim; j++) diff = Math.max(diff, Math.abs(last[j] - end[j]));
    expect(diff).toBeLessThan(0.25);
  });
});

describe('loadTextEmbeddings', () => {
  it('zero-pads cond and uncond to textLen and defaults uncond to the empty prompt', () => {
    const cond = Float32Array.from({ length: 5 * textDim }, (_, i) => Math.sin(i));
    const uncond = Float32Array.from({ length: 2 * textDim }, (_, i) => Math.cos(i));
    const p = path.join(dir, 'emb.safetensors');
    writeSafetensors(p, [{ name: 'cond', shape: [1, 5, textDim], data: cond }, { name: 'uncond', shape: [2, textDim], data: uncond, dtype: 'F16' }]);
    const r = loadTextEmbeddings(p, tiny);
    expect(r.cond.length).toBe(textLen * textDim);
    expect(r.cond.subarray(0, 5 * textDim)).toEqual(cond);
    expect(isZero(r.cond.subarray(5 * textDim))).toBe(true);
    for (let i = 0; i < uncond.length; i++) expect(Math.abs(r.uncond[i] - uncond[i])).toBeLessThan(1e-3);
    expect(isZero(r.uncond.subarray(2 * textDim))).toBe(true);

    const q = path.join(dir, 'cond-only.safetensors');
    writeSafetensors(q, [{ name: 'cond', shape: [5, textDim], data: cond }]);
    expect(loadTextEmbeddings(q, tiny).uncond).toEqual(encodePrompt('', tiny));
  });

  it('errors name the file and the tensor', () => {
    const p = path.join(dir, 'bad.safetensors');
    writeSafetensors(p, [{ name: 'other', shape: [1], data: new Float32Array(1) }]);
    expect(() => loadTextEmbeddings(p, tiny)).toThrow(`${p}: tensor 'cond' not found`);
    writeSafetensors(p, [{ name: 'cond', shape: [3, 32], data: new Float32Array(96) }]);
    expect(() => loadTextEmbeddings(p, tiny)).toThrow(`${p}: tensor 'cond': expected [n, 64] (n <= 16), file has [3, 32]`);
    writeSafetensors(p, [{ name: 'cond', shape: [20, textDim], data: new Float32Array(20 * textDim) }]);
    expect(() => loadTextEmbeddings(p, tiny)).toThrow(`${p}: tensor 'cond': 20 tokens, expected 1..16`);
    writeSafetensors(p, [
      { name: 'cond', shape: [1, textDim], data: new Float32Array(textDim) },
      { name: 'uncond', shape: [1, textDim], data: new Float32Array(textDim).fill(NaN) },
    ]);
    expect(() => loadTextEmbeddings(p, tiny)).toThrow(`${p}: tensor 'uncond' contains NaN or infinite values`);
  });
});
