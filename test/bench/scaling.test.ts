/** The scaling table (bench/scaling.ts): each placement's hops priced by planner links, and what it says binds. */
import { describe, expect, it } from 'vitest';
import { scalingTable } from '../../bench/scaling';

describe('scaling table over placements', () => {
  const table = scalingTable();
  const row = (placement: string, size: string, K: number) => table.rows.find((r) => r.placement === placement && r.size === size && r.stages === K)!;

  it('has K = 1, 8, 16, 32 for every placement and size, with the hops each placement gives', () => {
    expect(table.rows).toHaveLength(Object.keys(table.placements).length * 2 * 4);
    expect(row('nvlink', '832x480', 32).links).toBe('32 nvlink');
    expect(row('100gbe', '832x480', 16).links).toBe('16 network');
    // Nodes of 8: one node at K = 8; at 16 the hop between the nodes and the tail's back to the head cross the network.
    expect(row('mixed', '832x480', 8).links).toBe('8 nvlink');
    expect(row('mixed', '832x480', 16).links).toBe('14 nvlink + 2 network');
    expect(row('mixed', '1280x720', 32).links).toBe('28 nvlink + 4 network');
  });

  it('orders the placements by their links, and says where the data plane binds and where compute does', () => {
    for (const size of ['832x480', '1280x720']) {
      for (const K of [16, 32]) {
        const [nvlink, mixed, gbe, staged] = ['nvlink', 'mixed', '100gbe', 'staged'].map((p) => row(p, size, K));
        expect(nvlink.seconds).toBeLessThan(mixed.seconds);
        expect(mixed.seconds).toBeLessThan(gbe.seconds);
        expect(gbe.seconds).toBeLessThan(staged.seconds);
        expect([nvlink.binds, mixed.binds, gbe.binds]).toEqual(['compute', 'compute', 'compute']);
        expect(staged.binds).toBe('data plane');
        expect(staged.hopToStage).toBeGreaterThan(1);
      }
    }
    // K = 1 is the same job everywhere: no hops.
    expect(new Set(table.rows.filter((r) => r.stages === 1 && r.size === '832x480').map((r) => r.seconds)).size).toBe(1);
  });
});
