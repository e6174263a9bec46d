import * as v8 from 'node:v8';

/**
 * Retained memory of the worker process, for leak checks: what is still reachable after a forced
 * full garbage collection. Lifetime peak RSS (what the kernel reports) also counts garbage that
 * had not been collected yet and allocator slack that is never returned, so it moves with timing;
 * retained memory moves only when something is kept.
 *
 * retained = V8 heap in use outside its code spaces + `external` (ArrayBuffers, which hold the
 * stage workspace's scratch tensors, the block queue's latents and gRPC payloads, plus memory
 * native code reports to V8). Code spaces are left out: the JIT keeps compiling and replacing
 * optimised code for minutes, a drift that is not data the worker keeps.
 */
export type RetainedMemorySampler = () => number;

const CODE_SPACES = new Set(['code_space', 'code_large_object_space']);

/** Heap bytes in use outside the code spaces plus external memory, now. */
export function retainedBytesNow(): number {
  let heap = 0;
  for (const s of v8.getHeapSpaceStatistics()) if (!CODE_SPACES.has(s.space_name)) heap += s.space_used_size;
  return heap + process.memoryUsage().external;
}

/**
 * A sampler that forces a full collection before each reading. Needs node's `--expose-gc`; the
 * error says so rather than silently measuring garbage.
 */
export function retainedMemorySampler(): RetainedMemorySampler {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (typeof gc !== 'function') throw new Error('--memory-probe needs node started with --expose-gc');
  return () => {
    gc();
    return retainedBytesNow();
  };
}
