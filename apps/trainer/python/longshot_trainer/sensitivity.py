"""How much a DiT uses each word of its caption: the flow-matching loss on training clips with the
right caption against the same caption with one word changed, same noise, at several noise levels.

    python3 -m longshot_trainer.sensitivity CHECKPOINT --workdir DIR [--clips N] [--weights model|ema|last]

CHECKPOINT is a DiT checkpoint of the dit stage (dit.pt while it runs, dit-final.pt after); DIR the
work directory whose latents.pt and text-embeddings.safetensors it was trained on. Printed per
noise level sigma: the loss with the right caption and how much more it is, relative, with the
motion reversed (left/right, up/down), the object's colour changed, and the empty prompt. A model
that ignores a word pays nothing when it is wrong; the sampled videos follow a word only once
this gap is large (docs/trainer.md).
"""
import argparse
import json
import os

import torch

from . import safetensors_io
from .common import fail
from .grammar import Grammar
from .recipe import load_recipe
from .wan_dit import WanTransformer3DModel

SIGMAS = (0.3, 0.5, 0.7, 0.9)
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def reverse_motion(caption: str):
    for a, b in OPPOSITE.items():
        if f" moving {a} " in caption:
            return caption.replace(f" moving {a} ", f" moving {b} ")
    return None


def change_colour(caption: str, colours: list, index: dict):
    """The caption with the object's colour replaced by the first other colour that makes a caption."""
    words = caption.split(" ")
    at = next(i for i, w in enumerate(words) if w in colours and words[i + 1] != "background")
    for c in colours:
        if c != words[at]:
            text = " ".join(words[:at] + [c] + words[at + 1 :])
            if text in index:
                return text
    return None


def main() -> None:
    ap = argparse.ArgumentParser(prog="longshot_trainer.sensitivity")
    ap.add_argument("checkpoint")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--clips", type=int, default=96, help="straight-move clips of the dataset to measure on")
    ap.add_argument("--weights", default="model", choices=["model", "ema", "last"], help="which weights of the checkpoint")
    a = ap.parse_args()
    torch.set_num_threads(1)
    recipe = load_recipe()
    path = os.path.join(a.workdir, "text-embeddings.safetensors")
    for f in (path, os.path.join(a.workdir, "latents.pt"), a.checkpoint):
        if not os.path.exists(f):
            fail(f"{f} is missing")
    captions = json.loads(safetensors_io.metadata(path)["captions"])
    emb = safetensors_io.read(path)["embeddings"]
    index = {c: i for i, c in enumerate(captions)}
    data = torch.load(os.path.join(a.workdir, "latents.pt"))
    latents = torch.cat(data["latents"]).float()
    texts = data["captions"]
    colours = Grammar().colour_names
    chosen = [i for i, c in enumerate(texts) if reverse_motion(c) in index][: a.clips]
    if not chosen:
        fail("no straight-move clips with a reversible caption in latents.pt")
    ckpt = torch.load(a.checkpoint)
    if ckpt.get(a.weights) is None:
        fail(f"{a.checkpoint} holds no {a.weights!r} weights")
    model = WanTransformer3DModel(recipe["transformer"])
    model.load_state_dict(ckpt[a.weights])
    model.eval()
    x0 = latents[chosen]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    right = [texts[i] for i in chosen]
    variants = {
        "motion reversed": [reverse_motion(c) for c in right],
        "colour changed": [change_colour(c, colours, index) or c for c in right],
        "empty prompt": [""] * len(right),
    }
    print(f"{len(chosen)} straight-move clips of {a.workdir}; loss with the right caption, and how much more with one word wrong", flush=True)
    with torch.no_grad():
        for sigma in SIGMAS:
            xt = (1 - sigma) * x0 + sigma * noise
            target = noise - x0

            def loss(caps: list) -> torch.Tensor:
                out = []
                for k in range(0, len(caps), 32):
                    rows = emb[[index[c] for c in caps[k : k + 32]]]
                    pred = model(xt[k : k + 32], torch.full((len(rows),), sigma * 1000), rows)
                    out.append(((pred - target[k : k + 32]) ** 2).mean(dim=(1, 2, 3, 4)))
                return torch.cat(out)

            base = loss(right)
            gaps = "  ".join(f"{name} {float((loss(caps) - base).mean() / base.mean()) * 100:+.1f}%" for name, caps in variants.items())
            print(f"sigma {sigma}: loss {float(base.mean()):.4f}  {gaps}", flush=True)


if __name__ == "__main__":
    main()
