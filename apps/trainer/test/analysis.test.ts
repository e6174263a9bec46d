import { describe, expect, it } from 'vitest';
import { analyseVideo, blockBoundaries, fidelityOf, maskThreshold, seamScore, type Video } from '../src/analysis';
import { isForbidden, loadGrammar, type CaptionParts } from '../src/grammar';
import { drawClip } from './clips';

const g = loadGrammar();
const parts = (p: Partial<CaptionParts> = {}): CaptionParts => ({ colour: 'red', shape: 'circle', motion: 'moving right', background: 'black', size: 'big', ...p });

describe('analysis on clean clips', () => {
  it('finds the background and the object threshold from the grammar', () => {
    expect(maskThreshold(g)).toBeCloseTo(55.45, 1);
    const a = analyseVideo(g, drawClip(g, parts({ background: 'gray' })));
    expect(a.background).toEqual([110, 110, 110]);
  });

  it('names every shape, small and big, whatever it does', () => {
    for (const shape of g.shapes)
      for (const size of Object.keys(g.sizes))
        for (const motion of ['moving left', 'bouncing', 'orbiting', 'growing']) {
          const p = parts({ shape, size, motion, colour: 'cyan', background: 'blue' });
          expect(analyseVideo(g, drawClip(g, p)).shape, `${size} ${shape} ${motion}`).toBe(shape);
        }
  });

  it('names every motion, for every shape, sizes taking turns', () => {
    const sizes = [...Object.keys(g.sizes), null];
    for (const [mi, motion] of g.motions.entries())
      for (const [si, shape] of g.shapes.entries()) {
        const size = sizes[(mi + si) % sizes.length];
        const p = parts({ motion, shape, size });
        expect(analyseVideo(g, drawClip(g, p)).motion, `${size} ${shape} ${motion}`).toBe(motion);
      }
  });

  it('names every colour on every background it may be drawn on, with near-zero colour errors', () => {
    for (const colour of g.colours)
      for (const background of g.backgrounds) {
        if (isForbidden(colour, background)) continue;
        const p = parts({ colour, background, shape: 'square', motion: 'orbiting' });
        const a = analyseVideo(g, drawClip(g, p));
        expect(a.colour, `${colour} on ${background}`).toBe(colour);
        const fid = fidelityOf(g, a, p);
        expect(fid.objectColour!).toBeLessThan(2);
        expect(fid.backgroundColour).toBeLessThan(1);
        expect(fid.framesWithObject).toBe(g.frames);
      }
  });

  it('measures the radius the size word asks for, growing included', () => {
    for (const shape of g.shapes)
      for (const size of Object.keys(g.sizes))
        for (const motion of ['moving up', 'growing']) {
          const p = parts({ shape, size, motion });
          expect(fidelityOf(g, analyseVideo(g, drawClip(g, p)), p).radius!, `${size} ${shape} ${motion}`).toBeLessThan(0.5);
        }
    const noSize = parts({ size: null });
    expect(fidelityOf(g, analyseVideo(g, drawClip(g, noSize)), noSize).radius).toBeNull();
  });

  it('reads float frames in [-1, 1] as it reads uint8 ones', () => {
    const p = parts({ shape: 'triangle', motion: 'bouncing', colour: 'orange', background: 'white' });
    const a8 = analyseVideo(g, drawClip(g, p));
    const af = analyseVideo(g, drawClip(g, p, { float: true }));
    expect([af.colour, af.shape, af.motion]).toEqual(['orange', 'triangle', 'bouncing']);
    expect(af.track.netDy).toBeCloseTo(a8.track.netDy, 1);
  });

  it('keeps its answers under pixel noise', () => {
    const p = parts({ shape: 'diamond', motion: 'moving down', colour: 'green', background: 'gray' });
    const a = analyseVideo(g, drawClip(g, p, { noise: 20 }));
    expect([a.colour, a.shape, a.motion]).toEqual(['green', 'diamond', 'moving down']);
  });
});

