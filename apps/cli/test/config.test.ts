import { describe, expect, it } from 'vitest';
import { loadCliConfig } from '../src/config';

describe('CLI config: keys the libraries used to read themselves', () => {
  it('reads LONGSHOT_KEY_ROOT, LONGSHOT_LOG_LEVEL and the engine settings, with their defaults', () => {
    expect(loadCliConfig({})).toMatchObject({ keys: { root: 'longshot' }, logLevel: 'info', engine: { threads: null, simd: null, cudaDevice: 0, cudaCacheMb: null } });
    const c = loadCliConfig({ LONGSHOT_KEY_ROOT: 'mine', LONGSHOT_LOG_LEVEL: 'warn', LONGSHOT_THREADS: '2', LONGSHOT_SIMD: 'scalar' });
    expect(c).toMatchObject({ keys: { root: 'mine' }, logLevel: 'warn', engine: { threads: 2, simd: 'scalar' } });
  });

  it('names the variable of a bad value', () => {
    expect(() => loadCliConfig({ LONGSHOT_THREADS: 'abc' })).toThrow('LONGSHOT_THREADS must be an integer in 1..4096, got "abc"');
    expect(() => loadCliConfig({ LONGSHOT_KEY_ROOT: 'x{y' })).toThrow(/^LONGSHOT_KEY_ROOT: /);
  });
});
