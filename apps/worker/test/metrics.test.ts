import { describe, expect, it } from 'vitest';
import { hostCpuSeconds } from '@longshot/engine';
import { HOST_CPU_PARTS, hostCpuByPart } from '../src/metrics';

describe('host CPU by part', () => {
  it('the parts add up to the process total: what the engine names, the rest as other', () => {
    const parts = hostCpuByPart({ jsThread: 1.5, kernels: 2, dataPlane: 0.25 }, 5);
    expect(parts).toEqual({ js: 1.5, kernels: 2, dataplane: 0.25, other: 1.25 });
    expect(HOST_CPU_PARTS.reduce((n, p) => n + parts[p], 0)).toBe(5);
  });

  it('other is never negative (the clocks are read one after the other)', () => {
    expect(hostCpuByPart({ jsThread: 1, kernels: 1, dataPlane: 1 }, 2.999).other).toBe(0);
  });

  it('on this process: other grows with work on a thread the engine does not clock', async () => {
    const { Worker } = await import('node:worker_threads');
    const before = hostCpuByPart();
    // A fixed amount of work (tens of ms of CPU, however loaded the machine) on a worker thread:
    // neither the JS thread, nor a graph, nor the data plane.
    await new Promise<void>((resolve, reject) => {
      const w = new Worker('let x = 0; for (let i = 0; i < 3e7; i++) x += Math.sqrt(x + i); if (x < 0) console.log(x);', { eval: true });
      w.on('exit', () => resolve());
      w.on('error', reject);
    });
    const after = hostCpuByPart();
    expect(after.other - before.other).toBeGreaterThan(0.005);
    expect(hostCpuSeconds().jsThread).toBeGreaterThanOrEqual(before.js);
  });
});
