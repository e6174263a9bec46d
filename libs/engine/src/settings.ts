/**
 * The engine's settings, which the app reads from its config and passes in (configureEngine):
 * the engine itself reads no environment.
 */
export type SimdLevel = 'scalar' | 'avx2' | 'avx512';

export const SIMD_LEVELS: readonly SimdLevel[] = ['scalar', 'avx2', 'avx512'];

export interface EngineSettings {
  /** CPU thread pool size; null: one per hardware thread. */
  readonly threads: number | null;
  /** Highest SIMD level the CPU kernels may use (capped at what the CPU runs); null: the best it runs. */
  readonly simd: SimdLevel | null;
  /** The CUDA device to run on. */
  readonly cudaDevice: number;
  /** Device memory the weight cache may hold, in MiB (0 disables it); null: 40% of the device's. */
  readonly cudaCacheMb: number | null;
}

export const DEFAULT_ENGINE_SETTINGS: EngineSettings = { threads: null, simd: null, cudaDevice: 0, cudaCacheMb: null };

/**
 * The engine's variables as every app's config reads them (docs/configuration.md): `env` is the
 * app's environment, passed in. Unset or empty keeps the default; a bad value is an error naming
 * its variable.
 */
export function engineSettingsFromEnv(env: Readonly<Record<string, string | undefined>>): EngineSettings {
  const int = (name: string, min: number, max: number): number | null => {
    const v = env[name]?.trim();
    if (v === undefined || v === '') return null;
    const n = Number(v);
    if (!/^\d+$/.test(v) || n < min || n > max) throw new Error(`${name} must be an integer in ${min}..${max}, got ${JSON.stringify(env[name])}`);
    return n;
  };
  const simd = env.LONGSHOT_SIMD?.trim();
  if (simd && !SIMD_LEVELS.includes(simd as SimdLevel)) throw new Error(`LONGSHOT_SIMD must be one of ${SIMD_LEVELS.join(', ')}, got ${JSON.stringify(env.LONGSHOT_SIMD)}`);
  return {
    threads: int('LONGSHOT_THREADS', 1, 4096),
    simd: simd ? (simd as SimdLevel) : null,
    cudaDevice: int('LONGSHOT_CUDA_DEVICE', 0, 1024) ?? 0,
    cudaCacheMb: int('LONGSHOT_CUDA_CACHE_MB', 0, 2 ** 40),
  };
}
