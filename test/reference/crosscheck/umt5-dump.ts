/**
 * Writes a seeded umT5 case for the independent NumPy cross-check (umt5_numpy.py): the perturbed
 * seeded weights of a SEEDED_UMT5 config, padded ids and mask, and the float64 reference's output
 * (stored as F32), all in one safetensors file. Not part of `npm test`.
 *
 *   npx tsx test/reference/crosscheck/umt5-dump.ts small 48 13 /tmp/umt5-case.safetensors
 *   python3 test/reference/crosscheck/umt5_numpy.py /tmp/umt5-case.safetensors
 */
import { SEEDED_UMT5, seededUmt5Weights, umt5TensorSpecs, writeSafetensors, type TensorInput } from '@longshot/model';
import { Rng } from '@longshot/random';
import { referenceUmt5Encode } from '../umt5';
import { perturbConstants } from '../weights';

const [name = 'small', textLenArg = '48', lengthArg = '13', out = '/tmp/umt5-case.safetensors'] = process.argv.slice(2);
const config = SEEDED_UMT5[name];
if (!config) throw new Error(`unknown config ${name}`);
const textLen = Number(textLenArg);
const length = Number(lengthArg);
const seed = 77;
const weights = perturbConstants(seededUmt5Weights(config, seed), umt5TensorSpecs(config), seed);
const rng = Rng.from(seed, 'crosscheck');
const ids = new Float32Array(textLen);
const mask = new Float32Array(textLen);
for (let i = 0; i < length; i++) {
  ids[i] = i === length - 1 ? 1 : 2 + Math.floor(rng.uniform() * (config.vocabSize - 2));
  mask[i] = 1;
}
const ref = referenceUmt5Encode(config, weights, ids, mask);
const tensors: TensorInput[] = umt5TensorSpecs(config).map((s) => ({ name: s.name, shape: s.shape, data: weights.get(s.name)! }));
tensors.push({ name: 'ids', shape: [textLen], data: ids }, { name: 'mask', shape: [textLen], data: mask }, { name: 'reference', shape: [textLen, config.dModel], data: Float32Array.from(ref) });
writeSafetensors(out, tensors, { config: JSON.stringify(config) });
console.log(`wrote ${out}: ${name}, ${length} of ${textLen} tokens`);
