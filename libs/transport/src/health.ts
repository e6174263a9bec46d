/**
 * Standard grpc.health.v1 service, so Kubernetes gRPC probes and any gRPC tooling can ask a
 * worker whether it serves, overall ('') or per service name.
 */
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation, service as healthService, type ServingStatus, type ServingStatusMap } from 'grpc-health-check';
import { channelOptions } from './limits';

export type { ServingStatus, ServingStatusMap };

/**
 * Registers the health service on `server`. The returned implementation's `setStatus(name,
 * status)` changes what Check/Watch report; the overall status '' starts as SERVING unless
 * `initial` says otherwise.
 */
export function addHealthService(server: grpc.Server, initial: ServingStatusMap = {}): HealthImplementation {
  const health = new HealthImplementation({ '': 'SERVING', ...initial });
  health.addToServer(server);
  return health;
}

interface HealthClient extends grpc.Client {
  check(
    request: { service: string },
    options: grpc.CallOptions,
    callback: (err: grpc.ServiceError | null, response?: { status: ServingStatus | 'SERVICE_UNKNOWN' }) => void,
  ): grpc.ClientUnaryCall;
}

const HealthClientConstructor = grpc.makeGenericClientConstructor(
  healthService as unknown as grpc.ServiceDefinition,
  'grpc.health.v1.Health',
) as unknown as new (address: string, credentials: grpc.ChannelCredentials, options?: grpc.ChannelOptions) => HealthClient;

export interface CheckHealthOptions {
  /** Service name to ask about; '' (default) is the server as a whole. */
  service?: string;
  timeoutMs?: number;
  credentials?: grpc.ChannelCredentials;
}

/**
 * Asks `address` for its serving status. Resolves with the status; rejects with the call's
 * ServiceError (NOT_FOUND for a service name the server does not know, UNAVAILABLE when
 * nothing listens, DEADLINE_EXCEEDED after `timeoutMs`, default 5 s).
 */
export function checkHealth(address: string, options: CheckHealthOptions = {}): Promise<ServingStatus> {
  const client = new HealthClientConstructor(address, options.credentials ?? grpc.credentials.createInsecure(), channelOptions());
  return new Promise<ServingStatus>((resolve, reject) => {
    client.check({ service: options.service ?? '' }, { deadline: Date.now() + (options.timeoutMs ?? 5_000) }, (err, response) => {
      client.close();
      if (err) reject(err);
      else resolve((response?.status ?? 'UNKNOWN') as ServingStatus);
    });
  });
}
