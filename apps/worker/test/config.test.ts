/** The worker's data-plane settings as its one validated config reads them (flags over environment). */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { describe, expect, it } from 'vitest';
import { hostIdentity, workerConfig } from '../src/config';

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
