/**
 * Child process of stage-memory.test.ts: opens a pipeline directory, loads one stage's weights
 * and prints the resident-set growth that loading caused, next to what the engine holds. Run
 * with --expose-gc so garbage is not counted. Argv: DIR STAGES STAGE_INDEX.
 */
import { openPipelineDir, loadPipelineStage, stageFootprint } from '../../src/pipeline-dir';
import { partitionLayers } from '@longshot/planner';

const [dir, stages, index] = process.argv.slice(2);
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('run with --expose-gc');
const p = openPipelineDir(dir);
const range = partitionLayers(p.config.layers, Number(stages))[Number(index)];
const footprint = stageFootprint(p, range);
gc();
const before = process.memoryUsage().rss;
const weights = loadPipelineStage(p, range);
gc();
const after = process.memoryUsage().rss;
const held = [...weights.values()].reduce((n, w) => n + w.byteLength, 0);
process.stdout.write(`${JSON.stringify({ before, after, held, engineBytes: footprint.engineBytes, storedBytes: footprint.storedBytes, files: footprint.files, range })}\n`);
