import { defineConfig } from 'vitest/config';

// Forks, not threads: the native addon and child processes (redis-server, workers, ffmpeg)
// behave like they do in production only in a real process.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts', 'libs/*/test/**/*.test.ts', 'apps/*/test/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
