import { describe, expect, it } from 'vitest';
import { registry } from '@longshot/telemetry';
import { observeProgressLine, stageFinished } from '../src/metrics';

const sample = async (name: string, labels: Record<string, string>): Promise<number | undefined> => {
  const m = await registry.getSingleMetric(name)?.get();
  return m?.values.find((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x))?.value;
};

describe('trainer metrics', () => {
  it('reads step, steps, losses and ETA from a progress line', async () => {
    expect(observeProgressLine('[dit] step 3850/6000 loss 0.4424 smoothed 0.4602 elapsed 503s eta 1272s')).toBe(true);
    expect(await sample('longshot_trainer_step', { stage: 'dit' })).toBe(3850);
    expect(await sample('longshot_trainer_steps', { stage: 'dit' })).toBe(6000);
    expect(await sample('longshot_trainer_loss', { stage: 'dit', kind: 'last' })).toBe(0.4424);
    expect(await sample('longshot_trainer_loss', { stage: 'dit', kind: 'smoothed' })).toBe(0.4602);
    expect(await sample('longshot_trainer_eta_seconds', { stage: 'dit' })).toBe(1272);
    // Lines without a loss (the latents pass) and exponents.
    expect(observeProgressLine('[latents] step 64/1200 elapsed 20s eta 355s')).toBe(true);
    expect(await sample('longshot_trainer_step', { stage: 'latents' })).toBe(64);
    expect(observeProgressLine('[vae] step 10/1900 loss 1.5e-03 elapsed 3s eta 500s')).toBe(true);
    expect(await sample('longshot_trainer_loss', { stage: 'vae', kind: 'last' })).toBe(0.0015);
    // A stage name with a hyphen (the second DiT phase).
    expect(observeProgressLine('[dit-more] step 25/9000 loss 0.51 smoothed 0.5 elapsed 11s eta 3900s')).toBe(true);
    expect(await sample('longshot_trainer_step', { stage: 'dit-more' })).toBe(25);
  });

  it('ignores other lines', () => {
    for (const line of ['[dit] resuming at step 3000/6000', 'trainer: text-embeddings.safetensors is missing', '', 'step 1/2']) expect(observeProgressLine(line)).toBe(false);
  });

  it('counts stages by result, each known one at 0 before its first', async () => {
    expect(await sample('longshot_trainer_stages_total', { stage: 'export', result: 'failed' })).toBe(0);
    stageFinished('export', 'failed');
    stageFinished('vae', 'ok', 12.5);
    expect(await sample('longshot_trainer_stages_total', { stage: 'export', result: 'failed' })).toBe(1);
    expect(await sample('longshot_trainer_stage_seconds', { stage: 'vae' })).toBe(12.5);
  });
});
