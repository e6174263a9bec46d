export * from './keys';
export * from './redis-server';
export * from './checkpoints';
export * from './registry';
export { JobKeyspace } from './job-keys';
export { CorruptValueError } from './codec';
export * from './leases';
export * from './jobs';
export * from './text-embeddings';
