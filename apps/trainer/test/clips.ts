/**
 * Shapes clips rasterised in the tests, as the trainer's generator draws them (docs/quality.md):
 * the object's centre follows the motion over t = f / (frames - 1), sizes are radii, edges are
 * anti-aliased by 4x4 supersampling. The analysis is tested against these.
 */
import type { Video } from '../src/analysis';
import type { CaptionParts, Grammar, Rgb } from '../src/grammar';

export interface ClipOptions {
  /** Radius when the caption has no size word. */
  readonly radius?: number;
  /** Draw this shape / colour / motion instead of the caption's (a clip that does not match it). */
  readonly shape?: string;
  readonly colour?: Rgb;
  readonly motion?: string;
  /** Uniform noise of this amplitude (0..255 units) on every channel, from a fixed seed. */
  readonly noise?: number;
  /** float32 in [-1, 1] as the VAE gives frames, instead of uint8. */
  readonly float?: boolean;
  readonly frames?: number;
}

/** Whether (x, y) relative to the centre lies in `shape` of radius r (triangle: apex up, inscribed). */
export function inside(shape: string, x: number, y: number, r: number): boolean {
  switch (shape) {
    case 'circle':
      return x * x + y * y <= r * r;
    case 'square':
      return Math.abs(x) <= r && Math.abs(y) <= r;
    case 'diamond':
      return Math.abs(x) + Math.abs(y) <= r;
    case 'triangle': {
      // Vertices (0, -r), (+-r*sqrt(3)/2, r/2): below the apex's two edges and above the base.
      if (y > r / 2) return false;
      return Math.abs(x) <= ((y + r) / (1.5 * r)) * ((r * Math.sqrt(3)) / 2);
    }
    default:
      throw new Error(`no shape ${shape}`);
  }
}

/** The object's centre and radius in frame f of n. */
export function placement(g: Grammar, motion: string, r: number, f: number, n: number): { cx: number; cy: number; r: number } {
  const t = n > 1 ? f / (n - 1) : 0;
  const cx0 = g.width / 2;
  const cy0 = g.height / 2;
  const m = g.motion[motion];
  switch (m.kind) {
    case 'linear':
      return { cx: cx0 + m.dx * (t - 0.5), cy: cy0 + m.dy * (t - 0.5), r };
    case 'bouncing':
      return { cx: cx0, cy: cy0 + m.height / 2 - m.height * Math.abs(Math.sin(Math.PI * m.bounces * t)), r };
    case 'growing':
      return { cx: cx0, cy: cy0, r: r * (1 + (m.scale - 1) * t) };
    case 'orbiting':
      return { cx: cx0 + m.radius * Math.cos(2 * Math.PI * m.turns * t), cy: cy0 + m.radius * Math.sin(2 * Math.PI * m.turns * t), r };
  }
}

/** A clip of `parts` (or of what `o` overrides), [frames, H, W, 3]. */
export function drawClip(g: Grammar, parts: CaptionParts, o: ClipOptions = {}): Video {
  const n = o.frames ?? g.frames;
  const { width: W, height: H } = g;
  const shape = o.shape ?? parts.shape;
  const colour = o.colour ?? g.colourRgb[parts.colour];
  const bg = g.backgroundRgb[parts.background];
  const r0 = parts.size === null ? (o.radius ?? 9) : g.sizes[parts.size];
  const data = o.float ? new Float32Array(n * H * W * 3) : new Uint8Array(n * H * W * 3);
  const put = o.float ? (i: number, v: number) => (data[i] = Math.min(255, Math.max(0, v)) / 127.5 - 1) : (i: number, v: number) => (data[i] = Math.round(Math.min(255, Math.max(0, v))));
  let state = 12345;
  const rand = () => ((state = (Math.imul(state, 1103515245) + 12345) >>> 0) / 2 ** 32) * 2 - 1;
  const S = 4;
  for (let f = 0; f < n; f++) {
    const { cx, cy, r } = placement(g, o.motion ?? parts.motion, r0, f, n);
    for (let y = 0; y < H; y++)
      for (let x = 0; x < W; x++) {
        let hits = 0;
        if (Math.abs(x - cx) <= r + 1 && Math.abs(y - cy) <= r + 1)
          for (let sy = 0; sy < S; sy++) for (let sx = 0; sx < S; sx++) if (inside(shape, x + (sx + 0.5) / S - 0.5 - cx, y + (sy + 0.5) / S - 0.5 - cy, r)) hits++;
        const cover = hits / (S * S);
        for (let c = 0; c < 3; c++) put(((f * H + y) * W + x) * 3 + c, bg[c] * (1 - cover) + colour[c] * cover + (o.noise ? o.noise * rand() : 0));
      }
  }
  return { data, frames: n, height: H, width: W };
}
