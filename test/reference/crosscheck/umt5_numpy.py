"""Independent NumPy implementation of the umT5 encoder forward (float64), in the shape of the
Hugging Face UMT5EncoderModel: every textLen row computed, padded keys masked with float32's
minimum, per-layer relative position bias, unscaled attention, gated GELU(tanh), final norm; then
Wan's cut to sum(mask) rows and zero padding. Compares with the TypeScript float64 reference
stored by umt5-dump.ts. Not part of `npm test` (see docs/text-encoder.md)."""
import json
import math
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        body = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        assert info["dtype"] == "F32", info["dtype"]
        a, b = info["data_offsets"]
        tensors[name] = np.frombuffer(body[a:b], dtype="<f4").reshape(info["shape"]).astype(np.float64)
    return tensors, meta


def bucket(rel, num_buckets, max_distance):
    # Bidirectional T5 buckets, the log branch on float32 values as torch evaluates it.
    half = num_buckets // 2
    out = (rel > 0).astype(np.int64) * half
    n = np.abs(rel)
    exact = half // 2
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(n.astype(np.float32) / np.float32(exact)) / np.float32(math.log(max_distance / exact))
        large = exact + (ratio * np.float32(half - exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    return out + np.where(n < exact, n, large)


def rms(x, w, eps):
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def encode(t, c, ids, mask):
    L = ids.shape[0]
    H, dk = c["heads"], c["dKv"]
    x = t["shared.weight"][ids]
    pos = np.arange(L)
    rel = pos[None, :] - pos[:, None]  # memory - query
    b = bucket(rel, c["relativeBuckets"], c["relativeMaxDistance"])
    key_mask = np.where(mask > 0, 0.0, float(np.finfo(np.float32).min))[None, None, :]
    for l in range(c["layers"]):
        p = f"encoder.block.{l}.layer"
        h = rms(x, t[f"{p}.0.layer_norm.weight"], c["eps"])
        q, k, v = (h @ t[f"{p}.0.SelfAttention.{n}.weight"].T for n in "qkv")
        q, k, v = (a.reshape(L, H, dk).transpose(1, 0, 2) for a in (q, k, v))
        bias = t[f"{p}.0.SelfAttention.relative_attention_bias.weight"][b].transpose(2, 0, 1)
        s = q @ k.transpose(0, 2, 1) + bias + key_mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(L, H * dk)
        x = x + ctx @ t[f"{p}.0.SelfAttention.o.weight"].T
        h = rms(x, t[f"{p}.1.layer_norm.weight"], c["eps"])
        g = gelu_new(h @ t[f"{p}.1.DenseReluDense.wi_0.weight"].T) * (h @ t[f"{p}.1.DenseReluDense.wi_1.weight"].T)
        x = x + g @ t[f"{p}.1.DenseReluDense.wo.weight"].T
    out = rms(x, t["encoder.final_layer_norm.weight"], c["eps"])
    out[int(mask.sum()):] = 0.0
    return out


def main():
    tensors, meta = read_safetensors(sys.argv[1])
    c = json.loads(meta["config"])
    ids = tensors["ids"].astype(np.int64)
    got = encode(tensors, c, ids, tensors["mask"])
    ref = tensors["reference"]
    err = np.abs(got - ref).max() / max(1e-6, np.abs(ref).max())
    print(f"{c['name']}: numpy vs TypeScript float64 reference: max rel error {err:.3e}")
    sys.exit(0 if err <= 1e-6 else 1)


if __name__ == "__main__":
    main()
