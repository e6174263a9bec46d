import { encodeTensor, getConfig } from '@longshot/model';

/** A safetensors file of text embeddings for `tiny` (POST /v1/embeddings): cond [rows, textDim]. */
export function embeddingsFile(rows = 3, dim = getConfig('tiny').textDim): Buffer {
  const data = new Float32Array(rows * dim).map((_, i) => Math.sin(i));
  const header = Buffer.from(JSON.stringify({ cond: { dtype: 'F32', shape: [rows, dim], data_offsets: [0, data.byteLength] } }));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  return Buffer.concat([len, header, encodeTensor(data, 'F32')]);
}
