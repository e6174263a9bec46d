import * as path from 'node:path';
import { defineConfig } from 'vitest/config';

const root = path.resolve(__dirname, '..');
const everything = ['test/**/*.test.ts', 'libs/*/test/**/*.test.ts', 'apps/*/test/**/*.test.ts'];
const alone = ['test/e2e/memory.test.ts'];

// Forks, not threads: the native addon and child processes (redis-server, workers, ffmpeg)
// behave as they do in production only in a real process.
export default defineConfig({
  test: {
    root,
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 120_000,
    projects: [
      { extends: true, test: { name: 'suite', root, include: everything, exclude: alone, sequence: { groupOrder: 0 } } },
      // Measurements that the rest of the suite would disturb run after it, one file at a time.
      { extends: true, test: { name: 'alone', root, include: alone, sequence: { groupOrder: 1 } } },
    ],
  },
});
