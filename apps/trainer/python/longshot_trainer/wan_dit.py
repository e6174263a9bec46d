"""WanTransformer3DModel (Wan2.1's DiT) at configurable widths, written from the published
architecture with diffusers' tensor names, for whole clips (training and the agreement test).

Per block: adaLN-modulated self-attention (q/k RMS-normalised across heads, 3D rotary positions)
with a gate; cross-attention to the text (affine LayerNorm in front, q/k RMS norms, no gate);
adaLN-modulated GELU(tanh) feed-forward with a gate. Conditioning: sinusoidal timestep features
(cos first) through time_embedder and time_proj (6 modulation rows per block); text through a
two-layer GELU(tanh) MLP. Output head: LayerNorm, shift/scale from its 2-row table plus the time
embedding, projection to 2x2 patches of 16 channels.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    arg = t.to(torch.float64)[:, None] * freqs[None]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1).to(torch.float32)


def rope_angles(frames: int, gh: int, gw: int, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Angle of every (token, pair): pairs split into frame, row and column parts as Wan does."""
    pairs = head_dim // 2
    sp = pairs // 3
    fp = pairs - 2 * sp

    def part(n_pairs: int, positions: torch.Tensor) -> torch.Tensor:
        inv = theta ** (-2 * torch.arange(n_pairs, dtype=torch.float64) / (2 * n_pairs))
        return positions.to(torch.float64)[:, None] * inv[None]

    f = part(fp, torch.arange(frames))[:, None, None, :].expand(frames, gh, gw, fp)
    h = part(sp, torch.arange(gh))[None, :, None, :].expand(frames, gh, gw, sp)
    w = part(sp, torch.arange(gw))[None, None, :, :].expand(frames, gh, gw, sp)
    return torch.cat([f, h, w], dim=-1).reshape(frames * gh * gw, pairs)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, L, heads, head_dim]; rotates pairs (2p, 2p+1) as complex numbers."""
    re, im = x[..., 0::2], x[..., 1::2]
    out = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1)
    return out.flatten(-2)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    def __init__(self, dim, heads, eps):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x, context=None, rope=None):
        src = x if context is None else context
        b, lq, d = x.shape
        lk = src.shape[1]
        hd = d // self.heads
        q = self.norm_q(self.to_q(x)).view(b, lq, self.heads, hd)
        k = self.norm_k(self.to_k(src)).view(b, lk, self.heads, hd)
        v = self.to_v(src).view(b, lk, self.heads, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        att = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd), dim=-1)
        out = torch.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, lq, d)
        return self.to_out[0](out)


class FeedForward(nn.Module):
    def __init__(self, dim, ffn):
        super().__init__()
        self.net = nn.ModuleList([nn.Module(), nn.Identity(), nn.Linear(ffn, dim)])
        self.net[0].proj = nn.Linear(dim, ffn)

    def forward(self, x):
        return self.net[2](F.gelu(self.net[0].proj(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, dim, ffn, heads, eps):
        super().__init__()
        self.eps = eps
        self.attn1 = Attention(dim, heads, eps)
        self.attn2 = Attention(dim, heads, eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.ffn = FeedForward(dim, ffn)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def forward(self, x, context, e, rope):
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = (self.scale_shift_table + e).unbind(1)
        h = F.layer_norm(x, x.shape[-1:], eps=self.eps) * (1 + scale_a[:, None]) + shift_a[:, None]
        x = x + gate_a[:, None] * self.attn1(h, rope=rope)
        x = x + self.attn2(self.norm2(x), context=context)
        h = F.layer_norm(x, x.shape[-1:], eps=self.eps) * (1 + scale_f[:, None]) + shift_f[:, None]
        return x + gate_f[:, None] * self.ffn(h)


class WanTransformer3DModel(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        self.dim, self.heads, self.eps, self.freq_dim = dim, cfg["num_attention_heads"], cfg["eps"], cfg["freq_dim"]
        ch = cfg.get("in_channels", 16)
        self.patch_embedding = nn.Conv3d(ch, dim, (1, 2, 2), stride=(1, 2, 2))
        ce = nn.Module()
        ce.time_embedder = nn.Module()
        ce.time_embedder.linear_1 = nn.Linear(cfg["freq_dim"], dim)
        ce.time_embedder.linear_2 = nn.Linear(dim, dim)
        ce.time_proj = nn.Linear(dim, 6 * dim)
        ce.text_embedder = nn.Module()
        ce.text_embedder.linear_1 = nn.Linear(cfg["text_dim"], dim)
        ce.text_embedder.linear_2 = nn.Linear(dim, dim)
        self.condition_embedder = ce
        self.blocks = nn.ModuleList([Block(dim, cfg["ffn_dim"], self.heads, self.eps) for _ in range(cfg["num_layers"])])
        self.proj_out = nn.Linear(dim, 4 * ch)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """latents [B, 16, F, h, w], timestep [B] (sigma * 1000), context [B, textLen, textDim] -> velocity."""
        b, c, f, h, w = latents.shape
        gh, gw = h // 2, w // 2
        ce = self.condition_embedder
        temb = ce.time_embedder.linear_2(F.silu(ce.time_embedder.linear_1(timestep_features(timestep, self.freq_dim))))
        e = ce.time_proj(F.silu(temb)).view(b, 6, self.dim)
        ctx = ce.text_embedder.linear_2(F.gelu(ce.text_embedder.linear_1(context), approximate="tanh"))
        x = self.patch_embedding(latents).flatten(2).transpose(1, 2)  # [B, f*gh*gw, D], (f, i, j) order
        ang = rope_angles(f, gh, gw, self.dim // self.heads)
        rope = (torch.cos(ang).to(x.dtype)[None, :, None, :], torch.sin(ang).to(x.dtype)[None, :, None, :])
        for blk in self.blocks:
            x = blk(x, ctx, e, rope)
        shift, scale = (self.scale_shift_table + temb[:, None]).unbind(1)
        x = F.layer_norm(x, x.shape[-1:], eps=self.eps) * (1 + scale[:, None]) + shift[:, None]
        out = self.proj_out(x).view(b, f, gh, gw, 2, 2, c)  # (ph, pw, c) per token
        return out.permute(0, 6, 1, 2, 4, 3, 5).reshape(b, c, f, h, w)