describe('analysis detects wrong answers', () => {
  const asked = parts({ colour: 'yellow', shape: 'circle', motion: 'moving left', background: 'black', size: 'small' });

  it('a different shape, colour or motion than asked', () => {
    const wrongShape = analyseVideo(g, drawClip(g, asked, { shape: 'square' }));
    expect(wrongShape.shape).toBe('square');
    const wrongColour = analyseVideo(g, drawClip(g, asked, { colour: g.colourRgb.orange }));
    expect(wrongColour.colour).toBe('orange');
    expect(fidelityOf(g, wrongColour, asked).objectColour!).toBeGreaterThan(60);
    const wrongMotion = analyseVideo(g, drawClip(g, asked, { motion: 'moving right' }));
    expect(wrongMotion.motion).toBe('moving right');
    const triangle = analyseVideo(g, drawClip(g, asked, { shape: 'triangle' }));
    expect(triangle.shape).toBe('triangle');
    expect(analyseVideo(g, drawClip(g, asked, { shape: 'diamond' })).shape).toBe('diamond');
  });

  it('a triangle pointing down is no triangle (the generator draws apex up)', () => {
    const up = drawClip(g, parts({ shape: 'triangle', motion: 'moving right' }));
    const down = flipVertically(up);
    expect(analyseVideo(g, up).shape).toBe('triangle');
    expect(analyseVideo(g, down).shape).not.toBe('triangle');
  });

  it('the wrong size shows as a radius error', () => {
    const big = parts({ size: 'big' });
    const drawnSmall = analyseVideo(g, drawClip(g, parts({ size: 'small' })));
    expect(fidelityOf(g, drawnSmall, big).radius!).toBeGreaterThan(3.5);
  });

  it('a wrong background shows as a background error', () => {
    const a = analyseVideo(g, drawClip(g, parts({ background: 'gray' })));
    expect(fidelityOf(g, a, parts({ background: 'black' })).backgroundColour).toBeGreaterThan(150);
  });

  it('a still object, a half orbit and a sideways bounce have no grammar motion', () => {
    const still = drawClip(g, asked, { frames: 1 });
    const frozen: Video = { ...still, frames: g.frames, data: Uint8Array.from({ length: g.frames * still.data.length }, (_, i) => still.data[i % still.data.length]) };
    expect(analyseVideo(g, frozen).motion).toBeNull();
    const halfOrbit = firstFrames(drawClip(g, parts({ motion: 'orbiting' }), { frames: 2 * g.frames - 1 }), g.frames);
    expect(analyseVideo(g, halfOrbit).motion).not.toBe('orbiting');
    expect(analyseVideo(g, transpose(drawClip(g, parts({ motion: 'bouncing' })))).motion).toBeNull();
  });

  it('an empty clip has no object, colour, shape or motion', () => {
    const empty = analyseVideo(g, drawClip(g, asked, { colour: g.backgroundRgb.black }));
    expect([empty.colour, empty.shape, empty.motion]).toEqual([null, null, null]);
    const fid = fidelityOf(g, empty, asked);
    expect([fid.objectColour, fid.radius, fid.framesWithObject]).toEqual([null, null, 0]);
  });

  it('refuses frames of the wrong size', () => {
    expect(() => analyseVideo(g, { data: new Uint8Array(10), frames: 1, height: 2, width: 2 })).toThrow(/expected 1 x 2 x 2 x 3/);
  });
});

describe('seam score', () => {
  it('puts the seams at the first video frame of each block', () => {
    expect(blockBoundaries(29, 4)).toEqual([13]);
    expect(blockBoundaries(253, 4)).toEqual(Array.from({ length: 15 }, (_, b) => 4 * 4 * (b + 1) - 3));
    expect(blockBoundaries(253, 64)).toEqual([]);
  });

  it('is 1 for smooth motion and grows with jumps at the block boundaries', () => {
    const smooth = drawClip(g, parts({ motion: 'moving right' }), { frames: 61 });
    const s = seamScore(smooth, 4);
    expect(s.seams).toBe(3);
    expect(s.score!).toBeGreaterThan(0.9);
    expect(s.score!).toBeLessThan(1.1);
    // Brighten every block after the first a little more: a step at each boundary.
    const stepped = Uint8Array.from(smooth.data as Uint8Array);
    const frameSize = g.width * g.height * 3;
    for (const f0 of blockBoundaries(61, 4)) for (let i = f0 * frameSize; i < stepped.length; i++) stepped[i] = Math.min(255, stepped[i] + 6);
    const jumpy = seamScore({ ...smooth, data: stepped }, 4);
    expect(jumpy.score!).toBeGreaterThan(3);
    expect(jumpy.insideBlocks).toBeCloseTo(s.insideBlocks, 6);
  });

  it('has no score when nothing changes inside blocks, and refuses a single block', () => {
    const still = drawClip(g, parts(), { frames: 1 });
    const frozen: Video = { ...still, frames: 29, data: Uint8Array.from({ length: 29 * still.data.length }, (_, i) => still.data[i % still.data.length]) };
    expect(seamScore(frozen, 4).score).toBeNull();
    expect(() => seamScore(frozen, 8)).toThrow(/single block/);
  });
});

function flipVertically(v: Video): Video {
  const row = v.width * 3;
  const data = new Uint8Array(v.data.length);
  for (let f = 0; f < v.frames; f++)
    for (let y = 0; y < v.height; y++) data.set(v.data.subarray((f * v.height + y) * row, (f * v.height + y + 1) * row), (f * v.height + (v.height - 1 - y)) * row);
  return { ...v, data };
}

function transpose(v: Video): Video {
  const data = new Uint8Array(v.data.length);
  for (let f = 0; f < v.frames; f++)
    for (let y = 0; y < v.height; y++)
      for (let x = 0; x < v.width; x++)
        for (let c = 0; c < 3; c++) data[((f * v.width + x) * v.height + y) * 3 + c] = v.data[((f * v.height + y) * v.width + x) * 3 + c];
  return { ...v, data, height: v.width, width: v.height };
}

function firstFrames(v: Video, n: number): Video {
  return { ...v, frames: n, data: v.data.slice(0, n * v.height * v.width * 3) };
}
