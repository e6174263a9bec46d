import * as grpc from '@grpc/grpc-js';
import { WorkerService, type WorkerClient, type WorkerServer } from './gen/longshot/v1/worker';
import { deserializeActivationFrame, serializeActivationFrame } from './frames';
import { channelOptions } from './limits';

export type { WorkerClient, WorkerServer };

/**
 * The Worker service with the copy-avoiding ActivationFrame codec (see frames.ts) in place of
 * the generated one. Wire-compatible with the generated definition; use this one on both ends
 * so neither side pays for copying tensor bytes.
 */
export const workerServiceDefinition = {
  ...WorkerService,
  activations: {
    ...WorkerService.activations,
    requestSerialize: serializeActivationFrame,
    requestDeserialize: deserializeActivationFrame,
  },
} as const satisfies grpc.ServiceDefinition;

const WorkerClientConstructor = grpc.makeGenericClientConstructor(
  workerServiceDefinition,
  'longshot.v1.Worker',
) as unknown as new (address: string, credentials: grpc.ChannelCredentials, options?: Partial<grpc.ClientOptions>) => WorkerClient;

export interface WorkerClientOptions {
  /** Defaults to insecure: stage links run inside the cluster network. */
  credentials?: grpc.ChannelCredentials;
  /** Merged over `channelOptions()`. */
  channel?: grpc.ChannelOptions;
}

/** A typed Worker client for `address` (host:port) with Longshot's channel settings. */
export function createWorkerClient(address: string, options: WorkerClientOptions = {}): WorkerClient {
  return new WorkerClientConstructor(
    address,
    options.credentials ?? grpc.credentials.createInsecure(),
    channelOptions(options.channel),
  );
}
