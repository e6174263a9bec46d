import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { Rng } from '@longshot/random';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '@longshot/dtype';
import { SafetensorsFile, writeSafetensors } from '../src/safetensors';

// Pass-through spy on positioned reads, to prove the reader touches only the tensors asked for.
vi.mock('fs', async (importOriginal) => {
  const real = await importOriginal<typeof import('fs')>();
  return { ...real, readSync: vi.fn(real.readSync) };
});

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-st-'));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function rand(n: number, key: string): Float32Array {
  return Rng.from('st-test', key).fillNormal(new Float32Array(n));
}

/** Writes a file with an arbitrary header object and data bytes, for malformed-file cases. */
function rawFile(name: string, header: unknown, data: Buffer, headerLenOverride?: bigint): string {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(headerLenOverride ?? BigInt(json.length));
  const p = path.join(dir, name);
  fs.writeFileSync(p, Buffer.concat([len, json, data]));
  return p;
}

describe('safetensors round trip', () => {
  const a = rand(64 * 16 * 4, 'a');
  const b = rand(37, 'b');
  const big = rand(3000, 'big').map((v) => v * 1000);

  it('F32 is exact, with metadata and 8-byte aligned data', () => {
    const p = path.join(dir, 'f32.safetensors');
    writeSafetensors(p, [
      { name: 'x.weight', shape: [64, 16, 1, 2, 2], data: a },
      { name: 'x.bias', shape: [37], data: () => b },
    ], { 'longshot.note': 'hello', format: 'pt' });
    const st = SafetensorsFile.open(p);
    expect(st.tensorNames()).toEqual(['x.weight', 'x.bias']);
    expect(st.metadata).toEqual({ 'longshot.note': 'hello', format: 'pt' });
    expect(st.info('x.weight')).toMatchObject({ dtype: 'F32', shape: [64, 16, 1, 2, 2] });
    expect(st.info('x.weight').begin % 8).toBe(0);
    expect(st.read('x.weight', [64, 16, 1, 2, 2])).toEqual(a);
    expect(st.read('x.bias')).toEqual(b);
    st.close();
    expect(fs.readdirSync(dir).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });

  for (const dtype of ['F16', 'BF16'] as const) {
    it(`${dtype} is within half a unit in the last place`, () => {
      const p = path.join(dir, `${dtype}.safetensors`);
      writeSafetensors(p, [{ name: 't', shape: [3000], data: big, dtype }]);
      expect(fs.statSync(p).size).toBeLessThan(3000 * 2 + 200);
      const st = SafetensorsFile.open(p);
      expect(st.info('t').dtype).toBe(dtype);
      const got = st.read('t', [3000]);
      st.close();
      const relHalfUlp = dtype === 'F16' ? 2 ** -11 : 2 ** -8;
      for (let i = 0; i < big.length; i++) {
        const v = big[i];
        // Outside F16's normal range the spacing is absolute (subnormals) or inf.
        const tol = Math.max(Math.abs(v) * relHalfUlp, dtype === 'F16' ? 2 ** -25 : 0);
        expect(Math.abs(got[i] - v)).toBeLessThanOrEqual(tol);
      }
      // Each stored value is exactly the rounding of the input.
      const enc = dtype === 'F16' ? (x: number) => f16ToF32(f32ToF16(x)) : (x: number) => bf16ToF32(f32ToBf16(x));
      expect(got).toEqual(Float32Array.from(big, enc));
    });
  }

  it('reads only the requested tensors with positioned reads', () => {
    const p = path.join(dir, 'partial.safetensors');
    const tensors = Array.from({ length: 10 }, (_, i) => ({ name: `blocks.${i}.w`, shape: [256], data: rand(256, `p${i}`) }));
    writeSafetensors(p, tensors);
    const st = SafetensorsFile.open(p);
    const spy = vi.mocked(fs.readSync);
    spy.mockClear();
    try {
      const got = st.read('blocks.7.w', [256]);
      expect(got).toEqual(tensors[7].data);
      const calls = spy.mock.calls as unknown as unknown[][];
      const bytes = calls.reduce((n, c) => n + Number(c[3]), 0);
      expect(bytes).toBe(256 * 4);
      expect(calls.every((c) => c[4] === st.info('blocks.7.w').begin)).toBe(true);
    } finally {
      st.close();
    }
  });

  it('handles empty tensors and no metadata', () => {
    const p = path.join(dir, 'empty.safetensors');
    writeSafetensors(p, [{ name: 'e', shape: [0, 4], data: new Float32Array(0) }, { name: 's', shape: [], data: Float32Array.of(3.5) }]);
    const st = SafetensorsFile.open(p);
    expect(st.metadata).toEqual({});
    expect(st.read('e', [0, 4]).length).toBe(0);
    expect(Array.from(st.read('s', []))).toEqual([3.5]);
    st.close();
  });

  it('writer rejects data that does not fill the shape and leaves no file', () => {
    const p = path.join(dir, 'bad-write.safetensors');
    expect(() => writeSafetensors(p, [{ name: 'w', shape: [2, 3], data: new Float32Array(5) }])).toThrow(/tensor 'w': 5 values do not fill shape \[2, 3\]/);
    expect(fs.existsSync(p)).toBe(false);
    expect(fs.readdirSync(dir).filter((f) => f.includes('bad-write'))).toEqual([]);
    expect(() => writeSafetensors(p, [{ name: 'w', shape: [1], data: new Float32Array(1) }, { name: 'w', shape: [1], data: new Float32Array(1) }])).toThrow(/duplicate/);
  });
});

describe('safetensors errors name the file and the tensor', () => {
  let good: string;
  beforeAll(() => {
    good = path.join(dir, 'good.safetensors');
    writeSafetensors(good, [{ name: 'patch_embedding.weight', shape: [64, 16, 1, 2, 2], data: rand(4096, 'pe') }]);
  });

  it('missing tensor', () => {
    const st = SafetensorsFile.open(good);
    expect(() => st.read('proj_out.weight')).toThrow(`${good}: tensor 'proj_out.weight' not found`);
    st.close();
  });

  it('shape mismatch', () => {
    const st = SafetensorsFile.open(good);
    expect(() => st.read('patch_embedding.weight', [64, 16, 1, 3, 3])).toThrow(
      `${good}: tensor 'patch_embedding.weight': expected [64, 16, 1, 3, 3], file has [64, 16, 1, 2, 2]`,
    );
    st.close();
  });

  it('truncated file', () => {
    const full = fs.readFileSync(good);
    const p = path.join(dir, 'trunc.safetensors');
    fs.writeFileSync(p, full.subarray(0, full.length - 10));
    expect(() => SafetensorsFile.open(p)).toThrow(new RegExp(`${p.replace(/[.]/g, '\\.')}: tensor 'patch_embedding.weight': truncated file: data_offsets end 16384 is past the end`));
  });

  it('data_offsets past the end', () => {
    const p = rawFile('past.safetensors', { t: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, Buffer.alloc(8));
    expect(() => SafetensorsFile.open(p)).toThrow(`${p}: tensor 't': truncated file: data_offsets end 16 is past the end of the data section (8 bytes)`);
  });

  it('overlapping offsets', () => {
    const p = rawFile('overlap.safetensors', {
      a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] },
      b: { dtype: 'F32', shape: [4], data_offsets: [8, 24] },
    }, Buffer.alloc(24));
    expect(() => SafetensorsFile.open(p)).toThrow(`${p}: tensors 'a' [0, 16) and 'b' [8, 24) overlap`);
  });

  it('misordered offsets', () => {
    const p = rawFile('misorder.safetensors', { t: { dtype: 'F32', shape: [0], data_offsets: [16, 8] } }, Buffer.alloc(16));
    expect(() => SafetensorsFile.open(p)).toThrow(`${p}: tensor 't': data_offsets [16, 8] are misordered`);
  });

  it('byte length not matching dtype x shape', () => {
    const p = rawFile('len.safetensors', { t: { dtype: 'F16', shape: [2, 3], data_offsets: [0, 24] } }, Buffer.alloc(24));
    expect(() => SafetensorsFile.open(p)).toThrow(`${p}: tensor 't': byte length 24 does not match dtype F16 x shape [2, 3] = 12 bytes`);
  });

  it('unsupported dtype says which', () => {
    const p = rawFile('f64.safetensors', {
      d: { dtype: 'F64', shape: [2], data_offsets: [0, 16] },
      i: { dtype: 'I8', shape: [8], data_offsets: [16, 24] },
    }, Buffer.alloc(24));
    const st = SafetensorsFile.open(p); // other tensors stay readable
    expect(() => st.read('d')).toThrow(`${p}: tensor 'd' has unsupported dtype F64 (supported: F32, F16, BF16)`);
    expect(() => st.read('i')).toThrow(`${p}: tensor 'i' has unsupported dtype I8`);
    st.close();
  });

  it('header not valid JSON', () => {
    const p = rawFile('json.safetensors', '{"t": {"dtype": ', Buffer.alloc(0));
    expect(() => SafetensorsFile.open(p)).toThrow(new RegExp(`${p.replace(/[.]/g, '\\.')}: header is not valid JSON`));
  });

  it('absurd header length', () => {
    const p = rawFile('absurd.safetensors', '{}', Buffer.alloc(0), 1n << 40n);
    expect(() => SafetensorsFile.open(p)).toThrow(`${p}: header length 1099511627776 is absurd`);
    const q = rawFile('short-header.safetensors', '{}', Buffer.alloc(0), 1000n);
    expect(() => SafetensorsFile.open(q)).toThrow(`${q}: truncated: header claims 1000 bytes`);
  });

  it('file shorter than the length prefix', () => {
    const p = path.join(dir, 'tiny.safetensors');
    fs.writeFileSync(p, Buffer.alloc(3));
    expect(() => SafetensorsFile.open(p)).toThrow(`${p}: not a safetensors file: 3 bytes`);
  });

  it('reading after close', () => {
    const st = SafetensorsFile.open(good);
    st.close();
    expect(() => st.read('patch_embedding.weight')).toThrow(`${good}: file is closed (reading tensor 'patch_embedding.weight')`);
  });
});
