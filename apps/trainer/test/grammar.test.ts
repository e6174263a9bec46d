import * as fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { composeCaption, GRAMMAR_FILE, heldOutPrompts, heldOutTriples, isForbidden, isHeldOut, loadGrammar, parseGrammar, parsePrompt, requireParts } from '../src/grammar';

const g = loadGrammar();
const raw = () => JSON.parse(fs.readFileSync(GRAMMAR_FILE, 'utf8')) as Record<string, unknown>;

describe('grammar', () => {
  it('loads grammar.json in its key order', () => {
    expect(g.colours).toEqual(['red', 'green', 'blue', 'yellow', 'magenta', 'cyan', 'orange', 'white']);
    expect(g.motions[4]).toBe('bouncing');
    expect(g.motion['moving left']).toEqual({ kind: 'linear', dx: -24, dy: 0 });
    expect(g.motion.orbiting).toEqual({ kind: 'orbiting', radius: 14, turns: 1 });
    expect([g.width, g.height, g.frames, g.fps]).toEqual([64, 64, 29, 16]);
  });

  it('refuses a broken grammar, naming the file and the field', () => {
    expect(() => parseGrammar({ ...raw(), frames: 0 }, 'g.json')).toThrow(/^g\.json: frames must be a positive integer/);
    expect(() => parseGrammar({ ...raw(), colours: { red: [300, 0, 0] } })).toThrow(/colours\.red must be \[r, g, b\]/);
    expect(() => parseGrammar({ ...raw(), motions: { spinning: { rpm: 3 } } })).toThrow(/motions\.spinning needs/);
    expect(() => parseGrammar({ ...raw(), shapes: ['circle', 'red'] })).toThrow(/'red', already one of shapes/);
    expect(() => parseGrammar({ ...raw(), template: 'a {colour} thing' })).toThrow(/template lacks \{size \}/);
    expect(() => loadGrammar('/nonexistent/grammar.json')).toThrow(/^grammar\.json: cannot read/);
  });

  it('holds out one motion per colour and shape: 32 triples', () => {
    const triples = heldOutTriples(g);
    expect(triples).toHaveLength(g.colours.length * g.shapes.length);
    expect(triples[0]).toEqual({ colour: 'red', shape: 'circle', motion: 'moving left' });
    // (3 * 1 + 5 * 2) % 7 = 6: green triangles are held out orbiting.
    expect(isHeldOut(g, { colour: 'green', shape: 'triangle', motion: 'orbiting' })).toBe(true);
    expect(isHeldOut(g, { colour: 'green', shape: 'triangle', motion: 'bouncing' })).toBe(false);
  });

  it('lists every held-out caption once, none forbidden, each prefix balanced', () => {
    const prompts = heldOutPrompts(g);
    const captions = prompts.map((p) => composeCaption(g, p));
    expect(new Set(captions).size).toBe(captions.length);
    expect(prompts.every((p) => isHeldOut(g, p) && !isForbidden(p.colour, p.background))).toBe(true);
    const first64 = prompts.slice(0, 64);
    for (const t of heldOutTriples(g)) expect(first64.filter((p) => p.colour === t.colour && p.shape === t.shape && p.motion === t.motion)).toHaveLength(2);
    expect(new Set(first64.map((p) => p.background)).size).toBe(g.backgrounds.length);
    expect(new Set(first64.map((p) => p.size)).size).toBe(3);
    expect(heldOutPrompts(g)).toEqual(prompts);
  });

  it('composes captions and parses them back', () => {
    const parts = { size: 'big', colour: 'red', shape: 'circle', motion: 'moving left', background: 'black' };
    expect(composeCaption(g, parts)).toBe('a big red circle moving left on a black background');
    expect(composeCaption(g, { ...parts, size: null })).toBe('a red circle moving left on a black background');
    for (const p of heldOutPrompts(g)) expect(parsePrompt(g, composeCaption(g, p))).toEqual({ parts: p, missing: [], unknownWords: [] });
  });

  it('tells colour from background when both are colour words, and lists unknown words', () => {
    expect(parsePrompt(g, 'A white square bouncing on a blue background').parts).toMatchObject({ colour: 'white', background: 'blue' });
    const odd = parsePrompt(g, 'a fluffy blue diamond slowly orbiting on a white background, 4k');
    expect(odd.parts).toEqual({ colour: 'blue', shape: 'diamond', motion: 'orbiting', background: 'white', size: null });
    expect(odd.unknownWords).toEqual(['fluffy', 'slowly', '4k']);
    expect(parsePrompt(g, 'a red blob moving sideways').missing).toEqual(['shape', 'motion', 'background']);
    expect(() => requireParts(g, 'a red blob')).toThrow(/names no shape, no motion, no background/);
  });
});
