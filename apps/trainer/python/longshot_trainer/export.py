"""Stage 3: the trained weights as a diffusers pipeline directory's safetensors files.

Writes transformer/diffusion_pytorch_model.safetensors (every DiT tensor) and
vae/diffusion_pytorch_model.safetensors (the decoder side, which is all Longshot's engine reads;
the encoder stays in the work directory), in the recipe's dtype, and vae-stats.json with the
latent statistics for vae/config.json. The orchestrator writes the configs, tokenizer and text
encoder around them.
"""
import json
import os

import torch

from . import safetensors_io


def export(recipe: dict, workdir: str, out: str) -> None:
    dtype = recipe["shippedDtype"]
    vae = torch.load(os.path.join(workdir, "vae-final.pt"))
    # The last DiT phase's weights: dit-more's when the recipe has that phase.
    dit = torch.load(os.path.join(workdir, "dit-more-final.pt" if recipe["dit"].get("more") else "dit-final.pt"))
    os.makedirs(os.path.join(out, "transformer"), exist_ok=True)
    os.makedirs(os.path.join(out, "vae"), exist_ok=True)
    safetensors_io.write(os.path.join(out, "transformer", "diffusion_pytorch_model.safetensors"), dit["model"], dtype, {"format": "pt"})
    decoder = {k: v for k, v in vae["model"].items() if k.startswith(("decoder.", "post_quant_conv."))}
    safetensors_io.write(os.path.join(out, "vae", "diffusion_pytorch_model.safetensors"), decoder, dtype, {"format": "pt"})
    stats = {"latents_mean": [round(float(v), 6) for v in vae["latents_mean"]], "latents_std": [round(float(v), 6) for v in vae["latents_std"]], "reconstruction_psnr_db": round(vae["psnr"], 2), "dit_loss": round(dit["loss"], 5)}
    with open(os.path.join(workdir, "vae-stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
    print(f"[export] wrote {out}/transformer and {out}/vae ({dtype})", flush=True)
