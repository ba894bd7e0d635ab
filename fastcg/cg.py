"""Real Clebsch-Gordan tables in e3nn's basis, stored sparse and cached."""

from __future__ import annotations

import functools

import torch

from .irreps import o3

_ZERO = 1e-12  # wigner_3j entries below this are rounding noise of exact zeros


@functools.cache
def wigner_3j(l1: int, l2: int, l3: int) -> torch.Tensor:
    """Dense float64 ``e3nn.o3.wigner_3j(l1, l2, l3)`` (Frobenius norm 1)."""
    return o3().wigner_3j(l1, l2, l3, dtype=torch.float64).contiguous()


@functools.cache
def sparse_cg(l1: int, l2: int, l3: int) -> tuple[tuple[int, int, int, float], ...]:
    """Nonzero entries ``(i, j, k, value)`` of ``wigner_3j(l1, l2, l3)``."""
    c = wigner_3j(l1, l2, l3)
    nz = (c.abs() > _ZERO).nonzero().tolist()
    return tuple((i, j, k, float(c[i, j, k])) for i, j, k in nz)
