import type * as grpc from '@grpc/grpc-js';
import { assembleSpan, groupSize, memberShard, shardSpan, windowLatents, type BlockStep, type Collective, type ModelConfig, type StageInput, type StageLayout } from '@longshot/model';
import type { StageRunner } from '@longshot/pipeline';
import {
  chooseHopTransport,
  createWorkerClient,
  DataPlaneSender,
  encodePayload,
  PayloadKind,
  TensorSender,
  toWireDtype,
  type DataPlaneMode,
  type StageGroupMember,
  type StageGroupSpec,
  type WorkerClient,
} from '@longshot/transport';
import { workerMetrics } from './metrics';
import { SessionError } from './session-error';

/**
 * A group's two channels per ordered pair of members: `stage` carries rank 0's inputs and the
 * members' outputs, `exchange` what a forward's collectives send. Apart, rank 0 can send the next
 * block-step's inputs while the members still exchange for this one.
 */
export type GroupChannel = 'stage' | 'exchange';

/** The session id member `to` (session `sessionId`) takes member `from`'s tensors of `channel` on (its own data-plane key and stream). */
export function inboxId(sessionId: string, from: number, channel: GroupChannel = 'stage'): string {
  return `${sessionId}/from${from}${channel === 'exchange' ? '/x' : ''}`;
}

const CHANNELS: readonly GroupChannel[] = ['stage', 'exchange'];

/** The most bytes of a member's error message a failure report carries (longer ones are cut). */
export const FAILURE_REPORT_BYTES = 2048;

/** A member's error message as a PAYLOAD_KIND_GROUP_FAILURE payload: UTF-8, zero-padded to whole 4-byte words. */
export function encodeFailureReport(message: string): Buffer {
  let text = Buffer.from(message, 'utf8');
  if (text.length > FAILURE_REPORT_BYTES) text = Buffer.from(text.subarray(0, FAILURE_REPORT_BYTES).toString('utf8').replace(/\uFFFD$/, ''), 'utf8');
  const out = Buffer.alloc(Math.ceil(text.length / 4) * 4 || 4);
  text.copy(out);
  return out;
}

/** The message of a failure report (its zero padding dropped). */
export function decodeFailureReport(payload: Buffer): string {
  let end = payload.length;
  while (end > 0 && payload[end - 1] === 0) end--;
  return payload.subarray(0, end).toString('utf8');
}

/** A validated StageGroupSpec: the layout and this member's place in it. */
export interface GroupPlace {
  readonly layout: StageLayout;
  readonly rank: number;
  readonly members: readonly StageGroupMember[];
}

/** Checks an OpenSessionRequest's group against the session it opens; errors name the field. */
export function groupPlace(spec: StageGroupSpec, sessionId: string, token: string): GroupPlace {
  const layout = { ulysses: spec.ulysses, cfgParallel: spec.cfgParallel };
  if (!Number.isInteger(layout.ulysses) || layout.ulysses < 1) throw new SessionError('INVALID_ARGUMENT', `group.ulysses must be a positive integer, got ${spec.ulysses}`);
  const size = groupSize(layout);
  if (spec.members.length !== size) throw new SessionError('INVALID_ARGUMENT', `group.members lists ${spec.members.length} members, the layout has ${size}`);
  if (!Number.isInteger(spec.rank) || spec.rank >= size) throw new SessionError('INVALID_ARGUMENT', `group.rank must be in 0..${size - 1}, got ${spec.rank}`);
  const self = spec.members[spec.rank];
  if (self.sessionId !== sessionId || self.token !== token) throw new SessionError('INVALID_ARGUMENT', `group.members[${spec.rank}] is not this session`);
  spec.members.forEach((m, r) => {
    if (r !== spec.rank && (!m.address || !m.sessionId || m.token.length < 16)) throw new SessionError('INVALID_ARGUMENT', `group.members[${r}] needs an address, a session id and a token of at least 16 characters`);
  });
  return { layout, rank: spec.rank, members: spec.members };
}

interface Message {
  step: BlockStep;
  data: Float32Array;
}

