import * as grpc from '@grpc/grpc-js';
import {
  PayloadKind,
  WireDtype,
  activationsHandler,
  createWorkerClient,
  serverOptions,
  workerServiceDefinition,
  type TensorReceiverOptions,
  type TensorSendHeader,
  type WorkerClient,
} from '../src/index';

export interface TestServer {
  server: grpc.Server;
  address: string;
  client(): WorkerClient;
  stop(): Promise<void>;
}

/** A real grpc-js server on 127.0.0.1 with an ephemeral port. */
export async function startServer(
  activations: TensorReceiverOptions | grpc.handleBidiStreamingCall<unknown, unknown>,
  setup?: (server: grpc.Server) => void,
): Promise<TestServer> {
  const server = new grpc.Server(serverOptions());
  const impl = typeof activations === 'function' ? activations : activationsHandler(activations);
  server.addService(workerServiceDefinition, { activations: impl } as grpc.UntypedServiceImplementation);
  setup?.(server);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  const address = `127.0.0.1:${port}`;
  const clients: WorkerClient[] = [];
  return {
    server,
    address,
    client() {
      const c = createWorkerClient(address);
      clients.push(c);
      return c;
    },
    async stop() {
      for (const c of clients) c.close();
      server.forceShutdown();
    },
  };
}

export function header(shape: number[], dtype: 'f32' | 'bf16' = 'f32', extra: Partial<TensorSendHeader> = {}): TensorSendHeader {
  return {
    sessionId: 'session-a',
    token: 'token-a',
    kind: PayloadKind.PAYLOAD_KIND_HIDDEN,
    step: undefined,
    shape,
    dtype: dtype === 'f32' ? WireDtype.WIRE_DTYPE_F32 : WireDtype.WIRE_DTYPE_BF16,
    ...extra,
  };
}

/** Deterministic, sign- and exponent-varied values so bit errors cannot hide. */
export function pattern(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = ((s >>> 0) / 4294967296 - 0.5) * 2 ** ((s >>> 24) % 40 - 20);
  }
  return out;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
