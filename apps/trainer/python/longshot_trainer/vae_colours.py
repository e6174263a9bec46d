"""Does the VAE keep the object's colour? Encodes and decodes one clip per (colour, background)
pair and names the colour of the decoded object the way the evaluation does (nearest grammar
colour to the median over frames of the mean colour inside the object, its edge pixels left out).

    python3 -m longshot_trainer.vae_colours --workdir DIR [--size small|big] [--truth]

DIR holds vae-final.pt (the vae stage's result). `--truth` measures the generated clips
themselves, without the VAE: every pair should then be named right. The DiT cannot draw a colour
more faithfully than the decoder gives it back, so this caps the evaluation's colour accuracy.
"""
import argparse
import os

import numpy as np
import torch

from .clips import render_clip
from .common import fail
from .grammar import Caption, Grammar
from .recipe import load_recipe
from .wan_vae import AutoencoderKLWan

# Half the smallest distance between an object colour and a background it may be drawn on, as
# apps/trainer/src/analysis.ts separates the object from the background.
OBJECT_THRESHOLD = 55.0


def object_colour(frames: np.ndarray, background: np.ndarray):
    """Median over frames of the mean colour of the object's interior; frames [T, H, W, 3] in 0..255."""
    means = []
    for f in frames:
        inside = np.linalg.norm(f - background, axis=-1) > OBJECT_THRESHOLD
        interior = inside.copy()  # without the edge pixels (blends with the background)
        interior[1:] &= inside[:-1]
        interior[:-1] &= inside[1:]
        interior[:, 1:] &= inside[:, :-1]
        interior[:, :-1] &= inside[:, 1:]
        if interior.sum() > 3:
            means.append(f[interior].mean(0))
    return np.median(means, 0) if means else None


def main() -> None:
    ap = argparse.ArgumentParser(prog="longshot_trainer.vae_colours")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--size", default="small", choices=["small", "big"])
    ap.add_argument("--truth", action="store_true", help="the generated clips, without the VAE")
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    recipe, grammar = load_recipe(), Grammar()
    vae = None
    if not a.truth:
        path = os.path.join(a.workdir, "vae-final.pt")
        if not os.path.exists(path):
            fail(f"{path} is missing: run the vae stage first")
        vae = AutoencoderKLWan(recipe["vae"]["config"])
        vae.load_state_dict(torch.load(path)["model"])
        vae.eval()
    palette = {k: np.array(v, float) for k, v in grammar.colours.items()}
    right = total = 0
    for bg in grammar.backgrounds:
        colours = [c for c in grammar.colour_names if c != bg]
        clips = np.stack([render_clip(grammar, Caption(c, "circle", "moving left", bg, a.size), 3)[0] for c in colours])
        video = torch.from_numpy(clips)
        if vae is not None:
            with torch.no_grad():
                mu, _ = vae.encode(video)
                video = vae.decode_raw(mu)
        frames = ((video.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 4, 1).numpy()
        named = []
        for k, c in enumerate(colours):
            mc = object_colour(frames[k], np.array(grammar.backgrounds[bg], float))
            got = "nothing" if mc is None else min(palette, key=lambda q: np.linalg.norm(palette[q] - mc))
            right += got == c
            total += 1
            named.append(c if got == c else f"{c}->{got}")
        print(f"on {bg}: {' '.join(named)}", flush=True)
    print(f"{right}/{total} colours named right ({'generated clips' if a.truth else 'through the VAE'}, {a.size} circles)", flush=True)


if __name__ == "__main__":
    main()
