import { DelayedError, UnrecoverableError, WaitingError } from 'bullmq';
import { describe, expect, it } from 'vitest';
import { ModelNameError } from '@longshot/model';
import { SpecError } from '@longshot/planner';
import { NoSpaceError } from '../src/repositories';
import { DECODE_TRIES, isPermanentSpecFailure, retriesDecode, settle, StopRun, waitForWorkers } from '../src/render/retry-policy';

/** gRPC status codes (grpc.status). */
const UNAVAILABLE = 14;
const PERMANENT = { INVALID_ARGUMENT: 3, PERMISSION_DENIED: 7, UNIMPLEMENTED: 12, UNAUTHENTICATED: 16 };

const firstOfThree = { made: 0, allowed: 3 };

describe('settle (what an ended-early render run means)', () => {
  it('passes a job the run already put back in the queue', () => {
    expect(settle(new DelayedError(), undefined, firstOfThree)).toEqual({ kind: 'requeued' });
    expect(settle(new WaitingError(), new StopRun('cancel'), firstOfThree)).toEqual({ kind: 'requeued' });
  });

  it('a cancel or a shutdown wins over whatever the pipeline threw, from the signal or thrown itself', () => {
    const aborted = new Error('This operation was aborted');
    expect(settle(aborted, new StopRun('cancel'), firstOfThree)).toEqual({ kind: 'cancel' });
    expect(settle(new StopRun('cancel'), undefined, firstOfThree)).toEqual({ kind: 'cancel' });
    expect(settle(aborted, new StopRun('shutdown'), { made: 2, allowed: 3 })).toEqual({ kind: 'hand-back' });
  });

  it('a run that lost its leases leaves the job to the run that holds them (takeover), on any attempt', () => {
    const s = settle(new Error('aborted'), new StopRun('lease-lost'), { made: 2, allowed: 3 });
    expect(s.kind).toBe('takeover');
    expect(s.kind === 'takeover' && s.error.message).toBe('aborted');
  });

  it('a stitch failure is reported as such, and retried while attempts are left', () => {
    const s = settle(new Error('aborted'), new StopRun('stitch', new Error('ffmpeg exited 1')), firstOfThree);
    expect(s).toMatchObject({ kind: 'retry', error: { message: 'stitching failed: ffmpeg exited 1' } });
  });

  it('fails for good on the last attempt, on an UnrecoverableError, and on a full results store (counted as ENOSPC)', () => {
    expect(settle(new Error('worker lost'), undefined, { made: 2, allowed: 3 })).toMatchObject({ kind: 'fail', noSpace: false });
    expect(settle(new Error('worker lost'), undefined, { made: 0, allowed: 1 })).toMatchObject({ kind: 'fail', noSpace: false });
    expect(settle(new UnrecoverableError('no free workers'), undefined, firstOfThree)).toMatchObject({ kind: 'fail', noSpace: false });
    expect(settle(new NoSpaceError('full'), undefined, firstOfThree)).toMatchObject({ kind: 'fail', noSpace: true });
    // ffmpeg's own ENOSPC, inside a stitch failure.
    const stitch = new StopRun('stitch', new Error('av_interleaved_write_frame(): No space left on device'));
    expect(settle(new Error('aborted'), stitch, firstOfThree)).toMatchObject({ kind: 'fail', noSpace: true, error: stitch });
  });

  it('retries anything else, and turns a non-Error into one', () => {
    expect(settle(new Error('UNAVAILABLE'), undefined, firstOfThree)).toMatchObject({ kind: 'retry', error: { message: 'UNAVAILABLE' } });
    expect(settle('boom', undefined, { made: 1, allowed: 3 })).toMatchObject({ kind: 'retry', error: { message: 'boom' } });
  });
});

describe('waitForWorkers', () => {
  const limits = { deadlineMs: 60_000, retryMs: 1000 };
  it('waits in the queue from the first time it found too few workers, until the deadline', () => {
    expect(waitForWorkers(undefined, 5000, limits)).toEqual({ kind: 'wait', since: 5000, retryAt: 6000 });
    expect(waitForWorkers(5000, 64_999, limits)).toEqual({ kind: 'wait', since: 5000, retryAt: 65_999 });
    expect(waitForWorkers(5000, 65_000, limits)).toEqual({ kind: 'deadline' });
  });
});

describe('retriesDecode', () => {
  it('tries a failed decode again up to DECODE_TRIES, never for a permanent gRPC code', () => {
    const lost = Object.assign(new Error('worker gone'), { code: UNAVAILABLE });
    expect(retriesDecode(lost, 1)).toBe(true);
    expect(retriesDecode(lost, DECODE_TRIES - 1)).toBe(true);
    expect(retriesDecode(lost, DECODE_TRIES)).toBe(false);
    expect(retriesDecode(new Error('no code'), 1)).toBe(true);
    for (const code of Object.values(PERMANENT)) {
      expect(retriesDecode(Object.assign(new Error('refused'), { code }), 1), `code ${code}`).toBe(false);
    }
  });
});

describe('isPermanentSpecFailure', () => {
  it('is true for what submit checked (the model or upload changed since), false for a Redis blip', () => {
    expect(isPermanentSpecFailure(new SpecError('textEmbeddingsId', 'no upload x'))).toBe(true);
    expect(isPermanentSpecFailure(new ModelNameError('no model tinyy'))).toBe(true);
    expect(isPermanentSpecFailure(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }))).toBe(false);
  });
});
