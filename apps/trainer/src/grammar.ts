/**
 * The caption grammar of the synthetic shapes clips (apps/trainer/grammar.json), shared by the
 * trainer and the evaluation: one validated, typed object, captions composed from parts and
 * parsed back, and the held-out (colour, shape, motion) triples the trainer never shows together.
 * Pure apart from `loadGrammar`, which reads the file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export type Rgb = readonly [number, number, number];

export type LinearMotion = { readonly kind: 'linear'; readonly dx: number; readonly dy: number };
export type BouncingMotion = { readonly kind: 'bouncing'; readonly height: number; readonly bounces: number };
export type GrowingMotion = { readonly kind: 'growing'; readonly scale: number };
export type OrbitingMotion = { readonly kind: 'orbiting'; readonly radius: number; readonly turns: number };
export type Motion = LinearMotion | BouncingMotion | GrowingMotion | OrbitingMotion;

export interface Grammar {
  readonly width: number;
  readonly height: number;
  readonly frames: number;
  readonly fps: number;
  readonly template: string;
  /** In grammar.json order: the index is the shape index of the held-out rule. */
  readonly shapes: readonly string[];
  /** Names in grammar.json key order (the colour index of the held-out rule) and their sRGB. */
  readonly colours: readonly string[];
  readonly colourRgb: Readonly<Record<string, Rgb>>;
  readonly backgrounds: readonly string[];
  readonly backgroundRgb: Readonly<Record<string, Rgb>>;
  /** Size words and their radius in pixels. */
  readonly sizes: Readonly<Record<string, number>>;
  /** Motion phrases in grammar.json key order (the motion index of the held-out rule). */
  readonly motions: readonly string[];
  readonly motion: Readonly<Record<string, Motion>>;
}

/** A caption's parts; `size` null means "either size" (the caption has no size word). */
export interface CaptionParts {
  readonly colour: string;
  readonly shape: string;
  readonly motion: string;
  readonly background: string;
  readonly size: string | null;
}

export interface ParsedPrompt {
  /** The parts the prompt names (a part it does not name is absent). */
  readonly parts: Partial<CaptionParts>;
  /** Parts the grammar needs and the prompt does not name (size is optional). */
  readonly missing: readonly (keyof CaptionParts)[];
  /** Words of the prompt the grammar does not know, in order, each once. */
  readonly unknownWords: readonly string[];
}

export class GrammarError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GrammarError';
  }
}

/** The grammar shipped with the trainer. */
export const GRAMMAR_FILE = path.join(__dirname, '..', 'grammar.json');

/** The words a caption has besides its parts. */
const TEMPLATE_WORDS = ['a', 'on', 'background'];

export function loadGrammar(file = GRAMMAR_FILE): Grammar {
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new GrammarError(`${path.basename(file)}: cannot read the grammar (${(e as Error).message})`);
  }
  return parseGrammar(json, path.basename(file));
}

