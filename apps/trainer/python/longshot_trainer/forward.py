"""The trainer's forward of a pipeline directory, for the agreement test with Longshot's engine:

  python3 -m longshot_trainer.forward --model DIR --inputs IN.safetensors --out OUT.safetensors

IN holds `latents` [16, F, h, w], `timestep` [1], `context` [textLen, textDim] and `vae_latents`
[16, Fv, h, w]; OUT gets the DiT's velocity [16, F, h, w] and the VAE's decoded video
[3, T, 8h, 8w] (clamped to [-1, 1]), both computed in float32 from the directory's weights.
"""
import argparse
import json
import os

import torch

from . import safetensors_io
from .wan_dit import WanTransformer3DModel
from .wan_vae import AutoencoderKLWan


def load_pipeline(model: str):
    with open(os.path.join(model, "transformer", "config.json")) as f:
        dit_cfg = json.load(f)
    with open(os.path.join(model, "vae", "config.json")) as f:
        vae_cfg = json.load(f)
    dit = WanTransformer3DModel(dit_cfg)
    dit.load_state_dict(safetensors_io.read(os.path.join(model, "transformer", "diffusion_pytorch_model.safetensors")))
    vae = AutoencoderKLWan(vae_cfg)
    weights = safetensors_io.read(os.path.join(model, "vae", "diffusion_pytorch_model.safetensors"))
    missing, unexpected = vae.load_state_dict(weights, strict=False)
    absent = [k for k in missing if k.startswith(("decoder.", "post_quant_conv."))]
    if absent or unexpected:
        raise ValueError(f"{model}/vae: missing {absent[:3]}, unexpected {unexpected[:3]}")
    mean = torch.tensor(vae_cfg["latents_mean"], dtype=torch.float32)
    std = torch.tensor(vae_cfg["latents_std"], dtype=torch.float32)
    return dit.eval(), vae.eval(), mean, std


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(prog="longshot_trainer.forward")
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    dit, vae, mean, std = load_pipeline(a.model)
    x = safetensors_io.read(a.inputs)
    velocity = dit(x["latents"][None], x["timestep"], x["context"][None])[0]
    video = vae.decode(x["vae_latents"][None], mean, std)[0]
    safetensors_io.write(a.out, {"velocity": velocity, "video": video})


if __name__ == "__main__":
    main()
