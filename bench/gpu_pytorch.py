#!/usr/bin/env python3
"""PyTorch baseline for bench/gpu.ts: the same Wan2.1 stage block-step on the same GPU.

One middle stage (no patch embedding, no output head) of `layers` DiT blocks on hidden states
[2, tokens, dim] (the CFG batch), in bfloat16, with the op sequence of libs/model/src/stage.ts:
timestep embedding -> time MLP -> 6-row adaLN modulation per block; self-attention with q/k
RMSNorm over the full dim, 3D RoPE and the successor's cached K/V rows appended to the keys
(their K RMS-normed and rotated at frame offset = window frames); cross-attention to the text
context's precomputed K/V; a tanh-GELU FFN; gated residuals; the raw K/V rows of the first
`context_frames` own frames copied out as the stage's feature cache.

Input: one JSON object as argv[1] (see bench/gpu.ts). Output: one JSON line
{"seconds": median, "runs": [...], "device": ..., "torch": ...}. Self-contained: torch only.
"""
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def rope_tables(frames, height, width, head_dim, frame_offset, theta, device):
    """cos/sin [frames*height*width, head_dim/2] in float64, split frame/row/column as in ops.ts."""
    pairs = head_dim // 2
    part_r = pairs // 3
    part_f = pairs - 2 * part_r

    def axis(n, count, offset):
        j = torch.arange(count, dtype=torch.float64, device=device)
        inv = theta ** (-2.0 * j / (2.0 * count))
        pos = torch.arange(n, dtype=torch.float64, device=device) + offset
        return torch.outer(pos, inv)  # [n, count]

    af = axis(frames, part_f, frame_offset)[:, None, None, :].expand(frames, height, width, part_f)
    ah = axis(height, part_r, 0)[None, :, None, :].expand(frames, height, width, part_r)
    aw = axis(width, part_r, 0)[None, None, :, :].expand(frames, height, width, part_r)
    angle = torch.cat([af, ah, aw], dim=-1).reshape(frames * height * width, pairs)
    return torch.cos(angle), torch.sin(angle)


