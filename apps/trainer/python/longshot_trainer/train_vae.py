"""Stage 1: the VAE (AutoencoderKLWan architecture) on short generated clips.

The first `imageSteps` steps train on single frames (the image path, a ninth of a clip's cost),
the rest on clips. Reconstruction loss L1 + MSE on pixels (the shape's pixels, told from the background by the
clip's corner colour, weighted up) plus a small KL term, Adam, cosine learning rate. Each
step's batch is drawn from a generator seeded by (recipe seed, step), so a resumed run draws
exactly the batches an uninterrupted one would. Checkpoints every 50 steps; at the end the
per-channel statistics of the latent means over generated clips (the config's latents_mean and
latents_std) are computed and everything is saved to vae-final.pt.
"""
import os

import numpy as np
import torch

from .clips import render_clip
from .common import Progress, halted, lr_at, resume, save_checkpoint
from .grammar import Grammar
from .wan_vae import AutoencoderKLWan


def vae_batch(grammar: Grammar, captions, rng: np.random.Generator, batch: int, frames: int) -> torch.Tensor:
    clips = []
    for _ in range(batch):
        cap = captions[int(rng.integers(len(captions)))]
        start = int(rng.integers(0, max(1, grammar.frames - frames + 1)))  # longer clips start at 0 and run past the grammar length
        clip, _ = render_clip(grammar, cap, int(rng.integers(2**31)), frames=frames, start=start)
        clips.append(clip)
    return torch.from_numpy(np.stack(clips))


def train_vae(recipe: dict, workdir: str, steps: int = 0, halt_after: int = 0) -> None:
    r = recipe["vae"]
    steps = steps or r["steps"]
    grammar = Grammar()
    captions = grammar.captions()
    torch.manual_seed(recipe["seed"])
    model = AutoencoderKLWan(r["config"])
    # Start with a small posterior variance: with logvar 0 the sampling noise (std 1) drowns the
    # untrained encoder's means and the decoder learns nothing for hundreds of steps.
    with torch.no_grad():
        model.quant_conv.bias[r["config"]["z_dim"] :] = -8.0
    opt = torch.optim.Adam(model.parameters(), lr=r["lr"])
    ckpt_path = os.path.join(workdir, "vae.pt")
    decoder_steps = r.get("decoderSteps", 0)
    colour_steps = r.get("colourSteps", 0)
    total = steps + decoder_steps + colour_steps
    start = resume(ckpt_path, "vae", model, opt, total)
    progress = Progress("vae", total, start)
    running = None
    for step in range(start, total):
        rng = np.random.default_rng([recipe["seed"], 1, 0 if r.get("fixedBatch") else step])
        # A curriculum: single frames first (the spatial path, cheap), then short clips (the
        # causal temporal path through the feature cache), then the decoder alone on long clips:
        # a frame's output depends on latent frames far back (the decoder's receptive field), so
        # a decoder that saw only short clips drifts further from the truth frame after frame.
        # Last, the decoder alone again, on the latent means (what the DiT's latents stand for) with
        # the object's pixels weighted far more: without it the decoder gives back the object's
        # colour wrong for about half the (colour, background) pairs (yellow as orange, magenta as
        # red: python3 -m longshot_trainer.vae_colours), which caps what the DiT can draw. The
        # encoder, and so the latent space the DiT learns, does not change.
        image = step < r.get("imageSteps", 0)
        decoder_only = step >= steps
        colour = step >= steps + decoder_steps
        fg_weight = r["colourWeight"] if colour else r["foregroundWeight"]
        if colour:
            model.encoder.requires_grad_(False)
            model.quant_conv.requires_grad_(False)
            x = vae_batch(grammar, captions, rng, r["colourBatch"], r["colourClipFrames"])
            lr = lr_at(step - steps - decoder_steps, colour_steps, r["colourLr"], r["colourFinalLr"], 10)
        elif decoder_only:
            model.encoder.requires_grad_(False)
            model.quant_conv.requires_grad_(False)
            x = vae_batch(grammar, captions, rng, r["decoderBatch"], r["decoderClipFrames"])
            lr = lr_at(step - steps, decoder_steps, r["decoderLr"], r["decoderFinalLr"], 10)
        else:
            x = vae_batch(grammar, captions, rng, r["imageBatch"] if image else r["batch"], 1 if image else r["clipFrames"])
            lr = lr_at(step, steps, r["lr"], r["finalLr"], r.get("warmup", 50))
        for g in opt.param_groups:
            g["lr"] = lr
        mu, logvar = model.encode(x)
        torch.manual_seed(recipe["seed"] * 1000003 + step)
        z = mu if colour else mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        y = model.decode_raw(z)
        # Pixels of the shape weigh more than the background: the background is learned in a few
        # steps, the shapes (a few percent of the pixels) are what the model is for.
        weight = 1 + fg_weight * ((x - x[:, :, :, :1, :1]).abs().sum(1, keepdim=True) > 0.05).float()
        rec = (((y - x).abs() + (y - x) ** 2) * weight).mean() / weight.mean()
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).mean()
        loss = rec + r["klWeight"] * kl
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        mse = float(((y.detach().clamp(-1, 1) - x) ** 2).mean())
        running = mse if running is None else 0.9 * running + 0.1 * mse
        if (step + 1) % r.get("report", 10) == 0 or step + 1 == total:
            psnr = 10 * np.log10(4.0 / max(running, 1e-10))
            progress.report(step, loss=float(rec), psnr=psnr, kl=float(kl))
        if (step + 1) % (10 if decoder_only else 50) == 0 or step + 1 == total:
            save_checkpoint(ckpt_path, {"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1})
            if halted("vae", step, halt_after):
                return
    finish_vae(recipe, model, grammar, workdir)


@torch.no_grad()
def finish_vae(recipe: dict, model: AutoencoderKLWan, grammar: Grammar, workdir: str) -> None:
    """Latent statistics over whole generated clips, and a held-aside reconstruction PSNR."""
    r = recipe["vae"]
    rng = np.random.default_rng([recipe["seed"], 2])
    captions = grammar.captions()
    mus, errs = [], []
    for i in range(0, r["statsClips"], 16):
        x = vae_batch(grammar, captions, rng, 16, grammar.frames)
        mu, _ = model.encode(x)
        mus.append(mu)
        errs.append(float(((model.decode_raw(mu).clamp(-1, 1) - x) ** 2).mean()))
    mu = torch.cat(mus)
    mean = mu.mean(dim=(0, 2, 3, 4))
    std = mu.std(dim=(0, 2, 3, 4))
    psnr = float(10 * np.log10(4.0 / np.mean(errs)))
    print(f"[vae] reconstruction PSNR over {mu.shape[0]} whole clips: {psnr:.2f} dB", flush=True)
    torch.save({"model": model.state_dict(), "latents_mean": mean, "latents_std": std, "psnr": psnr}, os.path.join(workdir, "vae-final.pt"))
