import { describe, expect, it } from 'vitest';
import { getConfig, windowLatents } from '@longshot/model';
import { FAILURE_REPORT_BYTES, GroupLink, decodeFailureReport, encodeFailureReport, groupMessageBound, groupPlace, inboxId, tensorShapes } from '../src/stage-group';

const member = (i: number) => ({ address: `127.0.0.1:${5000 + i}`, sessionId: `job.s1.m${i}`, token: `t${i}`.padEnd(24, 'x'), dataPlane: undefined });

describe('stage group sessions (docs/parallelism.md)', () => {
  it("rank 0 of a head group reads the window where it is; the other members get it assembled, once", () => {
    const config = getConfig('tiny');
    const step = { iteration: 3, block: 1, step: 2, timestep: 700, prefixFrames: 2, ownFrames: 3, contextFrames: 2, height: 4, width: 6 };
    const frame = step.height * step.width;
    const sources = { latents: Float32Array.from({ length: 16 * 3 * frame }, (_, i) => i), prefix: Float32Array.from({ length: 16 * 3 * frame }, (_, i) => -i) };
    const [own, ...theirs] = tensorShapes(config, { ulysses: 2, cfgParallel: true }, true).inputs(step, sources);
    expect(own).toBe(sources);
    expect(theirs).toHaveLength(3);
    expect(theirs.every((t) => t === theirs[0])).toBe(true);
    expect(theirs[0]).toEqual(windowLatents(step, sources));
    // Channel 1 of the window: frames 1 and 2 of the prefix source, then the block's 3 frames.
    expect(Array.from(theirs[0].subarray(5 * frame, 5 * frame + 2))).toEqual([-(3 * frame + frame), -(3 * frame + frame + 1)]);
    expect(Array.from(theirs[0].subarray(7 * frame, 7 * frame + 2))).toEqual([3 * frame, 3 * frame + 1]);
    expect(() => tensorShapes(config, { ulysses: 2, cfgParallel: false }, false).inputs(step, sources)).toThrow(/after the head takes hidden states/);
  });

  it('groupPlace checks the layout, the member list and that this session is members[rank]', () => {
    const members = [0, 1, 2, 3].map(member);
    const spec = { ulysses: 2, cfgParallel: true, rank: 1, members };
    expect(groupPlace(spec, members[1].sessionId, members[1].token)).toEqual({ layout: { ulysses: 2, cfgParallel: true }, rank: 1, members });
    expect(() => groupPlace({ ...spec, members: members.slice(0, 3) }, members[1].sessionId, members[1].token)).toThrow(/group\.members lists 3 members, the layout has 4/);
    expect(() => groupPlace({ ...spec, rank: 4 }, members[1].sessionId, members[1].token)).toThrow(/group\.rank must be in 0\.\.3, got 4/);
    expect(() => groupPlace(spec, 'another', members[1].token)).toThrow(/group\.members\[1\] is not this session/);
    expect(() => groupPlace({ ...spec, ulysses: 0 }, members[1].sessionId, members[1].token)).toThrow(/group\.ulysses must be a positive integer/);
    const noToken = members.map((m, i) => (i === 2 ? { ...m, token: 'short' } : m));
    expect(() => groupPlace({ ...spec, members: noToken }, members[1].sessionId, members[1].token)).toThrow(/group\.members\[2\] needs/);
  });

  it('a member takes each peer and channel on its own inbox and delivers in order, before or after the receive', async () => {
    const members = [0, 1, 2].map(member);
    const link = new GroupLink(groupPlace({ ulysses: 3, cfgParallel: false, rank: 1, members }, members[1].sessionId, members[1].token), { dataPlane: { mode: 'grpc', hostId: '' }, onFailure: () => undefined });
    const self = members[1].sessionId;
    expect(link.inboxes()).toEqual([inboxId(self, 0), inboxId(self, 0, 'exchange'), inboxId(self, 2), inboxId(self, 2, 'exchange')]);
    expect(new Set(link.inboxes()).size).toBe(4);
    expect(link.peerOf(inboxId(self, 2, 'exchange'))).toEqual({ peer: 2, channel: 'exchange' });
    expect(link.peerOf(inboxId(self, 0))).toEqual({ peer: 0, channel: 'stage' });
    expect(link.peerOf(inboxId(self, 1))).toBeNull();
    expect(link.peerOf(self)).toBeNull();
    const step = { iteration: 0, block: 0, step: 0, timestep: 999, prefixFrames: 0, ownFrames: 2, contextFrames: 1, height: 8, width: 8 };
    link.deliver(0, 'stage', step, Float32Array.of(1));
    link.deliver(0, 'exchange', step, Float32Array.of(10));
    const waiting = link.receive(2, 'exchange');
    link.deliver(2, 'exchange', step, Float32Array.of(2));
    link.deliver(0, 'stage', step, Float32Array.of(3));
    expect((await link.receive(0, 'stage')).data[0]).toBe(1);
    expect((await link.receive(0, 'exchange')).data[0]).toBe(10);
    expect((await waiting).data[0]).toBe(2);
    expect((await link.receive(0, 'stage')).data[0]).toBe(3);
    const pending = link.receive(0, 'stage');
    await link.close();
    await expect(pending).rejects.toThrow(/the stage group closed/);
  });

  it("a member's failure report: padded UTF-8 on the wire; rank 0's group fails at once with the member's error", async () => {
    const report = encodeFailureReport('forward threw: déjà vu');
    expect(report.length % 4).toBe(0);
    expect(decodeFailureReport(report)).toBe('forward threw: déjà vu');
    expect(encodeFailureReport('').length).toBe(4);
    const long = encodeFailureReport('é'.repeat(FAILURE_REPORT_BYTES));
    expect(long.length).toBeLessThanOrEqual(FAILURE_REPORT_BYTES);
    expect(decodeFailureReport(long)).toBe('é'.repeat(FAILURE_REPORT_BYTES / 2));

    const members = [0, 1, 2].map(member);
    const failures: Error[] = [];
    const front = new GroupLink(groupPlace({ ulysses: 3, cfgParallel: false, rank: 0, members }, members[0].sessionId, members[0].token), { dataPlane: { mode: 'grpc', hostId: '' }, onFailure: (e) => failures.push(e) });
    // Rank 0 waits for member 1's output and member 2's exchange part, as its forward does.
    const output = front.receive(1, 'stage');
    const part = front.receive(2, 'exchange');
    front.deliverFailure(2, 'block 3 iteration 1: the forward threw');
    await expect(output).rejects.toThrow('stage group member 2 (127.0.0.1:5002) failed: block 3 iteration 1: the forward threw');
    await expect(part).rejects.toThrow(/member 2 .* failed/);
    front.deliverFailure(1, 'a second report');
    expect(failures.map((e) => e.message)).toEqual(['stage group member 2 (127.0.0.1:5002) failed: block 3 iteration 1: the forward threw']);
    await expect(front.receive(1, 'stage')).rejects.toThrow(/member 2/);
    await expect(front.send(1, 'stage', { iteration: 0, block: 0, step: 0, timestep: 999, prefixFrames: 0, ownFrames: 2, contextFrames: 1, height: 8, width: 8 }, Float32Array.of(1))).rejects.toThrow(/member 2/);
    // Rank 0 has nobody to report to.
    await expect(front.reportFailure(new Error('x'))).resolves.toBeUndefined();
    await front.close();
  });

  it('bounds a group message by the block-step (five hidden states, or the window latents)', () => {
    const c = getConfig('tiny');
    const step = { iteration: 1, block: 1, step: 0, timestep: 999, prefixFrames: 1, ownFrames: 2, contextFrames: 1, height: 8, width: 8 };
    expect(groupMessageBound(step, { ulysses: 2, cfgParallel: false }, c.heads, c.dim, c.latentChannels)).toBe(5 * 2 * 3 * 16 * 64);
    expect(groupMessageBound(step, { ulysses: 1, cfgParallel: true }, c.heads, c.dim, c.latentChannels)).toBe((5 * 2 * 3 * 16 * 64) / 2);
  });
});