def apply_rope(x, cos, sin, heads):
    """x [B, L, heads*hd] -> rotated pairs (x[2p], x[2p+1]) as complex numbers, math in float32."""
    b, l, d = x.shape
    xf = x.float().view(b, l, heads, d // heads // 2, 2)
    c = cos.float()[None, :, None, :]
    s = sin.float()[None, :, None, :]
    re = xf[..., 0] * c - xf[..., 1] * s
    im = xf[..., 0] * s + xf[..., 1] * c
    return torch.stack([re, im], dim=-1).view(b, l, d).to(x.dtype)


def rms_norm(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)


def attention(q, k, v, heads):
    b, lq, d = q.shape
    hd = d // heads
    split = lambda t: t.view(b, t.shape[1], heads, hd).transpose(1, 2)
    o = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return o.transpose(1, 2).reshape(b, lq, d)


def main():
    cfg = json.loads(sys.argv[1])
    dev = torch.device("cuda")
    dt = torch.bfloat16
    torch.manual_seed(0)
    D, F_, heads, layers = cfg["dim"], cfg["ffnDim"], cfg["heads"], cfg["layers"]
    hd = D // heads
    eps = cfg["eps"]
    frames, hh, ww = cfg["frames"], cfg["latentHeight"] // 2, cfg["latentWidth"] // 2
    hw = hh * ww
    tokens = frames * hw
    ctx_frames = cfg["contextFrames"]
    prefix = cfg["prefixFrames"]
    text_len = cfg["textLen"]

    def lin(out_f, in_f):
        return (torch.randn(out_f, in_f, device=dev, dtype=dt) / math.sqrt(in_f),
                torch.randn(out_f, device=dev, dtype=dt) / math.sqrt(in_f * 16))

    t_lin1, t_lin2, t_proj = lin(D, cfg["freqDim"]), lin(D, D), lin(6 * D, D)
    blocks = []
    for _ in range(layers):
        blk = {n: lin(D, D) for n in ["q", "k", "v", "o", "cq", "co"]}
        blk["ff1"], blk["ff2"] = lin(F_, D), lin(D, F_)
        blk["table"] = torch.randn(6, D, device=dev, dtype=dt) / math.sqrt(D)
        for n in ["nq", "nk", "cnq", "n2w"]:
            blk[n] = torch.ones(D, device=dev, dtype=dt)
        blk["n2b"] = torch.zeros(D, device=dev, dtype=dt)
        # Cross-attention K/V of the text context: constant for a job, precomputed (as the stage does).
        blk["ck"] = torch.randn(2, text_len, D, device=dev, dtype=dt)
        blk["cv"] = torch.randn(2, text_len, D, device=dev, dtype=dt)
        blocks.append(blk)
    succ_k = [torch.randn(2, ctx_frames * hw, D, device=dev, dtype=dt) for _ in range(layers)]
    succ_v = [torch.randn(2, ctx_frames * hw, D, device=dev, dtype=dt) for _ in range(layers)]
    x_host = torch.randn(2, tokens, D, dtype=torch.float32).pin_memory()

    def forward():
        # Timestep embedding (float64 -> float32 as in ops.ts), then the time MLP.
        half = cfg["freqDim"] // 2
        freq = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=dev) / half)
        arg = cfg["timestep"] * freq
        temb = torch.cat([torch.cos(arg), torch.sin(arg)]).to(dt)[None]
        temb = F.linear(F.silu(F.linear(temb, *t_lin1)), *t_lin2)
        e0 = F.linear(F.silu(temb), *t_proj).view(6, D)
        cos, sin = rope_tables(frames, hh, ww, hd, 0, cfg["ropeTheta"], dev)
        ecos, esin = rope_tables(ctx_frames, hh, ww, hd, frames, cfg["ropeTheta"], dev)

        x = x_host.to(dev, non_blocking=True).to(dt)
        cache = []
        for i, blk in enumerate(blocks):
            m = blk["table"] + e0  # shift, scale, gate (attn); shift, scale, gate (ffn)
            h = F.layer_norm(x, (D,), eps=eps) * (1 + m[1]) + m[0]
            q = apply_rope(rms_norm(F.linear(h, *blk["q"]), blk["nq"], eps), cos, sin, heads)
            k_raw = F.linear(h, *blk["k"])
            k = apply_rope(rms_norm(k_raw, blk["nk"], eps), cos, sin, heads)
            v = F.linear(h, *blk["v"])
            ek = apply_rope(rms_norm(succ_k[i], blk["nk"], eps), ecos, esin, heads)
            a = attention(q, torch.cat([k, ek], 1), torch.cat([v, succ_v[i]], 1), heads)
            x = x + m[2] * F.linear(a, *blk["o"])
            rows = slice(prefix * hw, (prefix + ctx_frames) * hw)
            cache.append((k_raw[:, rows].clone(), v[:, rows].clone()))

            hc = F.layer_norm(x, (D,), weight=blk["n2w"], bias=blk["n2b"], eps=eps)
            qc = rms_norm(F.linear(hc, *blk["cq"]), blk["cnq"], eps)
            x = x + F.linear(attention(qc, blk["ck"], blk["cv"], heads), *blk["co"])

            hf = F.layer_norm(x, (D,), eps=eps) * (1 + m[4]) + m[3]
            f = F.gelu(F.linear(hf, *blk["ff1"]), approximate="tanh")
            x = x + m[5] * F.linear(f, *blk["ff2"])
        out = x.float().cpu()  # the hidden states go back to the host, as they do for longshot
        return out, cache

    with torch.inference_mode():
        for _ in range(cfg.get("warmup", 2)):
            forward()
        torch.cuda.synchronize()
        runs = []
        for _ in range(cfg.get("reps", 3)):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            forward()
            torch.cuda.synchronize()
            runs.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": statistics.median(runs), "runs": runs, "device": torch.cuda.get_device_name(0), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
