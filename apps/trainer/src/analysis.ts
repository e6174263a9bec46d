/**
 * What a decoded shapes clip shows, measured from its pixels: the background colour, the object
 * (its mask, mean colour, centroid, area per frame), the colour, shape and motion words it would
 * be captioned with, how far it is from the generator's ground truth, and how visible the block
 * seams are. Pure: frames in, numbers out (docs/quality.md).
 */
import { isForbidden, type CaptionParts, type Grammar, type Rgb } from './grammar';

/** Decoded frames [frames, height, width, 3]: float32 in [-1, 1] (the VAE's output) or uint8. */
export interface Video {
  readonly data: Float32Array | Uint8Array;
  readonly frames: number;
  readonly height: number;
  readonly width: number;
}

export interface FrameMeasure {
  /** Median of the frame's border pixels, per channel, 0..255. */
  readonly background: Rgb;
  /** Pixels of the object (the largest connected region far from the background); 0: none. */
  readonly area: number;
  /** Mean colour of the object's interior pixels (all its pixels when it has no interior). */
  readonly colour: Rgb | null;
  /** Centre of mass, pixels ([x, y], x to the right, y down). */
  readonly centroid: readonly [number, number] | null;
  /** Area over its bounding box's area: circle pi/4, square 1, triangle and diamond 1/2. */
  readonly fill: number;
  /** Share of the area above the bounding box's middle row: 1/2 when symmetric, 1/4 for a triangle pointing up. */
  readonly topShare: number;
}

/** How the object's centroid and size move over the clip (pixels). */
export interface Track {
  readonly netDx: number;
  readonly netDy: number;
  /** Spread of the centroid (5th to 95th percentile). */
  readonly xRange: number;
  readonly yRange: number;
  /** Equivalent radius at the end over at the start (sqrt of the area ratio). */
  readonly growth: number;
  /** Frames in which an object was found. */
  readonly framesWithObject: number;
}

export interface VideoAnalysis {
  /** Median of every frame's border pixels. */
  readonly background: Rgb;
  readonly frames: readonly FrameMeasure[];
  readonly track: Track;
  /** The grammar words the clip would be captioned with; null where it shows none (no object). */
  readonly colour: string | null;
  readonly shape: string | null;
  readonly motion: string | null;
}

/** Per-frame distance from the generator's ground truth, averaged over the clip (0..255 units and pixels). */
export interface Fidelity {
  /** RGB distance of the object's mean colour from the prompt's colour; null when no frame shows an object. */
  readonly objectColour: number | null;
  /** RGB distance of the border median from the prompt's background colour. */
  readonly backgroundColour: number;
  /** |equivalent radius - the size word's radius| (growing: scaled linearly over the clip); null without a size word or object. */
  readonly radius: number | null;
  readonly framesWithObject: number;
  readonly frames: number;
}

/**
 * Area of a shape of radius r over r^2, as the generator draws them (docs/quality.md): a disc,
 * a square of side 2r, a diamond with diagonals 2r, an equilateral triangle inscribed in the
 * circle of radius r, apex up.
 */
export const SHAPE_AREA_FACTOR: Readonly<Record<string, number>> = { circle: Math.PI, square: 4, diamond: 2, triangle: (3 * Math.sqrt(3)) / 4 };

/** Where each shape sits in (fill, topShare): the shape classifier picks the nearest. */
const SHAPE_FEATURES: Readonly<Record<string, readonly [number, number]>> = { circle: [Math.PI / 4, 0.5], square: [1, 0.5], diamond: [0.5, 0.5], triangle: [0.5, 0.25] };

/** The frames' values in 0..255 (float frames clamped to [-1, 1] first), read once. */
function units(v: Video): Float32Array {
  const d = v.data;
  if (d instanceof Uint8Array) return Float32Array.from(d);
  const out = new Float32Array(d.length);
  for (let i = 0; i < d.length; i++) {
    const x = (d[i] + 1) * 127.5;
    out[i] = x < 0 ? 0 : x > 255 ? 255 : x;
  }
  return out;
}

function checkVideo(v: Video): void {
  if (v.data.length !== v.frames * v.height * v.width * 3) throw new RangeError(`frames hold ${v.data.length} values, expected ${v.frames} x ${v.height} x ${v.width} x 3`);
  if (v.frames < 1 || v.height < 3 || v.width < 3) throw new RangeError(`a video needs at least one 3x3 frame, got ${v.frames} x ${v.height} x ${v.width}`);
}

