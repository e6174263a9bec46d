import { describe, expect, it } from 'vitest';
import type { WorkerInfo } from '@longshot/cache';
import { candidates, workerState } from '../src';

const worker = (id: string, over: Partial<WorkerInfo> = {}): WorkerInfo => ({
  id,
  address: `127.0.0.1:${1000 + id.length}`,
  metricsAddress: '127.0.0.1:9',
  capacity: 2,
  sessions: 0,
  models: ['*'],
  backend: 'cpu',
  numerics: 'cpu:simd=avx2:storage=f32:build=000000000000',
  pid: 1,
  startedAt: 0,
  ...over,
});

describe('worker availability', () => {
  it('a worker whose sessions fill its capacity is full, not free; a leased one is leased', () => {
    expect(workerState(worker('a'), false)).toBe('free');
    expect(workerState(worker('a', { sessions: 2 }), false)).toBe('full');
    expect(workerState(worker('a', { sessions: 1 }), true)).toBe('leased');
  });

  it('candidates: serving the model, not full, of the pinned numerics, least busy first', () => {
    const scalar = 'cpu:simd=scalar:storage=f32:build=000000000000';
    const ws = [
      worker('c', { sessions: 1 }),
      worker('b'),
      worker('full', { sessions: 2 }),
      worker('other-model', { models: ['wan2.1-t2v-1.3b'] }),
      worker('s', { numerics: scalar }),
    ];
    expect(candidates(ws, 'tiny')).toEqual(['b', 's', 'c']);
    expect(candidates(ws, 'wan2.1-t2v-1.3b')).toEqual(['b', 'other-model', 's', 'c']);
    expect(candidates(ws, 'tiny', new Set(['b']))).toEqual(['s', 'c']);
    expect(candidates(ws, 'tiny', new Set(), scalar)).toEqual(['s']);
    expect(candidates(ws, 'tiny', new Set(), ws[0].numerics)).toEqual(['b', 'c']);
  });
});
