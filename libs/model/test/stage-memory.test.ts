import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getConfig } from '../src/config';
import { writeSeededPipeline } from '../src/pipeline-dir';

const run = promisify(execFile);
let dir: string;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-sparse-'));
  // The real 1.3B layout in BF16, 3 shards per component: headers plus sparse, all-zero data
  // (about 2.8 GB of transformer and 11 GB of text encoder that occupy a few kilobytes on disk).
  writeSeededPipeline(path.join(dir, 'wan'), { config: getConfig('wan2.1-t2v-1.3b'), seed: 0, shards: 3, dtype: 'BF16', layoutOnly: true });
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('loading one stage of a sharded BF16 checkpoint', () => {
  it('grows the resident set by no more than 1.1 x the float32 bytes the stage holds', async () => {
    const transformer = path.join(dir, 'wan/transformer');
    const onDisk = fs.readdirSync(transformer).filter((f) => f.endsWith('.safetensors')).reduce((n, f) => n + fs.statSync(path.join(transformer, f)).size, 0);
    expect(onDisk).toBeGreaterThan(2.5e9);
    // Stage 10 of 30 holds layer 10 (about 70 M parameters), which sits where shards 1 and 2 meet.
    const child = path.join(__dirname, 'helpers/load-stage-rss.ts');
    const { stdout } = await run(process.execPath, ['--expose-gc', '--import', 'tsx', child, path.join(dir, 'wan'), '30', '10'], { cwd: path.resolve(__dirname, '../../..') });
    const r = JSON.parse(stdout.trim().split('\n').pop()!) as { before: number; after: number; held: number; engineBytes: number; storedBytes: number; files: string[] };
    const grown = r.after - r.before;
    console.log(`stage [10, 11) of the BF16 1.3B: read ${(r.storedBytes / 2 ** 20).toFixed(1)} MiB from ${r.files.join(', ')}; engine holds ${(r.engineBytes / 2 ** 20).toFixed(1)} MiB; RSS grew ${(grown / 2 ** 20).toFixed(1)} MiB (${(grown / r.engineBytes).toFixed(3)} x)`);
    expect(r.held).toBe(r.engineBytes);
    expect(r.storedBytes * 2).toBe(r.engineBytes);
    expect(grown).toBeLessThanOrEqual(1.1 * r.engineBytes);
    // It did load the stage (the bound above is not met by loading nothing).
    expect(grown).toBeGreaterThanOrEqual(0.9 * r.engineBytes);
  });
});
