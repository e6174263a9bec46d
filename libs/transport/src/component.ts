/**
 * Component runs (RunComponent): output tensors as messages, and the client side that collects a
 * run's stream into named tensors plus its summary.
 */
import type * as grpc from '@grpc/grpc-js';
import { TensorDtype, type ComponentOutput, type ComponentRequest, type ComponentSummary, type ComponentTensor } from './gen/longshot/v1/worker';
import type { WorkerClient } from './client';

export type ComponentValues = Float32Array | Int32Array | Uint8Array;

const LITTLE_ENDIAN_HOST = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function littleEndianBytes(values: ComponentValues): Buffer {
  const out = Buffer.from(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
  if (!LITTLE_ENDIAN_HOST && !(values instanceof Uint8Array)) out.swap32();
  return out;
}

/** One output tensor as a message (copies `values` into little-endian bytes). */
export function componentTensor(name: string, shape: readonly number[], values: ComponentValues): ComponentTensor {
  const count = shape.reduce((a, b) => a * b, 1);
  if (count !== values.length) throw new Error(`component tensor ${name}: ${values.length} values for shape [${shape.join(', ')}]`);
  const dtype = values instanceof Float32Array ? TensorDtype.TENSOR_DTYPE_F32 : values instanceof Int32Array ? TensorDtype.TENSOR_DTYPE_I32 : TensorDtype.TENSOR_DTYPE_U8;
  return { name, shape: [...shape], dtype, data: littleEndianBytes(values) };
}

/** The values of a received tensor, checked against its shape and dtype. */
export function componentValues(t: ComponentTensor): ComponentValues {
  const count = t.shape.reduce((a, b) => a * b, 1);
  if (t.dtype === TensorDtype.TENSOR_DTYPE_U8) {
    if (t.data.length !== count) throw new Error(`component tensor ${t.name}: ${t.data.length} bytes for shape [${t.shape.join(', ')}] of 1-byte values`);
    return new Uint8Array(t.data);
  }
  if (t.dtype !== TensorDtype.TENSOR_DTYPE_F32 && t.dtype !== TensorDtype.TENSOR_DTYPE_I32) throw new Error(`component tensor ${t.name}: dtype ${t.dtype} is not F32, I32 or U8`);
  if (t.data.length !== count * 4) throw new Error(`component tensor ${t.name}: ${t.data.length} bytes for shape [${t.shape.join(', ')}] of 4-byte values`);
  const bytes = Buffer.from(t.data); // aligned copy
  if (!LITTLE_ENDIAN_HOST) bytes.swap32();
  return t.dtype === TensorDtype.TENSOR_DTYPE_F32 ? new Float32Array(bytes.buffer, bytes.byteOffset, count) : new Int32Array(bytes.buffer, bytes.byteOffset, count);
}

export interface ComponentResult {
  readonly tensors: ReadonlyMap<string, { shape: readonly number[]; values: ComponentValues }>;
  readonly summary: ComponentSummary;
}

/**
 * Runs a component on the worker behind `client` and collects its output. Rejects with the
 * call's gRPC error (its `code` tells a refused request from a lost worker), or when the stream
 * ends without a summary.
 */
export function runComponent(client: WorkerClient, request: ComponentRequest, options: { deadlineMs?: number; signal?: AbortSignal } = {}): Promise<ComponentResult> {
  return new Promise((resolve, reject) => {
    const call: grpc.ClientReadableStream<ComponentOutput> = client.runComponent(request, options.deadlineMs ? { deadline: Date.now() + options.deadlineMs } : {});
    const tensors = new Map<string, { shape: readonly number[]; values: ComponentValues }>();
    let summary: ComponentSummary | null = null;
    let failed = false;
    const fail = (e: unknown) => {
      if (failed) return;
      failed = true;
      options.signal?.removeEventListener('abort', onAbort);
      call.cancel();
      reject(e);
    };
    const onAbort = () => fail(options.signal!.reason ?? new Error('aborted'));
    options.signal?.addEventListener('abort', onAbort, { once: true });
    call.on('data', (m: ComponentOutput) => {
      try {
        if (m.output?.$case === 'tensor') tensors.set(m.output.value.name, { shape: m.output.value.shape, values: componentValues(m.output.value) });
        else if (m.output?.$case === 'summary') summary = m.output.value;
      } catch (e) {
        fail(e);
      }
    });
    call.on('error', fail);
    call.on('end', () => {
      if (failed) return;
      options.signal?.removeEventListener('abort', onAbort);
      if (!summary) return reject(new Error('the component stream ended without a summary'));
      resolve({ tensors, summary });
    });
  });
}