/** Per-channel median of values in 0..255 (a 256-bin histogram, so it rounds to whole units). */
function median3(pixels: readonly number[][]): Rgb {
  const out = [0, 0, 0];
  for (let c = 0; c < 3; c++) {
    const hist = new Uint32Array(256);
    for (const p of pixels) hist[Math.round(p[c])]++;
    let seen = 0;
    for (let k = 0; k < 256; k++) {
      seen += hist[k];
      if (2 * seen >= pixels.length) {
        out[c] = k;
        break;
      }
    }
  }
  return out as unknown as Rgb;
}

function borderPixels(v: Video, at: Float32Array, f: number): number[][] {
  const { width: W, height: H } = v;
  const px: number[][] = [];
  const push = (x: number, y: number) => {
    const i = ((f * H + y) * W + x) * 3;
    px.push([at[i], at[i + 1], at[i + 2]]);
  };
  for (let x = 0; x < W; x++) {
    push(x, 0);
    push(x, H - 1);
  }
  for (let y = 1; y < H - 1; y++) {
    push(0, y);
    push(W - 1, y);
  }
  return px;
}

export function rgbDistance(a: Rgb, b: Rgb): number {
  return Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);
}

/** The palette entry nearest `rgb`. */
export function nearestColour(palette: Readonly<Record<string, Rgb>>, rgb: Rgb): string {
  let best = '';
  let bestD = Infinity;
  for (const [name, p] of Object.entries(palette)) {
    const d = rgbDistance(p, rgb);
    if (d < bestD) [best, bestD] = [name, d];
  }
  return best;
}

/**
 * How far from the background a pixel must be to count as the object: half the smallest
 * distance between an object colour and a background it may be drawn on (55 for the grammar).
 */
export function maskThreshold(g: Grammar): number {
  let min = Infinity;
  for (const c of g.colours) for (const b of g.backgrounds) if (!isForbidden(c, b)) min = Math.min(min, rgbDistance(g.colourRgb[c], g.backgroundRgb[b]));
  return min / 2;
}

/** The largest 4-connected region of `far` (1 = candidate pixel), as a 0/1 mask. */
function largestRegion(far: Uint8Array, W: number, H: number): Uint8Array {
  const label = new Int32Array(W * H);
  const stack: number[] = [];
  let bestLabel = 0;
  let bestSize = 0;
  let next = 0;
  for (let start = 0; start < W * H; start++) {
    if (!far[start] || label[start]) continue;
    const id = ++next;
    let size = 0;
    label[start] = id;
    stack.push(start);
    while (stack.length) {
      const p = stack.pop()!;
      size++;
      const x = p % W;
      const y = (p - x) / W;
      const visit = (q: number) => {
        if (far[q] && !label[q]) {
          label[q] = id;
          stack.push(q);
        }
      };
      if (x > 0) visit(p - 1);
      if (x < W - 1) visit(p + 1);
      if (y > 0) visit(p - W);
      if (y < H - 1) visit(p + W);
    }
    if (size > bestSize) [bestLabel, bestSize] = [id, size];
  }
  const mask = new Uint8Array(W * H);
  if (bestLabel) for (let p = 0; p < W * H; p++) mask[p] = label[p] === bestLabel ? 1 : 0;
  return mask;
}

/** Measures frame f against the clip's background colour. */
export function measureFrame(v: Video, f: number, clipBackground: Rgb, threshold: number, at = units(v)): FrameMeasure {
  const { width: W, height: H } = v;
  const background = median3(borderPixels(v, at, f));
  const far = new Uint8Array(W * H);
  const [br, bg, bb] = clipBackground;
  for (let p = 0; p < W * H; p++) {
    const i = (f * H * W + p) * 3;
    const [dr, dg, db] = [at[i] - br, at[i + 1] - bg, at[i + 2] - bb];
    far[p] = dr * dr + dg * dg + db * db > threshold * threshold ? 1 : 0;
  }
  const mask = largestRegion(far, W, H);
  let area = 0;
  let sx = 0;
  let sy = 0;
  let [x0, y0, x1, y1] = [W, H, -1, -1];
  const all = [0, 0, 0];
  const interior = [0, 0, 0];
  let interiorCount = 0;
  for (let y = 0; y < H; y++)
    for (let x = 0; x < W; x++) {
      const p = y * W + x;
      if (!mask[p]) continue;
      area++;
      sx += x;
      sy += y;
      [x0, y0, x1, y1] = [Math.min(x0, x), Math.min(y0, y), Math.max(x1, x), Math.max(y1, y)];
      const i = (f * H * W + p) * 3;
      const inside = x > 0 && x < W - 1 && y > 0 && y < H - 1 && mask[p - 1] && mask[p + 1] && mask[p - W] && mask[p + W];
      for (let c = 0; c < 3; c++) {
        all[c] += at[i + c];
        if (inside) interior[c] += at[i + c];
      }
      if (inside) interiorCount++;
    }
  if (area === 0) return { background, area: 0, colour: null, centroid: null, fill: 0, topShare: 0 };
  const [sum, n] = interiorCount > 0 ? [interior, interiorCount] : [all, area];
  const mid = (y0 + y1) / 2;
  let top = 0;
  for (let y = y0; y <= y1; y++) {
    let row = 0;
    for (let x = x0; x <= x1; x++) row += mask[y * W + x];
    top += y < mid ? row : y === mid ? row / 2 : 0;
  }
  return {
    background,
    area,
    colour: sum.map((s) => s / n) as unknown as Rgb,
    centroid: [sx / area, sy / area],
    fill: area / ((x1 - x0 + 1) * (y1 - y0 + 1)),
    topShare: top / area,
  };
}

