/**
 * Pipeline layouts (docs/parallelism.md): K stages, each a group of `ulysses` x (cfgParallel ? 2 : 1)
 * workers. A structural subset of libs/model's StageLayout (which runs it) plus the stage count,
 * and how the planner picks one.
 */

/** How one stage's work is split among its group (libs/model StageLayout has the same shape). */
export interface StageGroupShape {
  readonly ulysses: number;
  readonly cfgParallel: boolean;
}

export interface PipelineLayout extends StageGroupShape {
  readonly stages: number;
}

export const SINGLE_STAGE_GROUP: StageGroupShape = { ulysses: 1, cfgParallel: false };

/** Workers of one stage group. */
export function groupWorkers(g: StageGroupShape): number {
  return g.ulysses * (g.cfgParallel ? 2 : 1);
}

/** Workers a layout leases: K x U (x 2 with CFG parallel). */
export function layoutWorkers(l: PipelineLayout): number {
  return l.stages * groupWorkers(l);
}

/** "K=4 x U=2", "K=2 x CFG", "K=3 x U=2 x CFG", "K=8". */
export function describeLayout(l: PipelineLayout): string {
  return [`K=${l.stages}`, ...(l.ulysses > 1 ? [`U=${l.ulysses}`] : []), ...(l.cfgParallel ? ['CFG'] : [])].join(' x ');
}

/** Ulysses degrees the planner considers: at most one node's 8 GPUs, and never more than the heads. */
export const ULYSSES_DEGREES = [1, 2, 3, 4, 6, 8] as const;

/**
 * Every layout of at most `workers` workers for a model of `layers` layers and `heads` heads,
 * fewest workers first. `fixed`: the group shape's fields a request set (any U from 1 to the heads);
 * the others range over ULYSSES_DEGREES and CFG parallel or not.
 */
export function candidateLayouts(workers: number, layers: number, heads: number, fixed: Partial<StageGroupShape> = {}): PipelineLayout[] {
  const out: PipelineLayout[] = [];
  for (const cfgParallel of fixed.cfgParallel === undefined ? [false, true] : [fixed.cfgParallel]) {
    for (const ulysses of fixed.ulysses === undefined ? ULYSSES_DEGREES : [fixed.ulysses]) {
      if (ulysses > heads) continue;
      const per = groupWorkers({ ulysses, cfgParallel });
      for (let stages = 1; stages <= Math.min(layers, Math.floor(workers / per)); stages++) out.push({ stages, ulysses, cfgParallel });
    }
  }
  return out.sort((a, b) => layoutWorkers(a) - layoutWorkers(b) || b.stages - a.stages || Number(a.cfgParallel) - Number(b.cfgParallel));
}

/**
 * The layout to run: walking the candidates from the fewest workers up, a layout replaces the
 * best so far only when it is at least `minGain` faster (each worker is leased whole), so extra
 * workers are taken only where they buy time. Among equal worker counts the first listed wins ties.
 */
export function pickLayout(candidates: readonly PipelineLayout[], seconds: (l: PipelineLayout) => number, minGain: number): { layout: PipelineLayout; seconds: number } {
  if (candidates.length === 0) throw new RangeError('no candidate layouts');
  let best = { layout: candidates[0], seconds: seconds(candidates[0]) };
  for (const l of candidates.slice(1)) {
    const s = seconds(l);
    const better = layoutWorkers(l) === layoutWorkers(best.layout) ? s < best.seconds : s < best.seconds * (1 - minGain);
    if (better) best = { layout: l, seconds: s };
  }
  return best;
}
