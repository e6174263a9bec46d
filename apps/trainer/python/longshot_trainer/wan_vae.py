"""AutoencoderKLWan (Wan2.1's VAE) at configurable widths, written from the published architecture
with diffusers' module and tensor names.

diffusers runs the encoder on chunks of 1 then 4 frames and the decoder one latent frame at a
time, carrying a feature cache (the last two input frames of every causal convolution). Every
cached convolution is causal with zero padding in front, so running each module once over the
whole clip computes the same function; the two places where the first chunk is special are kept
explicit:
  - downsample3d: the first frame passes the temporal convolution untouched; every later output
    frame k is the stride-2 convolution over input frames 2k-2, 2k-1, 2k;
  - upsample3d: the first frame is not doubled; frames 1.. go through a causal temporal
    convolution (zero padding in front of frame 1) that doubles each of them.
"""
import math
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalConv3d(nn.Conv3d):
    """WanCausalConv3d: padding (pt, ph, pw) becomes 2*pt zero frames in front and ph/pw on both sides."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0):
        super().__init__(cin, cout, kernel, stride=stride, padding=0)
        p = padding if isinstance(padding, tuple) else (padding,) * 3
        self._pad = (p[2], p[2], p[1], p[1], 2 * p[0], 0)

    def forward(self, x):
        return super().forward(F.pad(x, self._pad))


class RMSNorm(nn.Module):
    """WanRMS_norm over channels (dim 1): F.normalize(eps 1e-12) * sqrt(C) * gamma; no bias."""

    def __init__(self, dim, images=False):
        super().__init__()
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(shape))

    def forward(self, x):
        return F.normalize(x, dim=1, eps=1e-12) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1 = RMSNorm(cin)
        self.conv1 = CausalConv3d(cin, cout, 3, padding=1)
        self.norm2 = RMSNorm(cout)
        self.conv2 = CausalConv3d(cout, cout, 3, padding=1)
        self.conv_shortcut = CausalConv3d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        h = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        x = self.conv1(F.silu(self.norm1(x)))
        x = self.conv2(F.silu(self.norm2(x)))
        return x + h


class AttentionBlock(nn.Module):
    """Per frame, one head over the pixels, scale 1/sqrt(C); x + proj(attention)."""

    def __init__(self, dim):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        b, c, t, h, w = x.shape
        y = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        q, k, v = self.to_qkv(self.norm(y)).reshape(b * t, 3, c, h * w).unbind(1)
        att = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # [bt, hw, hw]
        y = (att @ v.transpose(1, 2)).transpose(1, 2).reshape(b * t, c, h, w)
        y = self.proj(y).reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)
        return x + y


def _per_frame(fn, x):
    b, c, t, h, w = x.shape
    y = fn(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)


class Resample(nn.Module):
    """WanResample: upsample2d/3d (nearest-exact x2, 3x3 conv to half the width; 3d doubles time)
    and downsample2d/3d (zero pad right/bottom, 3x3 stride-2 conv; 3d halves time)."""

    def __init__(self, dim, mode):
        super().__init__()
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(dim, dim // 2, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
                # Wan's init: both output frames start as copies of the current input frame.
                with torch.no_grad():
                    self.time_conv.weight.zero_()
                    self.time_conv.bias.zero_()
                    eye = torch.eye(dim)
                    self.time_conv.weight[:dim, :, -1, 0, 0] = eye
                    self.time_conv.weight[dim:, :, -1, 0, 0] = eye
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
            if mode == "downsample3d":
                self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
                # Wan's init: the output starts as the middle frame of its window.
                with torch.no_grad():
                    self.time_conv.weight.zero_()
                    self.time_conv.bias.zero_()
                    self.time_conv.weight[:, :, 1, 0, 0] = torch.eye(dim)

    def forward(self, x):
        if self.mode == "upsample3d" and x.shape[2] > 1:
            b, c, t, h, w = x.shape
            rest = self.time_conv(x[:, :, 1:]).reshape(b, 2, c, t - 1, h, w)
            rest = torch.stack((rest[:, 0], rest[:, 1]), 3).reshape(b, c, 2 * (t - 1), h, w)
            x = torch.cat([x[:, :, :1], rest], 2)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d" and x.shape[2] > 1:
            x = torch.cat([x[:, :, :1], self.time_conv(x)], 2)
        return x


class MidBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])
        self.attentions = nn.ModuleList([AttentionBlock(dim)])

    def forward(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Encoder3d(nn.Module):
    def __init__(self, base_dim, z2, dim_mult, num_res_blocks, temperal_downsample):
        super().__init__()
        dims = [base_dim * u for u in [1, *dim_mult]]
        self.conv_in = CausalConv3d(3, dims[0], 3, padding=1)
        blocks: List[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                blocks.append(ResidualBlock(cin, cout))
                cin = cout
            if i != len(dim_mult) - 1:
                blocks.append(Resample(cout, "downsample3d" if temperal_downsample[i] else "downsample2d"))
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], z2, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for b in self.down_blocks:
            x = b(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class UpBlock(nn.Module):
    def __init__(self, cin, cout, num_res_blocks, upsample):
        super().__init__()
        res = []
        for _ in range(num_res_blocks + 1):
            res.append(ResidualBlock(cin, cout))
            cin = cout
        self.resnets = nn.ModuleList(res)
        self.upsamplers = nn.ModuleList([Resample(cout, upsample)]) if upsample else None

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Decoder3d(nn.Module):
    def __init__(self, base_dim, z_dim, dim_mult, num_res_blocks, temperal_upsample):
        super().__init__()
        dims = [base_dim * u for u in [dim_mult[-1], *reversed(dim_mult)]]
        self.conv_in = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        ups = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                cin = cin // 2
            last = i == len(dim_mult) - 1
            ups.append(UpBlock(cin, cout, num_res_blocks, None if last else ("upsample3d" if temperal_upsample[i] else "upsample2d")))
        self.up_blocks = nn.ModuleList(ups)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 3, 3, padding=1)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for b in self.up_blocks:
            x = b(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class AutoencoderKLWan(nn.Module):
    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        zd = config["z_dim"]
        base = config["base_dim"]
        mult = config["dim_mult"]
        nres = config["num_res_blocks"]
        tdown = config["temperal_downsample"]
        self.encoder = Encoder3d(base, 2 * zd, mult, nres, tdown)
        self.quant_conv = CausalConv3d(2 * zd, 2 * zd, 1)
        self.post_quant_conv = CausalConv3d(zd, zd, 1)
        self.decoder = Decoder3d(base, zd, mult, nres, list(reversed(tdown)))

    def encode(self, video):
        """video [B, 3, 1+4n, H, W] in [-1, 1] -> (mean, logvar), each [B, z, 1+n, H/8, W/8]."""
        mu, logvar = self.quant_conv(self.encoder(video)).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def decode_raw(self, z):
        """Un-normalised latents -> video, not clamped (the training target)."""
        return self.decoder(self.post_quant_conv(z))

    def decode(self, latents, mean, std):
        """Normalised latents (as the DiT produces them) -> video clamped to [-1, 1], as WanPipeline + AutoencoderKLWan do."""
        z = latents * std.view(1, -1, 1, 1, 1) + mean.view(1, -1, 1, 1, 1)
        return self.decode_raw(z).clamp(-1, 1)
