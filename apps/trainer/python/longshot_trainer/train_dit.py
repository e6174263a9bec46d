"""Stage 2: the DiT (WanTransformer3DModel architecture) on the trained VAE's latents, with flow
matching as Wan trains: x_t = (1 - s) x0 + s e, the model predicts the velocity e - x0 at timestep
1000 s, with s drawn uniformly and shifted by the scheduler's flow_shift.

Data: `clips` training-caption clips (held-out (colour, shape, motion) triples never appear),
encoded once by the VAE encoder (latent means, normalised with the VAE's statistics) and kept in
the work directory. Each step trains on windows of 4..8 latent frames cut anywhere in the clips,
because DualParal shows the model windows that start mid-video (a block's prefix) as well as the
video's first frame. Text: the umT5 embeddings Longshot's engine computed for every caption
(text-embeddings.safetensors, written by the orchestrator); a fraction of steps uses the
embedding of "" instead, so classifier-free guidance has an unconditional model.
"""
import json
import os

import numpy as np
import torch

from . import safetensors_io
from .clips import render_clip
from .common import Progress, fail, load_checkpoint, lr_at, resume, save_checkpoint
from .grammar import Grammar
from .wan_dit import WanTransformer3DModel
from .wan_vae import AutoencoderKLWan


def load_text(workdir: str):
    path = os.path.join(workdir, "text-embeddings.safetensors")
    if not os.path.exists(path):
        fail(f"{path} is missing: the orchestrator's prepare stage writes it (npm run train)")
    captions = json.loads(safetensors_io.metadata(path)["captions"])
    emb = safetensors_io.read(path)["embeddings"]
    return {c: i for i, c in enumerate(captions)}, emb


@torch.no_grad()
def encode_dataset(recipe: dict, workdir: str, clips: int, index: dict) -> dict:
    """Latents of `clips` generated training clips; resumable in chunks of 64 clips."""
    path = os.path.join(workdir, "latents.pt")
    data = load_checkpoint(path) or {"latents": [], "captions": []}
    if len(data["captions"]) >= clips:
        return data
    final = torch.load(os.path.join(workdir, "vae-final.pt"))
    vae = AutoencoderKLWan(recipe["vae"]["config"])
    vae.load_state_dict(final["model"])
    vae.eval()
    mean, std = final["latents_mean"].view(1, -1, 1, 1, 1), final["latents_std"].view(1, -1, 1, 1, 1)
    grammar = Grammar()
    # The training captions the orchestrator encoded (all of them, or a sample in a smoke run).
    captions = [c for c in grammar.training_captions() if c.text(grammar) in index]
    progress = Progress("latents", clips, len(data["captions"]))
    for start in range(len(data["captions"]), clips, 64):
        batch, texts = [], []
        for i in range(start, min(clips, start + 64)):
            rng = np.random.default_rng([recipe["seed"], 3, i])
            cap = captions[int(rng.integers(len(captions)))]
            clip, _ = render_clip(grammar, cap, int(rng.integers(2**31)))
            batch.append(clip)
            texts.append(cap.text(grammar))
        mu, _ = vae.encode(torch.from_numpy(np.stack(batch)))
        data["latents"].append(((mu - mean) / std).to(torch.float16))
        data["captions"] += texts
        save_checkpoint(path, data)
        progress.report(len(data["captions"]) - 1)
    return data


def train_dit(recipe: dict, workdir: str, steps: int = 0, clips: int = 0) -> None:
    r = recipe["dit"]
    steps = steps or r["steps"]
    clips = clips or r["clips"]
    index, emb = load_text(workdir)
    if "" not in index:
        fail("text-embeddings.safetensors has no embedding of the empty prompt")
    data = encode_dataset(recipe, workdir, clips, index)
    latents = torch.cat(data["latents"]).to(torch.float32)[:clips]
    missing = [c for c in data["captions"] if c not in index]
    if missing:
        fail(f"no text embedding for {len(missing)} captions, e.g. {missing[0]!r}")
    rows = torch.tensor([index[c] for c in data["captions"][:clips]])
    empty = emb[index[""]]
    torch.manual_seed(recipe["seed"] + 1)
    model = WanTransformer3DModel(recipe["transformer"])
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=0.0)
    ckpt_path = os.path.join(workdir, "dit.pt")
    start = resume(ckpt_path, "dit", model, opt, steps)
    progress = Progress("dit", steps, start)
    running = None
    shift = r["flowShift"]
    total = latents.shape[2]
    for step in range(start, steps):
        g = torch.Generator().manual_seed(recipe["seed"] * 7919 + (0 if r.get("fixedBatch") else step))
        idx = torch.randint(0, latents.shape[0], (r["batch"],), generator=g)
        length = int(torch.randint(4, total + 1, (1,), generator=g))
        first = int(torch.randint(0, total - length + 1, (1,), generator=g))
        x0 = latents[idx, :, first : first + length]
        ctx = emb[rows[idx]].clone()
        drop = torch.rand(r["batch"], generator=g) < r["dropText"]
        ctx[drop] = empty
        u = torch.rand(r["batch"], generator=g)
        sigma = shift * u / (1 + (shift - 1) * u)
        noise = torch.randn(x0.shape, generator=g)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, r["lr"], r["finalLr"], r.get("warmup", 100))
        pred = model(xt, sigma * 1000, ctx)
        loss = ((pred - (noise - x0)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = float(loss) if running is None else 0.98 * running + 0.02 * float(loss)
        if (step + 1) % r.get("report", 25) == 0 or step + 1 == steps:
            progress.report(step, loss=float(loss), smoothed=running)
        if (step + 1) % 100 == 0 or step + 1 == steps:
            save_checkpoint(ckpt_path, {"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1, "loss": running})
    torch.save({"model": model.state_dict(), "loss": running}, os.path.join(workdir, "dit-final.pt"))
