"""Deterministic clips of one shape moving on a flat background, with per-frame ground truth.

Shapes of radius r: a disc of radius r, a square of side 2r, a diamond with diagonals 2r, an
equilateral triangle inscribed in the circle of radius r with its apex up (the evaluation's
analysis, apps/trainer/src/analysis.ts, assumes the same). A clip is a float32 array [3, T, H, W] in [-1, 1] (the VAE's range); `ground_truth` gives each
frame's centre (x, y) and radius in pixels. Shapes are drawn with 2x2 supersampled coverage so
edges are smooth. The motion parameters are grammar.json's.
"""
import math
from typing import Dict, List, Tuple

import numpy as np

from .grammar import Caption, Grammar

_SS = 2  # supersampling per axis


def _coverage(shape: str, cx: float, cy: float, r: float, h: int, w: int) -> np.ndarray:
    ys = (np.arange(h * _SS) + 0.5) / _SS
    xs = (np.arange(w * _SS) + 0.5) / _SS
    x, y = np.meshgrid(xs - cx, ys - cy)
    if shape == "circle":
        inside = x * x + y * y <= r * r
    elif shape == "square":
        inside = (np.abs(x) <= r) & (np.abs(y) <= r)  # side 2r
    elif shape == "diamond":
        inside = np.abs(x) + np.abs(y) <= r  # diagonals 2r
    elif shape == "triangle":
        # Equilateral, apex up, inscribed in the circle of radius r (centroid at the centre).
        R = r
        inside = np.ones_like(x, dtype=bool)
        for k in range(3):
            a = math.radians(-90 + 120 * k)
            b = math.radians(-90 + 120 * (k + 1))
            ax, ay, bx, by = R * math.cos(a), R * math.sin(a), R * math.cos(b), R * math.sin(b)
            # Inside when on the same side of edge a->b as the centre.
            cross = (bx - ax) * (y - ay) - (by - ay) * (x - ax)
            inside &= cross >= 0
    else:
        raise ValueError(f"unknown shape {shape}")
    return inside.reshape(h, _SS, w, _SS).mean(axis=(1, 3))


def trajectory(grammar: Grammar, caption: Caption, radius: float, rng: np.random.Generator, frames: int) -> List[Tuple[float, float, float]]:
    """(cx, cy, r) per frame for the caption's motion, with a random start that keeps it in frame."""
    W, H = grammar.width, grammar.height
    m = grammar.motions[caption.motion]
    margin = 1.3 * radius + 1
    out = []
    if caption.motion.startswith("moving"):
        dx, dy = m["dx"], m["dy"]
        x0 = rng.uniform(margin + max(0, -dx), W - margin - max(0, dx))
        y0 = rng.uniform(margin + max(0, -dy), H - margin - max(0, dy))
        for t in range(frames):
            s = t / (grammar.frames - 1)
            out.append((x0 + dx * s, y0 + dy * s, radius))
    elif caption.motion == "bouncing":
        hgt, n = m["height"], m["bounces"]
        x0 = rng.uniform(margin, W - margin)
        floor = rng.uniform(margin + hgt, H - margin)
        for t in range(frames):
            s = t / (grammar.frames - 1)
            out.append((x0, floor - hgt * abs(math.sin(math.pi * n * s)), radius))
    elif caption.motion == "growing":
        scale = m["scale"]
        big = 1.3 * radius * scale + 1
        x0, y0 = rng.uniform(big, W - big), rng.uniform(big, H - big)
        for t in range(frames):
            s = min(1.0, t / (grammar.frames - 1))
            out.append((x0, y0, radius * (1 + (scale - 1) * s)))
    elif caption.motion == "orbiting":
        R, turns = m["radius"], m["turns"]
        a0 = rng.uniform(0, 2 * math.pi)
        for t in range(frames):
            s = t / (grammar.frames - 1)
            a = a0 + 2 * math.pi * turns * s
            out.append((W / 2 + R * math.cos(a), H / 2 - R * math.sin(a), radius))
    else:
        raise ValueError(f"unknown motion {caption.motion}")
    return out


def _size_and_path(grammar: Grammar, caption: Caption, seed: int, frames: int) -> Tuple[str, list]:
    """The clip's size (the caption's, or drawn when unnamed) and its first `frames` (centre, radius)."""
    rng = np.random.default_rng(seed)
    size = caption.size or ("small", "big")[int(rng.integers(2))]
    return size, trajectory(grammar, caption, float(grammar.sizes[size]), rng, frames)


def clip_path(grammar: Grammar, caption: Caption, seed: int) -> list:
    """The ground-truth path of render_clip(grammar, caption, seed), without drawing a frame."""
    return _size_and_path(grammar, caption, seed, grammar.frames)[1]


def render_clip(grammar: Grammar, caption: Caption, seed: int, frames: int = 0, start: int = 0) -> Tuple[np.ndarray, Dict]:
    """Frames [start, start + frames) of the clip of `caption` drawn with `seed` (start position,
    unnamed size), and their ground truth; frames 0 means the grammar's clip length."""
    frames = frames or grammar.frames
    size, path = _size_and_path(grammar, caption, seed, start + frames)
    path = path[start:]
    fg = np.array(grammar.colours[caption.colour], dtype=np.float32) / 127.5 - 1
    bg = np.array(grammar.backgrounds[caption.background], dtype=np.float32) / 127.5 - 1
    H, W = grammar.height, grammar.width
    clip = np.empty((3, frames, H, W), dtype=np.float32)
    for t, (cx, cy, r) in enumerate(path):
        cov = _coverage(caption.shape, cx, cy, r, H, W)[None]
        clip[:, t] = bg[:, None, None] * (1 - cov) + fg[:, None, None] * cov
    return clip, {"size": size, "path": path}


def random_caption(grammar: Grammar, captions: List[Caption], rng: np.random.Generator) -> Caption:
    return captions[int(rng.integers(len(captions)))]
