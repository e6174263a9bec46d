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

Two optional terms of the recipe (`dit.objectWeight`, `dit.ema`):
- object weighting: the squared error on the latent cells the object touches (in any video frame
  the latent frame covers; from the generator's ground truth) counts 1 + objectWeight times, and
  the loss is normalised by the weights. The object covers 4 to 9% of a frame, so an unweighted
  loss is almost all background: a still blob of about the right colour already earns most of it.
- an exponential moving average of the weights (decay `ema`), kept in the checkpoint and shipped
  instead of the last step's weights.
"""
import json
import os

import numpy as np
import torch

from . import safetensors_io
from .clips import clip_path, render_clip
from .common import Progress, fail, halted, load_checkpoint, lr_at, resume, save_checkpoint
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


def clip_spec(recipe: dict, grammar: Grammar, captions: list, i: int):
    """Clip i of the DiT's dataset: its caption and the generator seed (drawn from (seed, 3, i))."""
    rng = np.random.default_rng([recipe["seed"], 3, i])
    cap = captions[int(rng.integers(len(captions)))]
    return cap, int(rng.integers(2**31))


def object_cells(path: list, latent_frames: int, rows: int, cols: int, cell: float, pad: float = 2.0) -> np.ndarray:
    """[latent_frames, rows, cols] 1 where the object (centre, radius per video frame; padded by
    `pad` px) touches a latent cell in a video frame the latent frame covers: frame 0 covers video
    frame 0, latent frame l >= 1 covers video frames 4l-3..4l (the VAE's 4x causal compression)."""
    out = np.zeros((latent_frames, rows, cols), dtype=np.float32)
    top, left = np.arange(rows) * cell, np.arange(cols) * cell
    for t in range(latent_frames):
        for f in ([0] if t == 0 else range(4 * t - 3, min(4 * t + 1, len(path)))):
            cx, cy, r = path[f]
            dx = np.maximum(np.maximum(left - cx, 0), cx - (left + cell))
            dy = np.maximum(np.maximum(top - cy, 0), cy - (top + cell))
            out[t] = np.maximum(out[t], (dy[:, None] ** 2 + dx[None, :] ** 2 <= (r + pad) ** 2))
    return out


def dataset_captions(grammar: Grammar, index: dict) -> list:
    """The training captions the orchestrator encoded (all of them, or a sample in a smoke run)."""
    return [c for c in grammar.training_captions() if c.text(grammar) in index]


def object_masks(recipe: dict, index: dict, texts: list, shape: tuple) -> torch.Tensor:
    """[clips, 1, T, h, w] object footprints of the dataset's clips, from the generator's ground truth."""
    grammar = Grammar()
    captions = dataset_captions(grammar, index)
    T, h, w = shape
    masks = torch.zeros(len(texts), 1, T, h, w)
    for i, text in enumerate(texts):
        cap, seed = clip_spec(recipe, grammar, captions, i)
        if cap.text(grammar) != text:
            fail(f"latents.pt clip {i} is {text!r} but the generator draws {cap.text(grammar)!r}: delete latents.pt and rerun")
        masks[i, 0] = torch.from_numpy(object_cells(clip_path(grammar, cap, seed), T, h, w, grammar.height / h))
    return masks


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
    captions = dataset_captions(grammar, index)
    progress = Progress("latents", clips, len(data["captions"]))
    for start in range(len(data["captions"]), clips, 64):
        batch, texts = [], []
        for i in range(start, min(clips, start + 64)):
            cap, seed = clip_spec(recipe, grammar, captions, i)
            clip, _ = render_clip(grammar, cap, seed)
            batch.append(clip)
            texts.append(cap.text(grammar))
        mu, _ = vae.encode(torch.from_numpy(np.stack(batch)))
        data["latents"].append(((mu - mean) / std).to(torch.float16))
        data["captions"] += texts
        save_checkpoint(path, data)
        progress.report(len(data["captions"]) - 1)
    return data


def encode_latents(recipe: dict, workdir: str, clips: int = 0) -> None:
    """The latents stage: every DiT phase's clips encoded before the phases train (a stage of its
    own so that each stays within its time budget). The first phase's clips first, then the
    second's, in the chunks each phase would encode them in itself, so the bits are the same."""
    index, _ = load_text(workdir)
    counts = [clips] if clips else [dit_phase(recipe, p)["clips"] for p in (["dit", "dit-more"] if recipe["dit"].get("more") else ["dit"])]
    for n in counts:
        encode_dataset(recipe, workdir, n, index)


def dit_phase(recipe: dict, phase: str) -> dict:
    """The DiT recipe of a phase: 'dit' (from a seeded init) or 'dit-more' (the recipe's `more`
    block over 'dit': it starts from dit-final.pt's last weights and moving average, with a fresh
    optimiser and its own learning-rate schedule, and draws batches after the first phase's)."""
    r = {k: v for k, v in recipe["dit"].items() if k != "more"}
    if phase == "dit":
        return r
    more = recipe["dit"].get("more")
    if not more:
        fail("the recipe's dit block has no 'more' phase")
    return {**r, **more, "stepOffset": recipe["dit"]["steps"]}


def train_dit(recipe: dict, workdir: str, steps: int = 0, clips: int = 0, phase: str = "dit", halt_after: int = 0) -> None:
    r = dit_phase(recipe, phase)
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
    weight = r.get("objectWeight", 0.0)
    masks = object_masks(recipe, index, data["captions"][:clips], tuple(latents.shape[2:])) if weight else None
    torch.manual_seed(recipe["seed"] + 1)
    model = WanTransformer3DModel(recipe["transformer"])
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=0.0)
    ckpt_path = os.path.join(workdir, f"{phase}.pt")
    start = resume(ckpt_path, phase, model, opt, steps)
    saved = load_checkpoint(ckpt_path) if start else None
    if saved is None and phase != "dit":
        before = load_checkpoint(os.path.join(workdir, "dit-final.pt"))
        if before is None:
            fail("dit-final.pt is missing: the 'dit' phase comes first")
        model.load_state_dict(before["last"])
        saved = {"ema": before["model"], "loss": before["loss"]}
    decay = r.get("ema", 0.0)
    ema = None
    if decay:
        ema = saved["ema"] if saved else {k: v.detach().clone() for k, v in model.state_dict().items()}
    progress = Progress(phase, steps, start)
    running = saved["loss"] if saved else None  # the smoothed loss carries on across a resume
    offset = r.get("stepOffset", 0)
    start_share = r.get("startShare", 0.0)
    shift = r["flowShift"]
    total = latents.shape[2]
    for step in range(start, steps):
        g = torch.Generator().manual_seed(recipe["seed"] * 7919 + (0 if r.get("fixedBatch") else offset + step))
        idx = torch.randint(0, latents.shape[0], (r["batch"],), generator=g)
        length = int(torch.randint(4, total + 1, (1,), generator=g))
        first = int(torch.randint(0, total - length + 1, (1,), generator=g))
        if start_share and float(torch.rand(1, generator=g)) < start_share:
            first = 0  # the video's own first frames (see `startShare` in docs/trainer.md)
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
        err = (pred - (noise - x0)) ** 2
        if masks is None:
            loss = err.mean()
        else:
            w = 1 + weight * masks[idx, :, first : first + length]
            loss = (err * w).sum() / (w.sum() * err.shape[1])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ema is not None:
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    ema[k].mul_(decay).add_(v, alpha=1 - decay)
        running = float(loss) if running is None else 0.98 * running + 0.02 * float(loss)
        if (step + 1) % r.get("report", 25) == 0 or step + 1 == steps:
            progress.report(step, loss=float(loss), smoothed=running)
        if (step + 1) % r.get("checkpointEvery", 100) == 0 or step + 1 == steps:
            save_checkpoint(ckpt_path, {"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1, "loss": running, "ema": ema})
            if halted(phase, step, halt_after):
                return
    # What ships: the moving average when the recipe keeps one, the last step's weights otherwise.
    torch.save({"model": ema if ema is not None else model.state_dict(), "last": model.state_dict(), "loss": running}, os.path.join(workdir, f"{phase}-final.pt"))
