/** Contiguous layer ranges for K stages: stage 0 is the head, stage K-1 the tail. */
export interface LayerRange {
  readonly l0: number;
  readonly l1: number;
  readonly head: boolean;
  readonly tail: boolean;
}

/**
 * Splits `layers` into K contiguous ranges as even as possible. When the split is uneven the
 * extra layers go to the middle stages first, since the head (patch embedding, sampler) and the
 * tail (output head, guidance) already carry extra work.
 */
export function partitionLayers(layers: number, stages: number): LayerRange[] {
  if (!Number.isInteger(layers) || layers < 1) throw new RangeError(`layers must be a positive integer, got ${layers}`);
  if (!Number.isInteger(stages) || stages < 1 || stages > layers) {
    throw new RangeError(`stages must be an integer in 1..${layers} (the layer count), got ${stages}`);
  }
  const base = Math.floor(layers / stages);
  let extra = layers % stages;
  const sizes = new Array<number>(stages).fill(base);
  // Middle stages first (outward from the centre), then the ends.
  const order = Array.from({ length: stages }, (_, i) => i).sort(
    (a, b) => endPenalty(a, stages) - endPenalty(b, stages) || Math.abs(a - (stages - 1) / 2) - Math.abs(b - (stages - 1) / 2) || a - b,
  );
  for (const s of order) {
    if (extra === 0) break;
    sizes[s]++;
    extra--;
  }
  const ranges: LayerRange[] = [];
  let l0 = 0;
  sizes.forEach((n, i) => {
    ranges.push({ l0, l1: l0 + n, head: i === 0, tail: i === stages - 1 });
    l0 += n;
  });
  return ranges;
}

function endPenalty(i: number, stages: number): number {
  return i === 0 || i === stages - 1 ? 1 : 0;
}
