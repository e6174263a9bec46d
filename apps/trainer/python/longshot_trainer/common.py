"""Shared pieces of the training stages: progress lines, resumable checkpoints."""
import os
import sys
import time

import torch

def lr_at(step: int, steps: int, lr: float, final: float, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay from lr to final."""
    import math

    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return final + 0.5 * (lr - final) * (1 + math.cos(math.pi * min(1.0, p)))


class Progress:
    """One line per report: stage, step/steps, figures, elapsed and ETA (stdout, flushed)."""

    def __init__(self, stage: str, steps: int, start_step: int):
        self.stage, self.steps, self.start_step = stage, steps, start_step
        self.t0 = time.time()

    def report(self, step: int, **figures: float) -> None:
        done = step + 1 - self.start_step
        elapsed = time.time() - self.t0
        eta = elapsed / max(1, done) * (self.steps - step - 1)
        figs = " ".join(f"{k} {v:.4g}" for k, v in figures.items())
        print(f"[{self.stage}] step {step + 1}/{self.steps} {figs} elapsed {elapsed:.0f}s eta {eta:.0f}s", flush=True)


def save_checkpoint(path: str, state: dict) -> None:
    """Written to a temporary file and renamed, so an interrupted save never corrupts the last one."""
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str):
    return torch.load(path) if os.path.exists(path) else None


def resume(path: str, stage: str, model, opt, steps: int) -> int:
    """Loads the stage's last checkpoint into model and optimiser; the step to continue at (0: none)."""
    ckpt = load_checkpoint(path)
    if ckpt is None:
        return 0
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    print(f"[{stage}] resuming at step {ckpt['step']}/{steps}", flush=True)
    return ckpt["step"]


def halted(stage: str, step: int, halt_after: int) -> bool:
    """True when the stage is to stop after the checkpoint it just wrote at `step` (--halt-after:
    an interruption at a known step, for the tests that resume from it)."""
    if step + 1 != halt_after:
        return False
    print(f"[{stage}] halted after the checkpoint at step {halt_after}", flush=True)
    return True


def fail(message: str) -> None:
    print(f"trainer: {message}", file=sys.stderr)
    sys.exit(2)
