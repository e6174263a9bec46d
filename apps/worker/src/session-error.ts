/** The gRPC status codes a worker refuses requests with (each a `code` of longshot_rejected_tensors_total). */
export const SESSION_ERROR_CODES = ['INVALID_ARGUMENT', 'NOT_FOUND', 'UNAUTHENTICATED', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ALREADY_EXISTS'] as const;

/** A request the worker refuses: becomes a gRPC status with this code's name. */
export class SessionError extends Error {
  constructor(
    readonly code: (typeof SESSION_ERROR_CODES)[number],
    message: string,
  ) {
    super(message);
    this.name = 'SessionError';
  }
}
