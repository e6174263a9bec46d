"""A minimal safetensors reader and writer (the format: 8-byte little-endian header length, a JSON
header of name -> {dtype, shape, data_offsets}, then the raw little-endian tensor bytes)."""
import json
import struct

import numpy as np
import torch

_NUMPY = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "I64": np.int64, "U8": np.uint8}


def _bf16_to_f32(raw: bytes) -> np.ndarray:
    u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32)
    return (u16 << 16).view(np.float32)


def read(path: str) -> "dict[str, torch.Tensor]":
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = data[base + a : base + b]
        dtype = info["dtype"]
        if dtype == "BF16":
            arr = _bf16_to_f32(raw)
        elif dtype in _NUMPY:
            arr = np.frombuffer(raw, dtype=np.dtype(_NUMPY[dtype]).newbyteorder("<"))
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        out[name] = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="), copy=True)).reshape(info["shape"])
    return out


def metadata(path: str) -> "dict[str, str]":
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return header.get("__metadata__", {})


def write(path: str, tensors: "dict[str, torch.Tensor]", dtype: str = "F32", meta: "dict[str, str] | None" = None) -> None:
    """Writes tensors in name order; floating tensors are stored as `dtype` (F32 or F16)."""
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.is_floating_point():
            arr = t.to(torch.float32).numpy().astype("<f4" if dtype == "F32" else "<f2")
            stored = dtype
        elif t.dtype == torch.int64:
            arr, stored = t.numpy().astype("<i8"), "I64"
        else:
            arr, stored = t.numpy().astype("<i4"), "I32"
        raw = arr.tobytes()
        header[name] = {"dtype": stored, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if meta:
        header["__metadata__"] = {k: str(v) for k, v in meta.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)