function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Spread of values between their 5th and 95th percentiles (one stray frame each side ignored). */
function spread(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.round(0.95 * (s.length - 1))] - s[Math.round(0.05 * (s.length - 1))];
}

function mean(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

/** The centroid and size track of the frames that show an object. */
export function trackOf(frames: readonly FrameMeasure[]): Track {
  const seen = frames.filter((m) => m.centroid !== null);
  if (seen.length < 2) return { netDx: 0, netDy: 0, xRange: 0, yRange: 0, growth: 1, framesWithObject: seen.length };
  const ends = Math.min(3, seen.length >> 1);
  const first = seen.slice(0, ends);
  const last = seen.slice(-ends);
  const xs = seen.map((m) => m.centroid![0]);
  const ys = seen.map((m) => m.centroid![1]);
  return {
    netDx: mean(last.map((m) => m.centroid![0])) - mean(first.map((m) => m.centroid![0])),
    netDy: mean(last.map((m) => m.centroid![1])) - mean(first.map((m) => m.centroid![1])),
    xRange: spread(xs),
    yRange: spread(ys),
    growth: Math.sqrt(mean(last.map((m) => m.area)) / mean(first.map((m) => m.area))),
    framesWithObject: seen.length,
  };
}

/** The shape whose (fill, topShare) is nearest the clip's median; null without an object. */
export function classifyShape(frames: readonly FrameMeasure[]): string | null {
  const seen = frames.filter((m) => m.area > 0);
  if (seen.length === 0) return null;
  const fill = median(seen.map((m) => m.fill));
  const top = median(seen.map((m) => m.topShare));
  let best = '';
  let bestD = Infinity;
  for (const [shape, [f, t]] of Object.entries(SHAPE_FEATURES)) {
    const d = Math.hypot(fill - f, top - t);
    if (d < bestD) [best, bestD] = [shape, d];
  }
  return best;
}

/**
 * The grammar motion the track shows, tried in this order (thresholds are halves of the
 * grammar's own amplitudes): growing (radius grows by half the scale step or more, centroid
 * spread under the smallest size's radius); a straight move (net displacement of half the
 * grammar's or more, within 45 degrees of the motion's direction, spread across it under half the
 * displacement); orbiting (both spreads of the orbit radius or more, net displacement under it);
 * bouncing (vertical spread of half the bounce height or more, horizontal spread under half of
 * it). Null: no object in half the frames, or none of these.
 */
export function classifyMotion(g: Grammar, track: Track, frames: number): string | null {
  if (track.framesWithObject < frames / 2) return null;
  const { netDx, netDy, xRange, yRange, growth } = track;
  const named = (kind: string) => g.motions.filter((m) => g.motion[m].kind === kind);
  const still = Math.min(...Object.values(g.sizes));
  for (const m of named('growing')) {
    const { scale } = g.motion[m] as { scale: number };
    if (growth >= 1 + (scale - 1) / 2 && Math.max(xRange, yRange) < still) return m;
  }
  const net = Math.hypot(netDx, netDy);
  let bestLinear: string | null = null;
  let bestCos = Math.SQRT1_2;
  for (const m of named('linear')) {
    const { dx, dy } = g.motion[m] as { dx: number; dy: number };
    const length = Math.hypot(dx, dy);
    if (net < length / 2) continue;
    const cos = (netDx * dx + netDy * dy) / (net * length);
    const across = Math.abs(dx) >= Math.abs(dy) ? yRange : xRange;
    if (cos > bestCos && across < net / 2) [bestLinear, bestCos] = [m, cos];
  }
  if (bestLinear) return bestLinear;
  for (const m of named('orbiting')) {
    const { radius } = g.motion[m] as { radius: number };
    if (xRange >= radius && yRange >= radius && net < radius) return m;
  }
  for (const m of named('bouncing')) {
    const { height } = g.motion[m] as { height: number };
    if (yRange >= height / 2 && xRange < height / 2) return m;
  }
  return null;
}

/** Measures a decoded clip and names its colour, shape and motion with the grammar's words. */
export function analyseVideo(g: Grammar, v: Video, threshold = maskThreshold(g)): VideoAnalysis {
  checkVideo(v);
  const at = units(v);
  const border: number[][] = [];
  for (let f = 0; f < v.frames; f++) border.push(...borderPixels(v, at, f));
  const background = median3(border);
  const frames = Array.from({ length: v.frames }, (_, f) => measureFrame(v, f, background, threshold, at));
  const track = trackOf(frames);
  const seen = frames.filter((m) => m.colour !== null);
  const colour = seen.length ? nearestColour(g.colourRgb, [0, 1, 2].map((c) => median(seen.map((m) => m.colour![c]))) as unknown as Rgb) : null;
  return { background, frames, track, colour, shape: classifyShape(frames), motion: classifyMotion(g, track, v.frames) };
}

/** The radius the generator draws in frame f of `frames` for these parts; null without a size word. */
export function expectedRadius(g: Grammar, parts: CaptionParts, f: number, frames: number): number | null {
  if (parts.size === null) return null;
  const r = g.sizes[parts.size];
  const m = g.motion[parts.motion];
  return m.kind === 'growing' ? r * (1 + ((m.scale - 1) * f) / Math.max(1, frames - 1)) : r;
}

/** How far the clip is, frame by frame, from what the generator draws for `parts`. */
export function fidelityOf(g: Grammar, a: VideoAnalysis, parts: CaptionParts): Fidelity {
  const want = g.colourRgb[parts.colour];
  const bg = g.backgroundRgb[parts.background];
  const objectErr: number[] = [];
  const radiusErr: number[] = [];
  a.frames.forEach((m, f) => {
    if (m.colour === null) return;
    objectErr.push(rgbDistance(m.colour, want));
    const r = expectedRadius(g, parts, f, a.frames.length);
    if (r !== null) radiusErr.push(Math.abs(Math.sqrt(m.area / SHAPE_AREA_FACTOR[parts.shape]) - r));
  });
  return {
    objectColour: objectErr.length ? mean(objectErr) : null,
    backgroundColour: mean(a.frames.map((m) => rgbDistance(m.background, bg))),
    radius: radiusErr.length ? mean(radiusErr) : null,
    framesWithObject: objectErr.length,
    frames: a.frames.length,
  };
}

/** The first video frame of latent frame l: latent 0 decodes to frame 0, latent l >= 1 to 4l-3..4l. */
export function firstVideoFrame(latent: number): number {
  return latent === 0 ? 0 : 4 * latent - 3;
}

/** First video frames of blocks 1.. of `block` latent frames: where a seam can show. */
export function blockBoundaries(frames: number, block: number): number[] {
  const latentFrames = (frames - 1) / 4 + 1;
  const out: number[] = [];
  for (let l = block; l < latentFrames; l += block) out.push(firstVideoFrame(l));
  return out;
}

export interface SeamScore {
  /** Mean |RGB| change (0..255) from the frame before a block's first frame to it. */
  readonly atSeams: number;
  /** The same over every other pair of consecutive frames (frame 0 -> 1 left out, see below). */
  readonly insideBlocks: number;
  /** atSeams / insideBlocks: 1 means the seams do not show; null when nothing changes inside blocks. */
  readonly score: number | null;
  readonly seams: number;
}

/**
 * How much more the video changes across block boundaries (blocks of `block` latent frames) than
 * within blocks. The change 0 -> 1 is left out of both: the VAE decodes latent 0 to one frame on
 * its own, which makes that step unlike every other. Measured at the same frames whatever block
 * size rendered the video, so a one-pass render gives the score of a video without seams.
 */
export function seamScore(v: Video, block: number): SeamScore {
  checkVideo(v);
  if ((v.frames - 1) % 4 !== 0) throw new RangeError(`a decoded video has 4n+1 frames, got ${v.frames}`);
  const at = units(v);
  const size = v.height * v.width * 3;
  const boundaries = new Set(blockBoundaries(v.frames, block));
  const seams: number[] = [];
  const inside: number[] = [];
  for (let f = 2; f < v.frames; f++) {
    let sum = 0;
    for (let i = f * size; i < (f + 1) * size; i++) sum += Math.abs(at[i] - at[i - size]);
    (boundaries.has(f) ? seams : inside).push(sum / size);
  }
  if (seams.length === 0) throw new RangeError(`${v.frames} frames are a single block of ${block} latent frames: no seam to measure`);
  const atSeams = mean(seams);
  const insideBlocks = inside.length ? mean(inside) : 0;
  return { atSeams, insideBlocks, score: insideBlocks > 0 ? atSeams / insideBlocks : null, seams: seams.length };
}