/** Checks grammar.json's content; every error names the file and the field. */
export function parseGrammar(json: unknown, source = 'grammar.json'): Grammar {
  const fail = (field: string, what: string): never => {
    throw new GrammarError(`${source}: ${field} ${what}`);
  };
  const obj = (v: unknown, field: string): Record<string, unknown> => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : fail(field, 'must be an object'));
  const posInt = (v: unknown, field: string): number => (Number.isInteger(v) && (v as number) > 0 ? (v as number) : fail(field, `must be a positive integer, got ${JSON.stringify(v)}`));
  const num = (v: unknown, field: string): number => (typeof v === 'number' && Number.isFinite(v) ? v : fail(field, `must be a number, got ${JSON.stringify(v)}`));
  const word = (v: string, field: string): string => (/^[a-z]+( [a-z]+)*$/.test(v) ? v : fail(field, `has '${v}': lower-case words only`));
  const rgb = (v: unknown, field: string): Rgb =>
    Array.isArray(v) && v.length === 3 && v.every((c) => Number.isInteger(c) && c >= 0 && c <= 255) ? (v as unknown as Rgb) : fail(field, 'must be [r, g, b] integers in 0..255');
  const palette = (v: unknown, field: string): [string[], Record<string, Rgb>] => {
    const o = obj(v, field);
    const names = Object.keys(o).map((k) => word(k, field));
    if (names.length === 0) fail(field, 'is empty');
    return [names, Object.fromEntries(names.map((n) => [n, rgb(o[n], `${field}.${n}`)]))];
  };

  const g = obj(json, 'the file');
  const width = posInt(g.width, 'width');
  const height = posInt(g.height, 'height');
  const frames = posInt(g.frames, 'frames');
  const fps = posInt(g.fps, 'fps');
  const template = typeof g.template === 'string' ? g.template : fail('template', 'must be a string');
  for (const slot of ['{size }', '{colour}', '{shape}', '{motion}', '{background}']) if (!template.includes(slot)) fail('template', `lacks ${slot}`);
  if (!Array.isArray(g.shapes) || g.shapes.length === 0 || !g.shapes.every((s) => typeof s === 'string')) fail('shapes', 'must be a non-empty list of words');
  const shapes = (g.shapes as string[]).map((s) => word(s, 'shapes'));
  const [colours, colourRgb] = palette(g.colours, 'colours');
  const [backgrounds, backgroundRgb] = palette(g.backgrounds, 'backgrounds');
  const sizesObj = obj(g.sizes, 'sizes');
  const sizes = Object.fromEntries(Object.entries(sizesObj).map(([k, v]) => [word(k, 'sizes'), num(v, `sizes.${k}`)]));
  const motionsObj = obj(g.motions, 'motions');
  const motions = Object.keys(motionsObj).map((k) => word(k, 'motions'));
  const motion: Record<string, Motion> = {};
  for (const name of motions) {
    const m = obj(motionsObj[name], `motions.${name}`);
    const f = (key: string) => num(m[key], `motions.${name}.${key}`);
    if ('dx' in m || 'dy' in m) motion[name] = { kind: 'linear', dx: f('dx'), dy: f('dy') };
    else if ('height' in m) motion[name] = { kind: 'bouncing', height: f('height'), bounces: f('bounces') };
    else if ('scale' in m) motion[name] = { kind: 'growing', scale: f('scale') };
    else if ('radius' in m) motion[name] = { kind: 'orbiting', radius: f('radius'), turns: f('turns') };
    else fail(`motions.${name}`, 'needs dx/dy, height/bounces, scale or radius/turns');
  }
  // A word may be both a colour and a background (blue, white), never two kinds of part otherwise.
  const kinds: [string, readonly string[]][] = [['shapes', shapes], ['colours', [...new Set([...colours, ...backgrounds])]], ['sizes', Object.keys(sizes)], ['motions', motions]];
  const seen = new Map<string, string>();
  for (const [kind, names] of kinds)
    for (const name of names) {
      if (seen.has(name)) fail(kind, `has '${name}', already one of ${seen.get(name)}`);
      seen.set(name, kind);
    }
  return { width, height, frames, fps, template, shapes, colours, colourRgb, backgrounds, backgroundRgb, sizes, motions, motion };
}

/** A colour word equal to the background word (white on white) is never generated. */
export function isForbidden(colour: string, background: string): boolean {
  return colour === background;
}

/** The caption of `parts`, by the template: "a big red circle moving left on a black background". */
export function composeCaption(g: Grammar, parts: CaptionParts): string {
  return g.template
    .replace('{size }', parts.size === null ? '' : `${parts.size} `)
    .replace('{colour}', parts.colour)
    .replace('{shape}', parts.shape)
    .replace('{motion}', parts.motion)
    .replace('{background}', parts.background);
}

/**
 * The parts a prompt names and the words it has outside the grammar. Lenient: word order and
 * extra words do not matter; the background is the word before "background" (else after "on a"),
 * the colour the first colour word elsewhere.
 */
