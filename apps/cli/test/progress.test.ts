import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import type { VideoStatus } from '../src/client';
import { JobLog } from '../src/job-log';
import { formatDuration, formatProgress, Progress } from '../src/progress';

describe('the progress line', () => {
  const long = `denoising job-${'f'.repeat(120)} ${'a paper boat drifting down a rain-soaked street '.repeat(4)}`;

  it('fits 80 columns whatever the label, counts and ETA', () => {
    for (const label of ['starting the cluster', 'loading weights', 'encoding the prompt', 'denoising job-1a2b3c4d5e6f', 'decoding the last blocks', long]) {
      for (const [done, total] of [[0, 1], [1, 3], [500, 1000], [999_999, 1_000_000], [7, 7]]) {
        for (const eta of [null, 3, 4000, 1e7]) {
          const line = formatProgress({ label, done, total, unit: 'block-steps', elapsedSeconds: 12, etaSeconds: eta });
          expect(line.length, line).toBeLessThanOrEqual(80);
          expect(line).toMatch(/\[[#.]+\]/);
          expect(line).toMatch(done === total ? /100% .*in 12s$/ : eta === null ? /eta \?$/ : /eta \d/);
        }
      }
      const phase = formatProgress({ label, elapsedSeconds: 3725 });
      expect(phase.length).toBeLessThanOrEqual(80);
      expect(phase).toMatch(/ 1h02m$/);
    }
    expect(formatProgress({ label: long, done: 1, total: 2, unit: 'block-steps', elapsedSeconds: 1, etaSeconds: 1 })).toMatch(/^denoising job-f+… \[/);
    expect(formatProgress({ label: 'denoising job-1', done: 45, total: 100, unit: 'block-steps', elapsedSeconds: 10, etaSeconds: 72 })).toBe(
      `denoising job-1 [${'#'.repeat(13)}${'.'.repeat(15)}]  45% 45/100 block-steps eta 1m12s`,
    );
    expect(formatProgress({ label: 'x', done: 1, total: 2, elapsedSeconds: 1, etaSeconds: 1 }, 40).length).toBeLessThanOrEqual(40);
    expect([formatDuration(0), formatDuration(59.4), formatDuration(75), formatDuration(7200)]).toEqual(['0s', '59s', '1m15s', '2h00m']);
  });

  it('prints each phase, a tenth of the bar at a time, on a stream that is not a terminal', () => {
    let text = '';
    const stream = new Writable({ write: (chunk, _enc, done) => ((text += String(chunk)), done()) });
    let now = 0;
    const p = new Progress(stream, () => now);
    p.phase('starting the cluster');
    now = 2000;
    p.start('loading weights', 2, 'stages');
    p.tick();
    p.tick();
    p.phase('encoding the prompt');
    p.start('denoising job-1', 100, 'block-steps');
    for (let i = 0; i < 100; i++) {
      now += 100;
      p.tick();
    }
    p.phase('decoding the last blocks');
    p.stop();
    const lines = text.trimEnd().split('\n');
    for (const line of lines) expect(line.length).toBeLessThanOrEqual(80);
    expect(lines[0]).toBe('starting the cluster 0s');
    expect(lines.filter((l) => l.startsWith('loading weights'))).toHaveLength(3);
    expect(lines.filter((l) => l.startsWith('denoising job-1'))).toHaveLength(11);
    expect(lines.find((l) => l.startsWith('denoising') && / 50% /.test(l))).toMatch(/50\/100 block-steps eta 5s$/);
    expect(lines.at(-2)).toMatch(/100% 100\/100 block-steps in 10s$/);
    expect(lines.at(-1)).toBe('decoding the last blocks 0s');
  });
});

describe("up's job log", () => {
  const job = { id: 'job-1', spec: { frames: 13, width: 32, height: 32, steps: 2, model: 'tiny' } } as unknown as VideoStatus;
  const ev = (event: string, data: unknown = {}) => ({ id: null, event, data });

  it("turns a job's events into one line each: queued, running, quarters of denoising, retrying, the end", () => {
    const log = new JobLog();
    const events = [
      ev('queued'),
      ev('started', { stages: 2, workers: ['w-0', 'w-1'], attempt: 1 }),
      ev('block', { index: 0 }),
      ...Array.from({ length: 8 }, (_, i) => ev('progress', { blockStepsDone: i + 1, blockSteps: 8, etaSeconds: 7 - i })),
      ev('retrying', { error: 'worker w-1 lost' }),
      ev('started', { stages: 2, layout: { ulysses: 1, cfgParallel: false }, workers: ['w-0', 'w-2'], attempt: 2 }),
      ev('progress', { blockStepsDone: 4, blockSteps: 8, etaSeconds: 2 }),
      ev('succeeded', { result: { seconds: 3.25, frames: 13, latentSha256: 'ab'.repeat(32) } }),
    ];
    expect(events.map((e) => log.line(job, e)).filter(Boolean)).toEqual([
      'job job-1 queued: 13 frames 32x32, 2 steps, model tiny',
      'job job-1 running: 2 stage(s) on w-0, w-1 (attempt 1)',
      'job job-1 denoising: 25% (2/8 block-steps, eta 6 s)',
      'job job-1 denoising: 50% (4/8 block-steps, eta 4 s)',
      'job job-1 denoising: 75% (6/8 block-steps, eta 2 s)',
      'job job-1 retrying: worker w-1 lost',
      'job job-1 running: 2 stage(s) on w-0, w-2 (attempt 2)',
      'job job-1 denoising: 50% (4/8 block-steps, eta 2 s)',
      'job job-1 succeeded in 3.3 s: 13 frames, latentSha256 abababababababab…',
    ]);
    expect(log.line(job, ev('started', { stages: 1, layout: { ulysses: 2, cfgParallel: true }, workers: ['w-0', 'w-1', 'w-2', 'w-3'], attempt: 1 }))).toBe(
      'job job-1 running: 1 stage(s) (K=1 x U=2 x CFG) on w-0, w-1, w-2, w-3 (attempt 1)',
    );
    expect(log.line(job, ev('failed', { error: { message: 'out of memory' } }))).toBe('job job-1 failed: out of memory');
    expect(log.line(job, ev('canceled'))).toBe('job job-1 canceled');
  });
});
