import { describe, expect, it } from 'vitest';
import { trainerEnvironment } from '../src/config';

describe('trainer environment (train, eval, describe)', () => {
  it('reads LONGSHOT_LOG_LEVEL and the engine settings, with their defaults', () => {
    expect(trainerEnvironment({})).toEqual({ logLevel: 'info', engine: { threads: null, simd: null, cudaDevice: 0, cudaCacheMb: null } });
    expect(trainerEnvironment({ LONGSHOT_LOG_LEVEL: 'debug', LONGSHOT_THREADS: '4', LONGSHOT_CUDA_CACHE_MB: '512' })).toEqual({ logLevel: 'debug', engine: { threads: 4, simd: null, cudaDevice: 0, cudaCacheMb: 512 } });
  });

  it('names the variable of a bad value', () => {
    expect(() => trainerEnvironment({ LONGSHOT_THREADS: 'abc' })).toThrow('LONGSHOT_THREADS must be an integer in 1..4096, got "abc"');
    expect(() => trainerEnvironment({ LONGSHOT_SIMD: 'AVX2' })).toThrow(/^LONGSHOT_SIMD must be one of scalar, avx2, avx512/);
  });
});
