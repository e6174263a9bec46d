#!/usr/bin/env python3
"""Expected sigmas and model timesteps of diffusers' flow-matching schedulers, for the configs
Wan ships (num_train_timesteps 1000; flow_shift 3.0 for 480p, 5.0 for 720p).

Written from the published set_timesteps of diffusers' UniPCMultistepScheduler (use_flow_sigmas,
final_sigmas_type "zero") and FlowMatchEulerDiscreteScheduler (no dynamic shifting), with numpy
only: float64 where they use numpy, float32 where they use torch float32 tensors. Its output is
committed as fixtures/schedules.json so `npm test` needs no Python:

    python3 test/reference/schedules.py > test/reference/fixtures/schedules.json
"""
import json

import numpy as np

N = 1000


def unipc(steps, shift):
    # alphas from 1 down to 1/N; sigma = 1 - alpha, shifted, reversed, the trailing 0 dropped.
    alphas = np.linspace(1, 1 / N, steps + 1)
    sigmas = 1.0 - alphas
    sigmas = np.flip(shift * sigmas / (1 + (shift - 1) * sigmas))[:-1].copy()
    timesteps = (sigmas * N).copy().astype(np.int64)  # torch .to(int64) truncates like astype
    sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
    return sigmas, timesteps


def euler(steps, shift):
    f32 = np.float32
    # __init__: training timesteps 1..N as float32, sigmas t / N shifted once in float32.
    train = np.linspace(1, N, N, dtype=np.float32)[::-1].copy()
    s = train / f32(N)
    s = (f32(shift) * s) / (f32(1) + f32(shift - 1) * s)
    sigma_max, sigma_min = float(s[0]), float(s[-1])
    # set_timesteps: a float64 linspace between them in timestep units, shifted again.
    t = np.linspace(sigma_max * N, sigma_min * N, steps)
    sig = t / N
    sig = shift * sig / (1 + (shift - 1) * sig)
    sig32 = sig.astype(np.float32)
    timesteps = sig32 * f32(N)
    return np.concatenate([sig32, np.zeros(1, dtype=np.float32)]), timesteps.astype(np.float32)


cases = []
for kind, fn in (("unipc", unipc), ("euler", euler)):
    for shift in (3.0, 5.0):
        for steps in (1, 2, 3, 10, 20, 50):
            sigmas, timesteps = fn(steps, shift)
            cases.append({
                "kind": kind,
                "shift": shift,
                "steps": steps,
                "sigmas": [float(x) for x in sigmas],
                "timesteps": [float(x) if kind == "euler" else int(x) for x in timesteps],
            })
print(json.dumps({"numTrainTimesteps": N, "cases": cases}))
