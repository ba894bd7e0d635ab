"""Thin helpers over ``e3nn.o3.Irreps`` (accept strings or Irreps).

e3nn is imported lazily, and with the flag e3nn 0.4.4 needs to load its constants on
torch >= 2.6, so users never have to set ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` themselves.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

_O3: ModuleType | None = None  # a plain global, so torch.compile reads it without tracing imports


def _import_o3() -> ModuleType:
    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    old = os.environ.get(key)
    os.environ[key] = "1"  # e3nn 0.4.4 torch.load()s a pickled constants file at import
    try:
        with warnings.catch_warnings():  # torch warns about the flag; it is ours, not the user's
            warnings.simplefilter("ignore")
            from e3nn import o3 as module
    finally:
        if old is None:
            del os.environ[key]
        else:
            os.environ[key] = old
    return module


def o3() -> ModuleType:
    """Return ``e3nn.o3``, importing it so that e3nn 0.4.4 works on torch >= 2.6."""
    global _O3
    if _O3 is None:
        _O3 = _import_o3()
    return _O3


def irreps(value: Any):
    """``e3nn.o3.Irreps(value)``; accepts a string, an Irreps or a list of (mul, ir)."""
    return o3().Irreps(value)


def offsets(value: Any) -> list[int]:
    """Start of each (mul, ir) block in the flattened ``mul_ir`` layout."""
    out, start = [], 0
    for mul, ir in irreps(value):
        out.append(start)
        start += mul * ir.dim
    return out


def channel_irreps(value: Any) -> Any:
    """One channel's irreps: ``128x0e+128x1o`` -> ``1x0e+1x1o`` (as mace's coupling irreps)."""
    return o3().Irreps([ir for _, ir in irreps(value)])


def to_channels(x: Tensor, irreps_in: Any, num_channels: int) -> Tensor:
    """mul_ir ``[N, C * D]`` features as MACE's ``[N, C, D]`` (each channel's irreps together)."""
    blocks, start = [], 0
    for _, ir in channel_irreps(irreps_in):
        size = num_channels * ir.dim
        blocks.append(x[:, start : start + size].reshape(-1, num_channels, ir.dim))
        start += size
    if start != x.shape[-1]:
        raise ValueError(f"x must have {start} features, got {x.shape[-1]}")
    return torch.cat(blocks, dim=-1)
