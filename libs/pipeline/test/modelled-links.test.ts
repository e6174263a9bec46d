import { describe, expect, it } from 'vitest';
import { getConfig } from '@longshot/model';
import { getProfile, hopBytes, normalizeSpec } from '@longshot/planner';
import { modelledLinks, type DriverWorker } from '../src';

const worker = (id: string, host: string, nvlinkDomain: string, linkGbps: number): DriverWorker => ({
  id,
  address: '127.0.0.1:1',
  numerics: 'n',
  dataPlane: { tcpAddress: '127.0.0.1:2', tcp: true, shm: true, hostId: host },
  topology: { gpu: { index: 0, uuid: `GPU-${id}`, name: 'NVIDIA H100 80GB HBM3' }, nvlinkDomain, linkGbps },
});

describe('the links the driver reports for an attempt\'s workers', () => {
  it('prices each hop by where its stages run, with the seconds of its tensor per block-step', () => {
    const profile = getProfile('h100-100gbe');
    const spec = normalizeSpec({ prompt: 'x', stages: 3, width: 256, height: 256 });
    const model = getConfig('tiny');
    // Two GPUs of one NVLink node, one on another host with a 400 Gb/s link (the 100 Gb/s one binds).
    const links = modelledLinks(spec, model, [worker('a', 'A', 'node-a', 100), worker('b', 'A', 'node-a', 100), worker('c', 'B', '', 400)], profile);
    expect(links.map((l) => [l.kind, l.bytesPerSecond, l.latencySeconds])).toEqual([
      ['nvlink', 450e9, 5e-6],
      ['network', 12.5e9, 20e-6],
      ['network', 12.5e9, 20e-6],
    ]);
    const bytes = hopBytes(spec, model, 3);
    expect(links.map((l) => l.seconds)).toEqual(links.map((l, k) => bytes[k] / l.bytesPerSecond + l.latencySeconds));
    expect(modelledLinks(spec, model, [worker('a', 'A', '', 0)], profile)).toEqual([]);
  });
});
