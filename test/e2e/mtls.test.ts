/**
 * mTLS between drivers and workers, and between workers (stage links): certificates generated
 * here with openssl, workers started with --tls-cert/--tls-key/--tls-ca. A client without a
 * certificate of the cluster's CA does not get a connection at all; a driver with one runs a
 * K = 2 job whose stages stream to each other over mTLS too.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jobPrefix } from '@longshot/cache';
import { runDistributedJob } from '@longshot/pipeline';
import { normalizeSpec } from '@longshot/planner';
import { createWorkerClient, loadTlsFiles, tlsCredentials, type WorkerClient } from '@longshot/transport';
import { LocalCluster } from '../../apps/cli/src/local-cluster';

let dir: string;
let cluster: LocalCluster;
let redis: Redis;

/** A CA, and a certificate it signs for 127.0.0.1 usable as server and client. */
function pki(where: string, name: string): { ca: string; cert: string; key: string } {
  const f = (n: string) => path.join(where, `${name}-${n}`);
  const ossl = (...args: string[]) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  ossl('req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '1', '-subj', `/CN=${name}-ca`);
  ossl('req', ...ec, '-keyout', f('key.pem'), '-out', f('csr.pem'), '-subj', `/CN=${name}`);
  fs.writeFileSync(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n');
  ossl('x509', '-req', '-in', f('csr.pem'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('cert.pem'), '-days', '1', '-extfile', f('ext.cnf'));
  return { ca: f('ca.pem'), cert: f('cert.pem'), key: f('key.pem') };
}

let own: { ca: string; cert: string; key: string };
let foreign: { ca: string; cert: string; key: string };

beforeAll(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-mtls-'));
  own = pki(dir, 'cluster');
  foreign = pki(dir, 'foreign');
  cluster = await LocalCluster.start({ workers: 2, name: 'mtls', workerArgs: ['--tls-cert', own.cert, '--tls-key', own.key, '--tls-ca', own.ca] });
  redis = new Redis(cluster.redisUrl);
});

afterAll(async () => {
  redis?.disconnect();
  await cluster?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** The status of a CloseSession on a session that does not exist: NOT_FOUND means the call got through. */
function probe(client: WorkerClient): Promise<number> {
  return new Promise((resolve) => client.closeSession({ sessionId: 'none', token: '' }, new grpc.Metadata(), { deadline: Date.now() + 5000 }, (err) => resolve(err?.code ?? grpc.status.OK)));
}

describe('mTLS to workers', () => {
  it('refuses plaintext, a client without a certificate and one of another CA; admits the cluster CA', async () => {
    const [w] = [...cluster.workers.values()];
    const files = (p: typeof own) => loadTlsFiles(p)!;
    const cases: [string, grpc.ChannelCredentials, boolean][] = [
      ['plaintext', grpc.credentials.createInsecure(), false],
      ['TLS without a client certificate', grpc.credentials.createSsl(fs.readFileSync(own.ca)), false],
      ["a client certificate of another CA", grpc.credentials.createSsl(fs.readFileSync(own.ca), fs.readFileSync(foreign.key), fs.readFileSync(foreign.cert)), false],
      ["the cluster CA's certificate", tlsCredentials(files(own)).client, true],
    ];
    for (const [name, credentials, admitted] of cases) {
      const client = createWorkerClient(w.address, { credentials });
      try {
        const code = await probe(client);
        if (admitted) expect(code, name).toBe(grpc.status.NOT_FOUND);
        else expect(code, name).toBe(grpc.status.UNAVAILABLE);
      } finally {
        client.close();
      }
    }
  });

  it('runs a K = 2 job with mTLS on every link', async () => {
    const s = normalizeSpec({ prompt: 'a lighthouse', width: 64, height: 64, block: 2, context: 1, steps: 2, model: 'tiny', seed: 5, frames: 4 * (4 - 1) + 1, stages: 2 });
    const r = await runDistributedJob(
      { jobId: 'mtls-job', spec: s, keyPrefix: jobPrefix('mtls-job'), text: null },
      { ...cluster.driver(redis, 'mtls-job'), credentials: tlsCredentials(loadTlsFiles(own)).client, onBlock: () => undefined },
    );
    expect(r.attempts).toHaveLength(1);
    expect(r.attempts[0].error).toBeNull();
    // Its set-up (leases, text, sessions) is reported, and is part of the job's time.
    expect(r.attempts[0].openSeconds).toBeGreaterThan(0);
    expect(new Set(r.workers).size).toBe(2);
  });
});
