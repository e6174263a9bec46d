/**
 * `node --import tsx apps/trainer/src/describe.ts VIDEO.mp4 --prompt TEXT`: what a rendered
 * shapes video shows, measured from its decoded frames (apps/trainer/src/analysis.ts), next to
 * what the prompt asked for. With --strict, exits 1 when the colour, shape or motion differ; 2 on
 * a usage error.
 */
import { readRgbFrames } from '@longshot/media';
import { analyseVideo } from './analysis';
import { loadGrammar, requireParts, type CaptionParts } from './grammar';

export interface Description {
  readonly asked: CaptionParts;
  readonly drawn: { colour: string | null; shape: string | null; motion: string | null; background: readonly number[] };
  readonly adheres: boolean;
}

export async function describeVideo(file: string, prompt: string): Promise<Description> {
  const g = loadGrammar();
  const { parts } = requireParts(g, prompt);
  const frames = await readRgbFrames(file);
  const a = analyseVideo(g, frames);
  const adheres = a.colour === parts.colour && a.shape === parts.shape && a.motion === parts.motion;
  return { asked: parts, drawn: { colour: a.colour, shape: a.shape, motion: a.motion, background: a.background }, adheres };
}

async function main(argv: string[]): Promise<number> {
  const file = argv[0];
  const at = argv.indexOf('--prompt');
  if (!file || file.startsWith('--') || at < 0 || argv[at + 1] === undefined) {
    process.stderr.write('usage: describe.ts VIDEO.mp4 --prompt TEXT [--strict]\n');
    return 2;
  }
  const d = await describeVideo(file, argv[at + 1]);
  const mark = (ok: boolean) => (ok ? 'yes' : 'NO');
  const w = (v: string | null) => v ?? 'nothing';
  process.stdout.write(
    `drawn: a ${w(d.drawn.colour)} ${w(d.drawn.shape)} ${w(d.drawn.motion)} (background rgb ${d.drawn.background.map((v) => Math.round(v)).join(',')})\n` +
      `asked: a ${d.asked.colour} ${d.asked.shape} ${d.asked.motion} on a ${d.asked.background} background\n` +
      `adherence: colour ${mark(d.drawn.colour === d.asked.colour)}, shape ${mark(d.drawn.shape === d.asked.shape)}, motion ${mark(d.drawn.motion === d.asked.motion)}\n`,
  );
  return d.adheres || !argv.includes('--strict') ? 0 : 1;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: Error) => {
      process.stderr.write(`describe: ${e.message}\n`);
      process.exit(2);
    },
  );
}
