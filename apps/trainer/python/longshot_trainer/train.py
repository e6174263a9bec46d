"""The trainer's command line: python3 -m longshot_trainer.train STAGE --workdir DIR [--steps N].

Stages: captions (every caption of the grammar and its words, for the orchestrator to tokenize
and encode), vae (AutoencoderKLWan on generated clips), latents (the DiT's training clips encoded
by the VAE), dit and dit-more (the WanTransformer3D on those latents with flow matching), export (the trained weights as diffusers safetensors). Each stage resumes
from its last checkpoint in the work directory; the orchestrator (apps/trainer/src/train.ts)
runs them in order.

The recipe fixes PyTorch's thread count and the libraries' kernel choices (recipe.json's
`reproducibility`), so a run gives the same bits as any other run on the same kind of CPU and
resumes into them; torch is imported only once those are set.
"""
import argparse
import os
import sys

from .recipe import load_recipe, pin_kernels, recipe_threads


def main() -> None:
    ap = argparse.ArgumentParser(prog="longshot_trainer.train")
    ap.add_argument("stage", choices=["captions", "vae", "latents", "dit", "dit-more", "export"])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--steps", type=int, default=0, help="override the recipe's step count (smoke tests)")
    ap.add_argument("--clips", type=int, default=0, help="override the DiT's clip count (smoke tests)")
    ap.add_argument("--smoke", action="store_true", help="small statistics and datasets (the test suite's smoke run)")
    ap.add_argument("--threads", type=int, default=0, help="PyTorch's threads (default: the recipe's; another count gives other bits)")
    ap.add_argument("--halt-after", type=int, default=0, help="stop after the checkpoint at this step, as an interruption would (tests)")
    ap.add_argument("--recipe", help="another recipe file (experiments); default apps/trainer/recipe.json")
    ap.add_argument("--out", help="export: the pipeline directory to write the weights into")
    a = ap.parse_args()
    recipe = load_recipe(a.recipe) if a.recipe else load_recipe()
    pin_kernels(recipe)
    import torch

    from .common import fail

    threads = recipe_threads(recipe)
    if a.threads and a.threads != threads:
        print(f"trainer: {a.threads} threads instead of the recipe's {threads}: the weights will not be the recipe's bit for bit", file=sys.stderr)
        threads = a.threads
    torch.set_num_threads(threads)
    os.makedirs(a.workdir, exist_ok=True)
    if a.smoke:
        # A few steps on one small batch each, every step reported: the test suite checks that the
        # losses fall (on fresh batches they would only on average).
        recipe["vae"].update(statsClips=8, batch=2, imageBatch=4, warmup=2, report=1, decoderSteps=2, decoderClipFrames=9, colourSteps=2, colourClipFrames=9, colourBatch=1, fixedBatch=True)
        recipe["dit"].update(batch=8, warmup=2, report=1, fixedBatch=True, checkpointEvery=10)
    if a.stage == "captions":
        import json

        from .grammar import Grammar

        g = Grammar()
        captions = [c.text(g) for c in g.captions()]
        if a.smoke:
            captions = captions[::40]  # a sample of every colour, shape and motion
        with open(os.path.join(a.workdir, "captions.json"), "w") as f:
            json.dump({"captions": captions, "words": g.words()}, f)
    elif a.stage == "vae":
        from .train_vae import train_vae

        train_vae(recipe, a.workdir, a.steps, a.halt_after)
    elif a.stage == "latents":
        from .train_dit import encode_latents

        encode_latents(recipe, a.workdir, a.clips)
    elif a.stage in ("dit", "dit-more"):
        from .train_dit import train_dit

        train_dit(recipe, a.workdir, a.steps, a.clips, a.stage, a.halt_after)
    else:
        if not a.out:
            fail("export: --out DIR is required")
        from .export import export

        export(recipe, a.workdir, a.out)


if __name__ == "__main__":
    main()
