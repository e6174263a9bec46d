/** The worker's one validated config (flags over environment): data plane, and the keys libraries used to read themselves. */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { describe, expect, it } from 'vitest';
import { hostIdentity, workerConfig } from '../src/config';

const env = { REDIS_URL: 'redis://127.0.0.1:6379', LONGSHOT_GRANT_KEYS: `k:${'s'.repeat(32)}` };
const load = (extra: Record<string, string> = {}) => workerConfig([], { ...env, ...extra });

describe('worker config: keys the libraries used to read themselves', () => {
  it('LONGSHOT_KEY_ROOT: the root of the keys it reads and writes, default longshot; a bad root names the variable', () => {
    expect(load().config.keys.root).toBe('longshot');
    expect(load({ LONGSHOT_KEY_ROOT: 'tenant-a' }).config.keys.jobIdOf('tenant-a:job:{j1}')).toBe('j1');
    expect(() => load({ LONGSHOT_KEY_ROOT: 'a:b' })).toThrow(/^LONGSHOT_KEY_ROOT: key root "a:b" must not contain ':'/);
  });

  it('engine settings: unset leaves the engine its defaults', () => {
    expect(load().engine).toEqual({ threads: null, simd: null, cudaDevice: 0, cudaCacheMb: null });
  });

  it('engine settings: LONGSHOT_THREADS, LONGSHOT_SIMD, LONGSHOT_CUDA_DEVICE, LONGSHOT_CUDA_CACHE_MB are read and checked', () => {
    expect(load({ LONGSHOT_THREADS: '3', LONGSHOT_SIMD: 'avx2', LONGSHOT_CUDA_DEVICE: '1', LONGSHOT_CUDA_CACHE_MB: '0' }).engine).toEqual({ threads: 3, simd: 'avx2', cudaDevice: 1, cudaCacheMb: 0 });
    expect(load({ LONGSHOT_THREADS: '', LONGSHOT_SIMD: '' }).engine).toMatchObject({ threads: null, simd: null });
  });

  it('a bad engine value is an error naming its variable and the value', () => {
    expect(() => load({ LONGSHOT_THREADS: 'abc' })).toThrow('LONGSHOT_THREADS must be an integer in 1..4096, got "abc"');
    expect(() => load({ LONGSHOT_THREADS: '0' })).toThrow(/^LONGSHOT_THREADS must be an integer in 1\.\.4096/);
    expect(() => load({ LONGSHOT_THREADS: '2.5' })).toThrow(/^LONGSHOT_THREADS/);
    expect(() => load({ LONGSHOT_SIMD: 'sse4' })).toThrow('LONGSHOT_SIMD must be one of scalar, avx2, avx512, got "sse4"');
    expect(() => load({ LONGSHOT_CUDA_DEVICE: '-1' })).toThrow(/^LONGSHOT_CUDA_DEVICE must be an integer in 0\.\.1024, got "-1"/);
    expect(() => load({ LONGSHOT_CUDA_CACHE_MB: 'lots' })).toThrow(/^LONGSHOT_CUDA_CACHE_MB must be an integer/);
  });

  it('LONGSHOT_LOG_LEVEL: any case, default info', () => {
    expect(load().logLevel).toBe('info');
    expect(load({ LONGSHOT_LOG_LEVEL: 'Error' }).logLevel).toBe('error');
  });
});
const base = ['--redis', 'redis://127.0.0.1:6379', '--grant-keys', 'k1:0123456789abcdef0123456789abcdef'];

