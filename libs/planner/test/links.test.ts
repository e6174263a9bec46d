import { describe, expect, it } from 'vitest';
import { describeLinks, getProfile, hopBytes, hopLink, jobTiming, linkSeconds, normalizeSpec, placementLinks, predictPipelineSeconds, type ModelShape, type StagePlacement } from '@longshot/planner';

const H100 = getProfile('h100-100gbe');
const L = H100.links;
const at = (host: string | null, over: Partial<StagePlacement> = {}): StagePlacement => ({ host, nvlinkDomain: null, gpu: null, nicBytesPerSecond: null, ...over });

describe('hop links from the placement', () => {
  it('nearest first: one GPU, one NVLink domain (across hosts too), one host, the network', () => {
    expect(hopLink(at('a', { gpu: 'GPU-1' }), at('a', { gpu: 'GPU-1' }), L)).toEqual({ kind: 'device', ...L.device });
    expect(hopLink(at('a', { gpu: 'GPU-1', nvlinkDomain: 'n1' }), at('a', { gpu: 'GPU-2', nvlinkDomain: 'n1' }), L)).toEqual({ kind: 'nvlink', ...L.nvlink });
    // A multi-node NVLink domain: two hosts, one domain.
    expect(hopLink(at('a', { nvlinkDomain: 'rack-1' }), at('b', { nvlinkDomain: 'rack-1' }), L).kind).toBe('nvlink');
    expect(hopLink(at('a', { gpu: 'GPU-1', nvlinkDomain: 'n1' }), at('a', { gpu: 'GPU-2', nvlinkDomain: 'n2' }), L)).toEqual({ kind: 'host', ...L.host });
    expect(hopLink(at('a'), at('a'), L).kind).toBe('host');
    expect(hopLink(at('a'), at('b'), L)).toEqual({ kind: 'network', ...L.network });
  });

  it('a GPU named alike on two hosts is not one GPU; unknown hosts and empty domains share nothing', () => {
    expect(hopLink(at('a', { gpu: 'GPU-1' }), at('b', { gpu: 'GPU-1' }), L).kind).toBe('network');
    expect(hopLink(at(null), at(null), L).kind).toBe('network');
    expect(hopLink(at('a', { nvlinkDomain: '' }), at('b', { nvlinkDomain: '' }), L).kind).toBe('network');
  });

  it('across hosts: the smaller registered link speed, the profile\'s network latency', () => {
    expect(hopLink(at('a', { nicBytesPerSecond: 50e9 }), at('b', { nicBytesPerSecond: 25e9 }), L)).toEqual({ kind: 'network', bytesPerSecond: 25e9, latencySeconds: L.network.latencySeconds });
    expect(hopLink(at('a', { nicBytesPerSecond: 50e9 }), at('b'), L).bytesPerSecond).toBe(50e9);
    // Within a host the NIC plays no part.
    expect(hopLink(at('a', { nicBytesPerSecond: 1e9 }), at('a', { nicBytesPerSecond: 1e9 }), L).bytesPerSecond).toBe(L.host.bytesPerSecond);
  });

  it('a ring of hops, the tail\'s back to the head last; none for one stage', () => {
    // Two nodes of two GPUs, each node its own NVLink domain.
    const stages = [0, 1, 2, 3].map((k) => at(`node-${k >> 1}`, { nvlinkDomain: `node-${k >> 1}`, gpu: `GPU-${k}` }));
    expect(placementLinks(stages, L).map((h) => h.kind)).toEqual(['nvlink', 'network', 'nvlink', 'network']);
    expect(describeLinks(placementLinks(stages, L))).toBe('2 nvlink + 2 network');
    expect(placementLinks([at('a')], L)).toEqual([]);
  });
});

/** Wan2.1 14B's transformer. */
const WAN_14B: ModelShape = { dim: 5120, ffnDim: 13824, layers: 40, textLen: 512, latentChannels: 16 };
const spec = normalizeSpec({ prompt: 'x', width: 832, height: 480, frames: 4 * (16 * 4 - 1) + 1, steps: 10, stages: 4, model: 'wan2.1-t2v-14b' });

describe('the latency model on the leased workers\' links', () => {
  it('each hop takes its own link; without links every hop takes the profile\'s default one', () => {
    const bytes = hopBytes(spec, WAN_14B, 4);
    expect(bytes).toHaveLength(4);
    expect(bytes[3]).toBeLessThan(bytes[0]); // the velocity back to the head is smaller than hidden states
    const links = [L.nvlink, L.network, L.host, L.device];
    const t = jobTiming(spec, WAN_14B, 4, H100, undefined, undefined, links);
    expect(t.hopSeconds).toEqual(bytes.map((b, k) => linkSeconds(b, links[k])));
    expect(jobTiming(spec, WAN_14B, 4, H100).hopSeconds).toEqual(bytes.map((b) => b / H100.linkBytesPerSecond + H100.linkLatencySeconds));
    // The same placement on the NVLink profile's default gives the same timing as links all NVLink.
    expect(jobTiming(spec, WAN_14B, 4, getProfile('h100-nvlink'))).toEqual(jobTiming(spec, WAN_14B, 4, H100, undefined, undefined, Array(4).fill(L.nvlink)));
  });

  it('a job whose stages share an NVLink domain is predicted faster than one spread over hosts', () => {
    const oneDomain = placementLinks([0, 1, 2, 3].map((k) => at('n', { nvlinkDomain: 'n', gpu: `GPU-${k}` })), L);
    const spread = placementLinks([0, 1, 2, 3].map((k) => at(`n${k}`, { nicBytesPerSecond: 12.5e9 })), L);
    const seconds = (links: readonly { bytesPerSecond: number; latencySeconds: number }[]) => predictPipelineSeconds(jobTiming(spec, WAN_14B, 4, H100, undefined, undefined, links));
    expect(seconds(oneDomain)).toBeLessThan(seconds(spread));
  });

  it('refuses a link list that does not match the hops', () => {
    expect(() => jobTiming(spec, WAN_14B, 4, H100, undefined, undefined, [L.nvlink])).toThrow('need one link per hop: 4 hops for 4 stages, got 1 links');
  });
});
