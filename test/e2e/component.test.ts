import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockStore, JobTextStore, jobPrefix, WorkerRegistry } from '@longshot/cache';
import { cpuBackend } from '@longshot/engine';
import { getConfig, resolveModel, writeSeededPipeline } from '@longshot/model';
import { runDistributedJob, type WorkerSource } from '@longshot/pipeline';
import { normalizeSpec } from '@longshot/planner';
import { ComponentKind, createWorkerClient, runComponent, type ComponentRequest } from '@longshot/transport';
import { LocalCluster } from '../../apps/cli/src/local-cluster';
import { leaseAndGrant } from './grants';

let dir: string;
let pipe: string;
let cluster: LocalCluster;
let redis: Redis;

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-component-'));
  pipe = path.join(dir, 'pipe');
  writeSeededPipeline(pipe, { config: getConfig('tiny'), seed: 0, shards: 1, dtype: 'F32' });
  // Workers serve the directory's entries by name: jobs and components name 'pipe', never its path.
  cluster = await LocalCluster.start({ workers: 2, name: 'comp', modelsDir: dir });
  redis = new Redis(cluster.redisUrl);
});

afterAll(async () => {
  redis?.disconnect();
  await cluster?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The grant of the test's current lease on the worker it calls (see leaseAndGrant). */
let grant = '';
const textRequest = (prompt: string, negativePrompt = '', model = 'pipe'): ComponentRequest => ({ kind: ComponentKind.COMPONENT_KIND_TEXT_ENCODER, model, jobId: 'component-test', input: { $case: 'text', value: { prompt, negativePrompt, storeForJob: false } }, grant });
const bits = (a: Float32Array | Int32Array | Uint8Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

describe('RunComponent (text encoder on a worker)', () => {
  it("returns the directory's umT5 embeddings and ids, bit-identical to this process's, and from the cache the second time", async () => {
    const w = [...cluster.workers.values()][0];
    const client = createWorkerClient(w.address);
    const lease = await leaseAndGrant(redis, cluster.grantKey, w.id, { job: 'component-test' });
    grant = lease.grant;
    try {
      const prompt = 'a lighthouse in a storm, waves';
      const first = await runComponent(client, textRequest(prompt, 'calm sea'));
      expect(first.summary.cacheHit).toBe(false);
      expect(first.summary.workerId).toBe(w.id);
      expect(first.summary.numerics).toMatch(/^cpu:simd=/);
      expect(first.summary.description).toMatch(/^umT5 text encoder/);
      const local = await resolveModel(pipe).textEncoder.encode(prompt, 'calm sea', cpuBackend());
      expect(first.tensors.get('cond')!.shape).toEqual([getConfig('tiny').textLen, getConfig('tiny').textDim]);
      expect(bits(first.tensors.get('cond')!.values).equals(bits(local.cond))).toBe(true);
      expect(bits(first.tensors.get('uncond')!.values).equals(bits(local.uncond))).toBe(true);
      expect(bits(first.tensors.get('cond_ids')!.values).equals(bits(local.condIds!))).toBe(true);
      expect(bits(first.tensors.get('uncond_ids')!.values).equals(bits(local.uncondIds!))).toBe(true);
      const again = await runComponent(client, textRequest(prompt, 'calm sea'));
      expect(again.summary.cacheHit).toBe(true);
      expect(bits(again.tensors.get('cond')!.values).equals(bits(local.cond))).toBe(true);
      expect(bits(again.tensors.get('uncond_ids')!.values).equals(bits(local.uncondIds!))).toBe(true);
      // For a job driver: stored for the job's stages (fenced by the grant's run), answered by reference only.
      const prefix = jobPrefix('component-test');
      const forJob = { ...textRequest(prompt, 'calm sea'), input: { $case: 'text' as const, value: { prompt, negativePrompt: 'calm sea', storeForJob: true } } };
      const superseded = await runComponent(client, forJob).then(() => null, (e: grpc.ServiceError) => e);
      expect(superseded?.code).toBe(grpc.status.ABORTED);
      expect(superseded?.details).toMatch(/no longer owns the job/);
      await new BlockStore(redis).claimRun(prefix, lease.run, 60);
      const stored = await runComponent(client, forJob);
      expect(stored.tensors.size).toBe(0);
      expect(stored.summary.cacheHit).toBe(true);
      const read = (await new JobTextStore(redis).get(prefix))!;
      expect({ byteLength: Number(stored.summary.storedText!.byteLength), crc32: stored.summary.storedText!.crc32 }).toEqual(read.ref);
      expect(bits(read.text.cond).equals(bits(local.cond))).toBe(true);
      expect(bits(read.text.uncond).equals(bits(local.uncond))).toBe(true);
      const metrics = await (await fetch(`http://${w.metricsAddress}/metrics`)).text();
      expect(metrics).toMatch(/^longshot_text_embedding_cache_total\{result="hit"\} 3$/m);
      expect(metrics).toMatch(/^longshot_text_embedding_cache_total\{result="miss"\} 1$/m);
      expect(metrics).toMatch(/^longshot_component_seconds_count\{kind="text_encoder"\} 1$/m);
      expect(metrics).toMatch(/^longshot_umt5_encodes_total 2$/m);
    } finally {
      await lease.release();
      client.close();
    }
  });

  it('refuses bad requests with INVALID_ARGUMENT naming the field, without server paths', async () => {
    const w = [...cluster.workers.values()][1];
    const client = createWorkerClient(w.address);
    const lease = await leaseAndGrant(redis, cluster.grantKey, w.id, { job: 'component-test' });
    grant = lease.grant;
    try {
      const cases: [ComponentRequest, RegExp][] = [
        [{ ...textRequest('x'), kind: ComponentKind.COMPONENT_KIND_UNSPECIFIED }, /^kind 0 is not a component/],
        [{ ...textRequest('x'), input: undefined }, /^text is required/],
        [textRequest('x'.repeat(10_001)), /^text\.prompt is 10001 characters/],
        [textRequest('x', 'y'.repeat(10_001)), /^text\.negative_prompt is 10001 characters/],
        [textRequest('x', '', 'no-such-model'), /^model: /],
        [textRequest('x', '', ''), /^model is required/],
        // The worker applies the controller's rule: a model is a name, never a path.
        [textRequest('x', '', pipe), /^model: not a model name: .*; served: .*tiny, longshot-shapes, pipe$/],
        [textRequest('x', '', '/etc/passwd'), /^model: not a model name/],
        [textRequest('x', '', '../pipe'), /^model: not a model name/],
      ];
      for (const [req, re] of cases) {
        const err = (await runComponent(client, req).then(() => null, (e: unknown) => e)) as grpc.ServiceError | null;
        expect(err, String(re)).not.toBeNull();
        expect(err!.code, String(re)).toBe(grpc.status.INVALID_ARGUMENT);
        expect(err!.details, String(re)).toMatch(re);
        expect(err!.details).not.toContain(dir);
        expect(err!.details).not.toMatch(/root:/);
      }
      const metrics = await (await fetch(`http://${[...cluster.workers.values()][1].metricsAddress}/metrics`)).text();
      expect(metrics).toMatch(/^longshot_model_refusals_total [1-9]/m);
    } finally {
      await lease.release();
      client.close();
    }
  });

  it('fails over to another worker when the chosen one is dead, and the job completes', async () => {
    const port = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    const driver = cluster.driver(redis, 'failover');
    const numerics = (await new WorkerRegistry(redis).list())[0].numerics;
    let picks = 0;
    const source: WorkerSource = {
      run: driver.workers.run,
      // First pick: a worker that died after registering (nothing listens at its address).
      pick: async (count, exclude, n) => (picks++ === 0 ? [{ id: 'ghost', address: `127.0.0.1:${port}`, numerics }] : driver.workers.pick(count, exclude, n)),
      alive: async (id) => id !== 'ghost' && (await driver.workers.alive(id)),
      release: (ids) => driver.workers.release(ids),
    };
    const spec = normalizeSpec({ prompt: 'a lighthouse', negativePrompt: 'fog', model: 'pipe', frames: 5, width: 32, height: 32, block: 2, context: 1, steps: 2, stages: 1 });
    const r = await runDistributedJob({ jobId: 'failover', spec, model: resolveModel(pipe).config, keyPrefix: jobPrefix('failover'), text: null }, { ...driver, workers: source, onBlock: () => undefined, livenessIntervalMs: 200 });
    expect(r.attempts).toHaveLength(2);
    expect(r.attempts[0].workers).toEqual(['ghost']);
    expect(r.attempts[0].error).toMatch(/^text encoder on ghost failed/);
    expect(r.textEncoder?.worker).not.toBe('ghost');
    expect(r.attempts[1].error).toBeNull();
  });
});
