/** Named float32 tensors of one stage, keyed by diffusers name. */
export type StageWeights = ReadonlyMap<string, Float32Array>;