/**
 * Ordered point-to-point tensor channels between this member and the others of its stage group
 * (one Activations stream per peer, bytes over the data plane like a hop), and the `Collective`
 * the Stage's exchanges use on top of them. On each channel every member sends and takes its
 * messages in the order of one shared program (block-steps in order; within one, the forward's
 * collectives), so a channel needs no tags.
 */
export class GroupLink {
  private readonly senders = new Map<string, { client: WorkerClient; sender: TensorSender }>();
  private readonly inbox = new Map<string, Message[]>();
  private readonly waiting = new Map<string, ((m: Message) => void)[]>();
  private failure: Error | null = null;
  private reported = false;
  private readonly failWaiters = new Set<(e: Error) => void>();

  constructor(
    readonly place: GroupPlace,
    private readonly o: { credentials?: grpc.ChannelCredentials; dataPlane: { mode: DataPlaneMode; hostId: string }; onFailure: (e: Error) => void },
  ) {}

  get rank(): number {
    return this.place.rank;
  }

  /** The inbox session ids of this member: two per peer (one per channel). */
  inboxes(): string[] {
    const self = this.place.members[this.rank].sessionId;
    return this.place.members.flatMap((_, r) => (r === this.rank ? [] : CHANNELS.map((c) => inboxId(self, r, c))));
  }

  /** Which peer and channel an inbox id belongs to, or null when it is none of this member's. */
  peerOf(sessionId: string): { peer: number; channel: GroupChannel } | null {
    const self = this.place.members[this.rank].sessionId;
    for (let peer = 0; peer < this.place.members.length; peer++) {
      if (peer === this.rank) continue;
      for (const channel of CHANNELS) if (inboxId(self, peer, channel) === sessionId) return { peer, channel };
    }
    return null;
  }

  /** Rank 0: member `from` reported its own failure; the group (and so the stage) fails with it at once. */
  deliverFailure(from: number, message: string): void {
    workerMetrics.groupFailureReports.inc({ direction: 'received' });
    this.fail(new Error(`stage group member ${from} (${this.place.members[from].address}) failed: ${message}`));
  }

  /**
   * A member of rank > 0 tells rank 0 that it failed (its forward threw, a tensor it sent was
   * refused, a peer went away), so the stage fails now rather than when rank 0's wait stalls.
   * Best effort, once: it goes on the stage channel even after this link failed, and when rank 0
   * itself is gone the driver finds out another way (heartbeats, its own sends).
   */
  async reportFailure(e: Error): Promise<void> {
    if (this.rank === 0 || this.reported) return;
    this.reported = true;
    const peer = this.place.members[0];
    const payload = encodeFailureReport(e.message);
    await this.senderTo(0, 'stage').send(
      {
        sessionId: inboxId(peer.sessionId, this.rank, 'stage'),
        token: peer.token,
        kind: PayloadKind.PAYLOAD_KIND_GROUP_FAILURE,
        step: undefined,
        shape: [payload.length / 4],
        dtype: toWireDtype('f32'),
      },
      payload,
    );
    workerMetrics.groupFailureReports.inc({ direction: 'sent' });
  }

  /** A message from peer `from` on `channel` arrived (in that peer's send order). */
  deliver(from: number, channel: GroupChannel, step: BlockStep, data: Float32Array): void {
    const key = `${from}:${channel}`;
    const waiter = this.waiting.get(key)?.shift();
    if (waiter) waiter({ step, data });
    else this.queueOf(key).push({ step, data });
  }

  async send(to: number, channel: GroupChannel, step: BlockStep, data: Float32Array): Promise<void> {
    if (this.failure) throw this.failure;
    const peer = this.place.members[to];
    const payload = encodePayload(data, 'f32');
    try {
      await this.senderTo(to, channel).send(
        {
          sessionId: inboxId(peer.sessionId, this.rank, channel),
          token: peer.token,
          kind: PayloadKind.PAYLOAD_KIND_GROUP,
          step: { iteration: step.iteration, block: step.block, step: step.step, timestep: step.timestep, prefixFrames: step.prefixFrames, ownFrames: step.ownFrames, contextFrames: step.contextFrames, height: step.height, width: step.width },
          shape: [data.length],
          dtype: toWireDtype('f32'),
        },
        payload,
      );
    } catch (e) {
      this.fail(e instanceof Error ? e : new Error(String(e)));
      throw this.failure;
    }
    workerMetrics.bytesSent.inc(payload.length);
  }