export function parsePrompt(g: Grammar, prompt: string): ParsedPrompt {
  const words = prompt.toLowerCase().match(/[a-z0-9]+/g) ?? [];
  const text = ` ${words.join(' ')} `;
  const parts: { -readonly [K in keyof CaptionParts]?: CaptionParts[K] } = {};
  const motion = g.motions.filter((m) => text.includes(` ${m} `)).sort((a, b) => b.length - a.length)[0];
  if (motion) parts.motion = motion;
  let rest = motion ? text.replace(` ${motion} `, ' ') : text;
  const bg = / ([a-z]+) background /.exec(rest) ?? / on a ([a-z]+) /.exec(rest);
  if (bg && g.backgrounds.includes(bg[1])) {
    parts.background = bg[1];
    rest = rest.replace(bg[0], ' ');
  }
  const restWords = rest.trim().split(' ');
  const first = (names: readonly string[]) => restWords.find((w) => names.includes(w));
  const colour = first(g.colours);
  const shape = first(g.shapes);
  const size = first(Object.keys(g.sizes));
  if (colour) parts.colour = colour;
  if (shape) parts.shape = shape;
  parts.size = size ?? null;
  const known = new Set([...TEMPLATE_WORDS, ...g.shapes, ...g.colours, ...g.backgrounds, ...Object.keys(g.sizes), ...g.motions.flatMap((m) => m.split(' '))]);
  const unknownWords = [...new Set(words.filter((w) => !known.has(w)))];
  const missing = (['colour', 'shape', 'motion', 'background'] as const).filter((k) => parts[k] === undefined);
  return { parts, missing, unknownWords };
}

/** The parts of a prompt that names them all, else a GrammarError naming what it lacks. */
export function requireParts(g: Grammar, prompt: string): { parts: CaptionParts; unknownWords: readonly string[] } {
  const parsed = parsePrompt(g, prompt);
  if (parsed.missing.length) throw new GrammarError(`'${prompt}' names no ${parsed.missing.join(', no ')} of the grammar`);
  return { parts: parsed.parts as CaptionParts, unknownWords: parsed.unknownWords };
}

export interface Triple {
  readonly colour: string;
  readonly shape: string;
  readonly motion: string;
}

/** The held-out rule: (3 * colourIndex + 5 * shapeIndex) % 7 == motionIndex, indices in grammar order. */
export function isHeldOut(g: Grammar, t: Triple): boolean {
  return (3 * g.colours.indexOf(t.colour) + 5 * g.shapes.indexOf(t.shape)) % 7 === g.motions.indexOf(t.motion);
}

/** The held-out triples, colour-major then shape (grammar order). */
export function heldOutTriples(g: Grammar): Triple[] {
  const out: Triple[] = [];
  for (const colour of g.colours) for (const shape of g.shapes) for (const motion of g.motions) if (isHeldOut(g, { colour, shape, motion })) out.push({ colour, shape, motion });
  return out;
}

/**
 * Every caption of a held-out triple, in an order whose every prefix is balanced: round r gives
 * one caption per triple: triple t takes the (r + t)-th of its (background, size) pairs, sizes
 * small, big, none, backgrounds other than the colour, so the first 2 x 32 captions cover each
 * triple twice with backgrounds and sizes spread. Deterministic: it depends on the grammar alone.
 */
export function heldOutPrompts(g: Grammar): CaptionParts[] {
  const sizes: (string | null)[] = [...Object.keys(g.sizes), null];
  const perTriple = heldOutTriples(g).map((t, ti) => {
    const backgrounds = g.backgrounds.filter((b) => !isForbidden(t.colour, b));
    const n = backgrounds.length * sizes.length;
    return Array.from({ length: n }, (_, r) => {
      const k = (r + ti) % n;
      return { ...t, background: backgrounds[k % backgrounds.length], size: sizes[Math.floor(k / backgrounds.length)] };
    });
  });
  const rounds = Math.max(...perTriple.map((p) => p.length));
  const out: CaptionParts[] = [];
  for (let r = 0; r < rounds; r++) for (const p of perTriple) if (r < p.length) out.push(p[r]);
  return out;
}
