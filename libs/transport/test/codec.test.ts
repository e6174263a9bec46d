import { bf16ToF32, f32ToBf16 } from '@longshot/dtype';
import { describe, expect, it } from 'vitest';
import {
  ActivationFrame,
  PayloadKind,
  WireDtype,
  DataPlaneTransport,
  decodePayload,
  deserializeActivationFrame,
  encodePayload,
  serializeActivationFrame,
} from '../src/index';
import { PAYLOAD_ALIGNMENT, chunkFrameLength, encodeChunkFrameInto } from '../src/frames';

function specials(): Float32Array {
  return new Float32Array([0, -0, 1, -1, 3.14159, 1e-40, -1e-38, 3.4e38, Infinity, -Infinity, NaN, 65504.5, 1 + 2 ** -8, 1 + 3 * 2 ** -9]);
}

describe('payload codec', () => {
  it('f32 round-trips bit-exactly and without copying', () => {
    const data = specials();
    const bytes = encodePayload(data, 'f32');
    expect(bytes.buffer).toBe(data.buffer);
    expect(bytes.length).toBe(data.length * 4);
    expect(bytes.readFloatLE(8)).toBe(1);
    const back = decodePayload(bytes, 'f32', data.length);
    expect(back.buffer).toBe(data.buffer);
    expect(new Uint32Array(back.buffer, back.byteOffset, back.length)).toEqual(new Uint32Array(data.buffer));
  });

  it('f32 decode copies bytes that are not 4-byte aligned', () => {
    const data = specials();
    const shifted = Buffer.alloc(data.byteLength + 1);
    Buffer.from(data.buffer).copy(shifted, 1);
    const back = decodePayload(shifted.subarray(1), 'f32', data.length);
    expect(new Uint32Array(back.buffer, back.byteOffset, back.length)).toEqual(new Uint32Array(data.buffer));
  });

  it('bf16 rounds to nearest even, as the model library does', () => {
    const data = specials();
    const bytes = encodePayload(data, 'bf16');
    expect(bytes.length).toBe(data.length * 2);
    for (let i = 0; i < data.length; i++) expect(bytes.readUInt16LE(2 * i)).toBe(f32ToBf16(data[i]));
    // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: even mantissa (1) wins; 1 + 3*2^-9 rounds up.
    expect(bf16ToF32(bytes.readUInt16LE(2 * 12))).toBe(1);
    expect(bf16ToF32(bytes.readUInt16LE(2 * 13))).toBe(1 + 2 ** -7);
    const back = decodePayload(bytes, 'bf16', data.length);
    for (let i = 0; i < data.length; i++) {
      if (Number.isNaN(data[i])) expect(back[i]).toBeNaN();
      else expect(back[i]).toBe(bf16ToF32(f32ToBf16(data[i])));
    }
  });

  it('bf16 decode handles odd byte offsets', () => {
    const bytes = encodePayload(new Float32Array([1.5, -2.25, 7]), 'bf16');
    const odd = Buffer.alloc(bytes.length + 1);
    bytes.copy(odd, 1);
    expect(Array.from(decodePayload(odd.subarray(1), 'bf16', 3))).toEqual([1.5, -2.25, 7]);
  });

  it('rejects a byte count that does not match the element count', () => {
    expect(() => decodePayload(Buffer.alloc(10), 'f32', 3)).toThrow(/10 bytes do not hold 3 f32 values \(12 bytes\)/);
  });
});

describe('ActivationFrame wire codec', () => {
  const header: ActivationFrame = {
    frame: {
      $case: 'header',
      value: {
        sessionId: 's-1',
        token: 't',
        seq: 7,
        kind: PayloadKind.PAYLOAD_KIND_HIDDEN,
        step: { iteration: 3, block: 1, step: 2, timestep: 0.25, prefixFrames: 2, ownFrames: 4, contextFrames: 2, height: 30, width: 52 },
        shape: [2, 3, 4],
        dtype: WireDtype.WIRE_DTYPE_F32,
        byteLength: 96,
        transport: DataPlaneTransport.DATA_PLANE_TRANSPORT_GRPC,
        ncclId: Buffer.alloc(0),
      },
    },
  };

  it('matches the generated encoder byte for byte', () => {
    const data = Buffer.from(Array.from({ length: 300 }, (_, i) => i & 0xff));
    const cases: ActivationFrame[] = [
      header,
      { frame: { $case: 'chunk', value: { seq: 7, offset: 0, data } } },
      { frame: { $case: 'chunk', value: { seq: 2 ** 40 + 3, offset: 2 ** 33 + 1, data } } },
      { frame: { $case: 'chunk', value: { seq: 1, offset: 5, data: Buffer.alloc(0) } } },
      { frame: undefined },
    ];
    for (const frame of cases) {
      const mine = serializeActivationFrame(frame);
      expect(mine.equals(Buffer.from(ActivationFrame.encode(frame).finish()))).toBe(true);
      expect(deserializeActivationFrame(mine)).toEqual(ActivationFrame.decode(mine));
    }
  });

  it('decodes chunk data as a view of the message', () => {
    const msg = serializeActivationFrame({ frame: { $case: 'chunk', value: { seq: 1, offset: 0, data: Buffer.alloc(1000, 9) } } });
    const f = deserializeActivationFrame(msg).frame;
    expect(f?.$case).toBe('chunk');
    if (f?.$case === 'chunk') expect(f.value.data.buffer).toBe(msg.buffer);
  });

  it('skips unknown fields and keeps the last oneof member', () => {
    const chunk = serializeActivationFrame({ frame: { $case: 'chunk', value: { seq: 4, offset: 8, data: Buffer.from([1, 2]) } } });
    const unknown = Buffer.from([(9 << 3) | 0, 0x96, 0x01]); // field 9, varint 150
    const both = Buffer.concat([serializeActivationFrame(header), unknown, chunk]);
    const f = deserializeActivationFrame(both).frame;
    expect(f?.$case).toBe('chunk');
    if (f?.$case === 'chunk') expect([f.value.seq, f.value.offset, [...f.value.data]]).toEqual([4, 8, [1, 2]]);
  });

  it('can lay a chunk out with its data aligned in the gRPC message, decoding to the same values', () => {
    for (const seq of [1, 2, 127, 128, 16383, 16384, 2 ** 40 + 3]) {
      for (const length of [1, 3, 300, 70_000, 2 ** 21 + 5]) {
        const data = Buffer.alloc(length, seq % 251);
        const chunk = { seq, offset: 0, data };
        const frame = encodeChunkFrameInto(Buffer.alloc(chunkFrameLength(seq, 0, length, true)), chunk, true);
        expect(frame.length).toBe(chunkFrameLength(seq, 0, length, true));
        // grpc-js puts a 5-byte prefix (flag, length) in front of every message.
        expect((5 + frame.length - length) % PAYLOAD_ALIGNMENT).toBe(0);
        const generated = ActivationFrame.decode(frame).frame;
        expect(generated?.$case).toBe('chunk');
        if (generated?.$case === 'chunk') expect([generated.value.seq, generated.value.offset, Buffer.from(generated.value.data).equals(data)]).toEqual([seq, 0, true]);
        const mine = deserializeActivationFrame(frame).frame;
        expect(mine?.$case).toBe('chunk');
        if (mine?.$case === 'chunk') expect([mine.value.seq, mine.value.offset, mine.value.data.equals(data)]).toEqual([seq, 0, true]);
      }
    }
  });
});
