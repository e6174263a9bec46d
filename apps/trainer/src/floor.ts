/**
 * The floor the evaluation compares a trained pipeline with: the same directory (configs,
 * tokenizer, text encoder, scheduler) with the transformer's and the VAE decoder's weights drawn
 * from a seed instead of trained. Everything but training is equal, so the difference between
 * the two is what training bought.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openPipelineDir, resolveModel, SEEDED_MODEL_SEED, seededTensor, SHIPPED_PIPELINES, vaeDecoderTensorSpecs, weightSpecs, writeSafetensors, type ModelSource, type TensorSpec } from '@longshot/model';

/** The name `--floor` takes for the model's own architecture with seeded weights. */
export const SEEDED_FLOOR = 'seeded';

/** A pipeline directory's path from what `--model` names: a shipped pipeline's name or a directory. */
export function pipelineDirOf(nameOrDir: string): string | null {
  if (Object.hasOwn(SHIPPED_PIPELINES, nameOrDir)) return SHIPPED_PIPELINES[nameOrDir];
  return fs.existsSync(path.join(nameOrDir, 'model_index.json')) ? nameOrDir : null;
}

/** Writes the seeded floor of `modelDir` into a fresh temporary directory and resolves it. */
export function seededFloor(modelDir: string): { source: ModelSource; dir: string } {
  const p = openPipelineDir(modelDir);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'longshot-floor-'));
  fs.cpSync(modelDir, dir, { recursive: true });
  const seeded = (file: string, specs: readonly TensorSpec[]) =>
    writeSafetensors(path.join(dir, file), specs.map((s) => ({ name: s.name, shape: s.shape, dtype: 'F32' as const, data: () => seededTensor(s, SEEDED_MODEL_SEED) })), { format: 'pt' });
  for (const f of fs.readdirSync(path.join(dir, 'transformer'))) if (f.endsWith('.safetensors') || f.endsWith('.index.json')) fs.rmSync(path.join(dir, 'transformer', f));
  seeded('transformer/diffusion_pytorch_model.safetensors', weightSpecs(p.config, { l0: 0, l1: p.config.layers, head: true, tail: true }));
  seeded('vae/diffusion_pytorch_model.safetensors', vaeDecoderTensorSpecs(p.vae));
  return { source: resolveModel(dir), dir };
}
