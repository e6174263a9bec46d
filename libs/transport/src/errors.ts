import { status as Status } from '@grpc/grpc-js';

/** A failed transport operation: the gRPC status that ended it and the peer it involved. */
export class TransportError extends Error {
  override readonly name = 'TransportError';

  constructor(
    readonly code: Status,
    readonly details: string,
    readonly peer: string,
    options?: { cause?: unknown },
  ) {
    super(`${Status[code] ?? `status ${code}`} from ${peer}: ${details}`, options);
  }
}

/** How a receiver ends a stream it refuses; `message` becomes the status details. */
export interface StreamRejection {
  code: Status;
  message: string;
}