describe('worker config: data plane', () => {
  it('defaults to auto on any free port with this host as boot id and hostname', () => {
    const { config } = workerConfig(base, {});
    expect(config.dataPlane).toEqual({ mode: 'auto', port: 0, hostId: hostIdentity() });
    const boot = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    expect(hostIdentity()).toBe(`${boot}/${os.hostname()}`);
  });

  it('takes the mode and port from flags over the environment, and --host-id', () => {
    const env = { LONGSHOT_DATA_PLANE: 'tcp', LONGSHOT_DATA_PLANE_PORT: '50052' };
    expect(workerConfig(base, env).config.dataPlane).toMatchObject({ mode: 'tcp', port: 50052 });
    expect(workerConfig([...base, '--data-plane', 'shm', '--data-plane-port', '7000', '--host-id', 'rack-3/node-7'], env).config.dataPlane).toEqual({ mode: 'shm', port: 7000, hostId: 'rack-3/node-7' });
  });

  it('names the flag of a bad value', () => {
    expect(() => workerConfig([...base, '--data-plane', 'udp'], {})).toThrow("--data-plane: expected grpc, tcp, shm, auto, got 'udp'");
    expect(() => workerConfig(base, { LONGSHOT_DATA_PLANE: 'rdma' })).toThrow(/--data-plane: expected .* got 'rdma'/);
    expect(() => workerConfig([...base, '--data-plane-port', '70000'], {})).toThrow('--data-plane-port: expected an integer in 0..65535');
    expect(() => workerConfig([...base, '--host-id', ''], {})).toThrow('--host-id: expected 1 to 256 characters');
  });
});

describe('worker config: topology', () => {
  it('registers no NVLink domain and no link speed by default', () => {
    expect(workerConfig(base, {}).config.topology).toEqual({ nvlinkDomain: '', linkGbps: 0 });
  });

  it('takes --nvlink-domain and --link-gbps over LONGSHOT_NVLINK_DOMAIN and LONGSHOT_LINK_GBPS; empty variables mean none', () => {
    const env = { LONGSHOT_NVLINK_DOMAIN: 'gpu-node-3', LONGSHOT_LINK_GBPS: '100' };
    expect(workerConfig(base, env).config.topology).toEqual({ nvlinkDomain: 'gpu-node-3', linkGbps: 100 });
    expect(workerConfig([...base, '--nvlink-domain', 'nvl72-rack-2', '--link-gbps', '400'], env).config.topology).toEqual({ nvlinkDomain: 'nvl72-rack-2', linkGbps: 400 });
    expect(workerConfig(base, { LONGSHOT_NVLINK_DOMAIN: '', LONGSHOT_LINK_GBPS: '' }).config.topology).toEqual({ nvlinkDomain: '', linkGbps: 0 });
    expect(workerConfig([...base, '--link-gbps', '12.5'], {}).config.topology.linkGbps).toBe(12.5);
  });

  it('names the flag of a bad value', () => {
    expect(() => workerConfig([...base, '--link-gbps', 'fast'], {})).toThrow("--link-gbps: expected a positive number of Gb/s up to 100000, got 'fast'");
    expect(() => workerConfig([...base, '--link-gbps', '0'], {})).toThrow(/^--link-gbps: expected a positive number/);
    expect(() => workerConfig(base, { LONGSHOT_LINK_GBPS: '-100' })).toThrow(/^--link-gbps: .* got '-100'/);
    expect(() => workerConfig([...base, '--link-gbps', '1e9'], {})).toThrow(/^--link-gbps/);
    expect(() => workerConfig([...base, '--nvlink-domain', 'rack 2'], {})).toThrow('--nvlink-domain: expected at most 256 characters without whitespace, got "rack 2"');
    expect(() => workerConfig([...base, '--nvlink-domain', 'x'.repeat(257)], {})).toThrow(/^--nvlink-domain: expected at most 256 characters/);
  });
});

describe('worker config: checkpoint cadence', () => {
  it('commits every iteration by default; --checkpoint-every takes N iterations or T seconds, over LONGSHOT_CHECKPOINT_EVERY', () => {
    expect(workerConfig(base, {}).config.checkpointEvery).toEqual({ iterations: 1 });
    expect(workerConfig(base, { LONGSHOT_CHECKPOINT_EVERY: '30s' }).config.checkpointEvery).toEqual({ seconds: 30 });
    expect(workerConfig([...base, '--checkpoint-every', '5'], { LONGSHOT_CHECKPOINT_EVERY: '30s' }).config.checkpointEvery).toEqual({ iterations: 5 });
  });

  it('names the flag of a bad value', () => {
    expect(() => workerConfig([...base, '--checkpoint-every', '0'], {})).toThrow('--checkpoint-every: iterations must be 1 to 1000000, got 0');
    expect(() => workerConfig(base, { LONGSHOT_CHECKPOINT_EVERY: '5m' })).toThrow("--checkpoint-every: expected a count of iterations (N) or of seconds (Ns, e.g. 30s), got '5m'");
  });
});