  receive(from: number, channel: GroupChannel): Promise<Message> {
    const key = `${from}:${channel}`;
    const queued = this.queueOf(key).shift();
    if (queued) return Promise.resolve(queued);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<Message>((resolve, reject) => {
      const onFail = (e: Error) => reject(e);
      this.failWaiters.add(onFail);
      const list = this.waiting.get(key) ?? [];
      list.push((m) => {
        this.failWaiters.delete(onFail);
        resolve(m);
      });
      this.waiting.set(key, list);
    });
  }

  /** The exchanges of a Stage member over these channels (docs/parallelism.md). */
  collective(): Collective {
    const U = this.place.layout.ulysses;
    const half = Math.floor(this.rank / U);
    const size = this.place.members.length;
    return {
      allToAll: async (parts, step) => {
        const peers = parts.map((_, j) => half * U + j);
        const sent = Promise.all(peers.map((r, j) => (r === this.rank ? null : this.send(r, 'exchange', step, parts[j]))));
        // A failed send also fails the receives below; this one is awaited after them.
        sent.catch(() => undefined);
        const got = await Promise.all(peers.map(async (r, j) => (r === this.rank ? parts[j] : (await this.receive(r, 'exchange')).data)));
        await sent;
        return got;
      },
      gather: async (part, step) => {
        if (this.rank !== 0) {
          await this.send(0, 'exchange', step, part);
          return null;
        }
        return [part, ...(await Promise.all(Array.from({ length: size - 1 }, async (_, i) => (await this.receive(i + 1, 'exchange')).data)))];
      },
    };
  }

  fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    for (const w of this.failWaiters) w(e);
    this.failWaiters.clear();
    this.o.onFailure(e);
  }

  async close(): Promise<void> {
    this.fail(new Error('the stage group closed'));
    await Promise.all(
      [...this.senders.values()].map(async ({ client, sender }) => {
        await sender.close().catch(() => undefined);
        client.close();
      }),
    );
  }

  private queueOf(key: string): Message[] {
    let q = this.inbox.get(key);
    if (!q) {
      q = [];
      this.inbox.set(key, q);
    }
    return q;
  }

  private senderTo(to: number, channel: GroupChannel): TensorSender {
    const key = `${to}:${channel}`;
    let s = this.senders.get(key);
    if (!s) {
      const peer = this.place.members[to];
      const client = createWorkerClient(peer.address, { credentials: this.o.credentials });
      const hop = chooseHopTransport(this.o.dataPlane.mode, this.o.dataPlane.hostId, peer.dataPlane);
      const bytes = hop === 'grpc' ? undefined : new DataPlaneSender(peer.dataPlane!.tcpAddress, { shm: hop === 'shm' });
      s = { client, sender: TensorSender.open(client, { peer: peer.address, bytes }) };
      this.senders.set(key, s);
    }
    return s.sender;
  }
}

/**
 * How rank 0 cuts a stage's input into the members' inputs (its own first, then the tensors it
 * sends) and joins their outputs.
 */
export interface GroupShapes {
  inputs(step: BlockStep, input: StageInput): [StageInput, ...Float32Array[]];
  join(step: BlockStep, parts: Float32Array[]): Float32Array;
}

/**
 * Real tensors: token shards of the hidden states. The head's members get the whole window: rank
 * 0 reads it where it is, the others get it assembled once (it leaves the process).
 */
export function tensorShapes(config: ModelConfig, layout: StageLayout, head: boolean): GroupShapes {
  const size = groupSize(layout);
  return {
    inputs: (step, input) => {
      if (head) {
        const whole = size > 1 ? windowLatents(step, input) : null;
        return [input, ...Array.from({ length: size - 1 }, () => whole!)];
      }
      if (!(input instanceof Float32Array)) throw new TypeError('a stage group after the head takes hidden states, not window sources');
      const span = windowSpan(step, config.dim);
      const [first, ...rest] = Array.from({ length: size }, (_, r) => shardSpan(input, layout, r, config.heads, span));
      return [first, ...rest];
    },
    join: (step, parts) => assembleSpan(parts, layout, config.heads, windowSpan(step, config.dim)),
  };
}

