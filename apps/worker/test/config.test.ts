import { describe, expect, it } from 'vitest';
import { workerConfig } from '../src/config';

const env = { REDIS_URL: 'redis://127.0.0.1:6379', LONGSHOT_GRANT_KEYS: `k:${'s'.repeat(32)}` };
const load = (extra: Record<string, string> = {}) => workerConfig([], { ...env, ...extra });

describe('worker config: keys the libraries used to read themselves', () => {
  it('LONGSHOT_KEY_ROOT: the root of the keys it reads and writes, default longshot; a bad root names the variable', () => {
    expect(load().config.keys.root).toBe('longshot');
    expect(load({ LONGSHOT_KEY_ROOT: 'tenant-a' }).config.keys.jobIdOf('tenant-a:job:{j1}')).toBe('j1');
    expect(() => load({ LONGSHOT_KEY_ROOT: 'a:b' })).toThrow(/^LONGSHOT_KEY_ROOT: key root "a:b" must not contain ':'/);
  });

  it('engine settings: unset leaves the engine its defaults', () => {
    expect(load().engine).toEqual({ threads: null, simd: null, cudaDevice: 0, cudaCacheMb: null });
  });

  it('engine settings: LONGSHOT_THREADS, LONGSHOT_SIMD, LONGSHOT_CUDA_DEVICE, LONGSHOT_CUDA_CACHE_MB are read and checked', () => {
    expect(load({ LONGSHOT_THREADS: '3', LONGSHOT_SIMD: 'avx2', LONGSHOT_CUDA_DEVICE: '1', LONGSHOT_CUDA_CACHE_MB: '0' }).engine).toEqual({ threads: 3, simd: 'avx2', cudaDevice: 1, cudaCacheMb: 0 });
    expect(load({ LONGSHOT_THREADS: '', LONGSHOT_SIMD: '' }).engine).toMatchObject({ threads: null, simd: null });
  });

  it('a bad engine value is an error naming its variable and the value', () => {
    expect(() => load({ LONGSHOT_THREADS: 'abc' })).toThrow('LONGSHOT_THREADS must be an integer in 1..4096, got "abc"');
    expect(() => load({ LONGSHOT_THREADS: '0' })).toThrow(/^LONGSHOT_THREADS must be an integer in 1\.\.4096/);
    expect(() => load({ LONGSHOT_THREADS: '2.5' })).toThrow(/^LONGSHOT_THREADS/);
    expect(() => load({ LONGSHOT_SIMD: 'sse4' })).toThrow('LONGSHOT_SIMD must be one of scalar, avx2, avx512, got "sse4"');
    expect(() => load({ LONGSHOT_CUDA_DEVICE: '-1' })).toThrow(/^LONGSHOT_CUDA_DEVICE must be an integer in 0\.\.1024, got "-1"/);
    expect(() => load({ LONGSHOT_CUDA_CACHE_MB: 'lots' })).toThrow(/^LONGSHOT_CUDA_CACHE_MB must be an integer/);
  });

  it('LONGSHOT_LOG_LEVEL: any case, default info', () => {
    expect(load().logLevel).toBe('info');
    expect(load({ LONGSHOT_LOG_LEVEL: 'Error' }).logLevel).toBe('error');
  });
});
