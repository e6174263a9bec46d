import type * as grpc from '@grpc/grpc-js';
import { assembleSpan, groupSize, memberShard, shardSpan, type BlockStep, type Collective, type ModelConfig, type StageLayout } from '@longshot/model';
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

/** The session id member `to` takes member `from`'s tensors on (its own data-plane key and stream). */
export function inboxId(sessionId: string, from: number): string {
  return `${sessionId}/from${from}`;
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
 * the Stage's exchanges use on top of them. Every member sends and takes its messages in the
 * order of one shared program (the forward), so a channel needs no tags.
 */
export class GroupLink {
  /** Block-step the current forward runs: group messages carry it (workers check it like a hop's). */
  current: BlockStep | null = null;
  private readonly senders = new Map<number, { client: WorkerClient; sender: TensorSender }>();
  private readonly inbox = new Map<number, Message[]>();
  private readonly waiting = new Map<number, ((m: Message) => void)[]>();
  private failure: Error | null = null;
  private readonly failWaiters = new Set<(e: Error) => void>();

  constructor(
    readonly place: GroupPlace,
    private readonly o: { credentials?: grpc.ChannelCredentials; dataPlane: { mode: DataPlaneMode; hostId: string }; onFailure: (e: Error) => void },
  ) {}

  get rank(): number {
    return this.place.rank;
  }

  /** The inbox session ids of this member, one per peer. */
  inboxes(): string[] {
    const self = this.place.members[this.rank].sessionId;
    return this.place.members.flatMap((_, r) => (r === this.rank ? [] : [inboxId(self, r)]));
  }

  /** Which peer an inbox id belongs to, or null when it is none of this member's. */
  peerOf(sessionId: string): number | null {
    const self = this.place.members[this.rank].sessionId;
    const r = this.place.members.findIndex((_, i) => i !== this.rank && inboxId(self, i) === sessionId);
    return r < 0 ? null : r;
  }

  /** A message from peer `from` arrived (in that peer's send order). */
  deliver(from: number, step: BlockStep, data: Float32Array): void {
    const waiter = this.waiting.get(from)?.shift();
    if (waiter) waiter({ step, data });
    else this.queueOf(from).push({ step, data });
  }

  async send(to: number, data: Float32Array): Promise<void> {
    if (this.failure) throw this.failure;
    const step = this.current;
    if (!step) throw new Error('group send outside a forward');
    const peer = this.place.members[to];
    const payload = encodePayload(data, 'f32');
    try {
      await this.senderTo(to).send(
        {
          sessionId: inboxId(peer.sessionId, this.rank),
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

  receive(from: number): Promise<Message> {
    const queued = this.queueOf(from).shift();
    if (queued) return Promise.resolve(queued);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<Message>((resolve, reject) => {
      const onFail = (e: Error) => reject(e);
      this.failWaiters.add(onFail);
      const list = this.waiting.get(from) ?? [];
      list.push((m) => {
        this.failWaiters.delete(onFail);
        resolve(m);
      });
      this.waiting.set(from, list);
    });
  }

  /** The exchanges of a Stage member over these channels (docs/parallelism.md). */
  collective(): Collective {
    const U = this.place.layout.ulysses;
    const half = Math.floor(this.rank / U);
    const size = this.place.members.length;
    return {
      allToAll: async (parts) => {
        const peers = parts.map((_, j) => half * U + j);
        const sent = Promise.all(peers.map((r, j) => (r === this.rank ? null : this.send(r, parts[j]))));
        // A failed send also fails the receives below; this one is awaited after them.
        sent.catch(() => undefined);
        const got = await Promise.all(peers.map(async (r, j) => (r === this.rank ? parts[j] : (await this.receive(r)).data)));
        await sent;
        return got;
      },
      gather: async (part) => {
        if (this.rank !== 0) {
          await this.send(0, part);
          return null;
        }
        return [part, ...(await Promise.all(Array.from({ length: size - 1 }, async (_, i) => (await this.receive(i + 1)).data)))];
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

  private queueOf(from: number): Message[] {
    let q = this.inbox.get(from);
    if (!q) {
      q = [];
      this.inbox.set(from, q);
    }
    return q;
  }

  private senderTo(to: number): TensorSender {
    let s = this.senders.get(to);
    if (!s) {
      const peer = this.place.members[to];
      const client = createWorkerClient(peer.address, { credentials: this.o.credentials });
      const hop = chooseHopTransport(this.o.dataPlane.mode, this.o.dataPlane.hostId, peer.dataPlane);
      const bytes = hop === 'grpc' ? undefined : new DataPlaneSender(peer.dataPlane!.tcpAddress, { shm: hop === 'shm' });
      s = { client, sender: TensorSender.open(client, { peer: peer.address, bytes }) };
      this.senders.set(to, s);
    }
    return s.sender;
  }
}

/** How rank 0 cuts a stage's input into the members' inputs and joins their outputs. */
export interface GroupShapes {
  inputs(step: BlockStep, input: Float32Array): Float32Array[];
  join(step: BlockStep, parts: Float32Array[]): Float32Array;
}

/** Real tensors: token shards of the hidden states (the head's members: the whole window). */
export function tensorShapes(config: ModelConfig, layout: StageLayout, head: boolean): GroupShapes {
  const size = groupSize(layout);
  return {
    inputs: (step, input) => Array.from({ length: size }, (_, r) => (head ? input : shardSpan(input, layout, r, config.heads, windowSpan(step, config.dim)))),
    join: (step, parts) => assembleSpan(parts, layout, config.heads, windowSpan(step, config.dim)),
  };
}

/** Emulated compute: zeros of each member's (scaled) input size; the output is the stage's (scaled) size. */
export function emulatedShapes(members: readonly { shardShare(step: BlockStep): number }[], payloadScale: number, config: ModelConfig): GroupShapes {
  const hidden = (step: BlockStep) => 2 * (step.prefixFrames + step.ownFrames) * (step.height / 2) * (step.width / 2) * config.dim;
  return {
    inputs: (step, input) => members.map((m, r) => (r === 0 ? input : new Float32Array(Math.max(1, Math.ceil((hidden(step) * m.shardShare(step)) / payloadScale))))),
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
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly stage: StageRunner,
    private readonly link: GroupLink,
    private readonly shapes: GroupShapes,
  ) {}

  get range(): StageRunner['range'] {
    return this.stage.range;
  }

  forward(step: BlockStep, input: Float32Array): Promise<Float32Array> {
    const run = this.queue.then(() => this.run(step, input));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async run(step: BlockStep, input: Float32Array): Promise<Float32Array> {
    const { members } = this.link.place;
    this.link.current = step;
    const inputs = this.shapes.inputs(step, input);
    const sent = Promise.all(members.map((_, r) => (r === 0 ? null : this.link.send(r, inputs[r]))));
    sent.catch(() => undefined);
    const own = await this.stage.forward(step, inputs[0]);
    await sent;
    if (this.range.tail) return own;
    const parts = [own, ...(await Promise.all(members.slice(1).map(async (_, i) => (await this.link.receive(i + 1)).data)))];
    return this.shapes.join(step, parts);
  }
}

/**
 * A member of rank > 0: takes its input from rank 0, runs its shard (exchanging with the group
 * inside the forward), returns its output shard to rank 0 (not on the tail: the Stage gathers
 * there). Runs until the link fails or closes.
 */
export async function serveGroupMember(stage: StageRunner, link: GroupLink, onForward: (step: BlockStep) => void): Promise<void> {
  for (;;) {
    const { step, data } = await link.receive(0);
    link.current = step;
    const out = await stage.forward(step, data);
    onForward(step);
    if (!stage.range.tail) await link.send(0, out);
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