/** Emulated compute: zeros of each member's (scaled) input size; the output is the stage's (scaled) size. */
export function emulatedShapes(members: readonly { shardShare(step: BlockStep): number }[], payloadScale: number, config: ModelConfig): GroupShapes {
  const hidden = (step: BlockStep) => 2 * (step.prefixFrames + step.ownFrames) * (step.height / 2) * (step.width / 2) * config.dim;
  return {
    inputs: (step, input) => [input, ...members.slice(1).map((m) => new Float32Array(Math.max(1, Math.ceil((hidden(step) * m.shardShare(step)) / payloadScale))))],
    join: (step) => new Float32Array(Math.max(1, Math.ceil(hidden(step) / payloadScale))),
  };
}

/**
 * Rank 0 of a stage group: from the pipeline's side the whole stage (it takes the stage's input
 * and returns its output, as a Stage does). It sends every other member its input (its token
 * shard; the head's members the whole window), runs its own shard, and gathers the members'
 * output shards (the tail's velocity is gathered inside the Stage).
 */
export class GroupFront implements StageRunner {
  /** Gathers outputs in block-step order. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly stage: StageRunner,
    private readonly link: GroupLink,
    private readonly shapes: GroupShapes,
  ) {}

  get range(): StageRunner['range'] {
    return this.stage.range;
  }

  /**
   * Called in arrival order: the members get their inputs at once (their stage channels queue
   * them), this member's own shard queues on its Stage, and the outputs are gathered in order.
   */
  forward(step: BlockStep, input: StageInput): Promise<Float32Array> {
    const { members } = this.link.place;
    const [ownInput, ...theirs] = this.shapes.inputs(step, input);
    const sent = Promise.all(theirs.map((data, i) => this.link.send(i + 1, 'stage', step, data)));
    sent.catch(() => undefined);
    const own = this.stage.forward(step, ownInput);
    own.catch(() => undefined);
    const run = this.queue.then(async () => {
      const mine = await own;
      await sent;
      if (this.range.tail) return mine;
      const parts = [mine, ...(await Promise.all(members.slice(1).map(async (_, i) => (await this.link.receive(i + 1, 'stage')).data)))];
      return this.shapes.join(step, parts);
    });
    this.queue = run.catch(() => undefined);
    return run;
  }
}

/**
 * A member of rank > 0: takes its input from rank 0, runs its shard (exchanging with the group
 * inside the forward), returns its output shard to rank 0 (not on the tail: the Stage gathers
 * there). Runs until the link fails or closes.
 */
export async function serveGroupMember(stage: StageRunner, link: GroupLink, onForward: (step: BlockStep) => void): Promise<void> {
  for (;;) {
    const { step, data } = await link.receive(0, 'stage');
    const out = await stage.forward(step, data);
    onForward(step);
    if (!stage.range.tail) await link.send(0, 'stage', step, out);
  }
}

/** The rows of a block-step's whole window, as group members split them. */
export function windowSpan(step: BlockStep, dim: number) {
  const frames = step.prefixFrames + step.ownFrames;
  return { windowFrames: frames, from: 0, to: frames, hw: (step.height / 2) * (step.width / 2), width: dim };
}

/** The most values any group message of this block-step may hold (admission bound). */
export function groupMessageBound(step: BlockStep, layout: StageLayout, heads: number, dim: number, latentChannels: number): number {
  const span = windowSpan(step, dim);
  const m = memberShard(layout, 0, heads);
  const hidden = 2 * span.windowFrames * span.hw * dim;
  // An all-to-all part: q, k, v of a shard and the cached successor K/V, at most 5 times the hidden states.
  return Math.max(5 * hidden * (m.halves.length / 2), latentChannels * span.windowFrames * step.height * step.width);
}
