"""What the tests, ``fastcg check`` and the e3nn twins share: the one tolerance table, the error
measure, ``default_dtype``, random rotations with their representation matrices, e3nn's
connection-mode rules for building instructions, and the case tables more than one of them use.

Imports only torch and :mod:`fastcg.irreps` (e3nn lazily), so any layer of fastcg may use it.

>>> r = random_rotation(parity=True, generator=torch.Generator().manual_seed(0))
>>> round(float(torch.linalg.det(r)), 12)
-1.0
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from .descriptors import mode_errors
from .irreps import irreps as to_irreps

# The one tolerance table: float64 to 1e-10, float32 to 1e-5. An error is measured relative to
# max(1, max |expected|) (see scaled_error), so sums of many terms are judged fairly.
TOLERANCE: dict[torch.dtype, float] = {torch.float64: 1e-10, torch.float32: 1e-5}


def tolerance(dtype: torch.dtype) -> float:
    """The table's tolerance of ``dtype`` (KeyError for a dtype the table does not judge)."""
    return TOLERANCE[dtype]


def scaled_error(actual: Tensor, expected: Tensor) -> float:
    """``max |actual - expected| / max(1, max |expected|)``: absolute for small values, relative
    for large ones; 0 for empty tensors."""
    if not expected.numel():
        return 0.0
    diff = (actual.detach() - expected.detach().to(actual.dtype)).abs().max()
    return float(diff) / max(1.0, float(expected.detach().abs().max()))


def assert_close(
    actual: Tensor, expected: Tensor, dtype: torch.dtype | None = None, *, tol: float | None = None
) -> None:
    """Assert equal shapes and values within ``tol`` (default: the table's for ``dtype``, else
    actual's dtype) as rtol, and ``tol * max(1, max |expected|)`` as atol."""
    t = tolerance(dtype or actual.dtype) if tol is None else tol
    expected = expected.detach().to(actual.dtype)
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual.detach(), expected, rtol=t, atol=t * scale, equal_nan=False)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Build under ``dtype``: e3nn computes its Wigner-3j constants in the default dtype, and a
    float32 build moved to float64 keeps float32-rounded constants."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def random_rotation(
    parity: bool = False, *, generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:  # fmt: skip
    """A uniformly random 3x3 rotation matrix (a normalised Gaussian quaternion), times -1 (an
    improper rotation, the inversion included) when ``parity``. No e3nn needed."""
    q = torch.randn(4, generator=generator, dtype=torch.float64)
    w, x, y, z = (q / q.norm()).tolist()
    r = torch.tensor(
        [[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
         [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
         [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]],
        dtype=torch.float64,
    )  # fmt: skip
    return (-r if parity else r).to(dtype)


def wigner_D(irreps: Any, rotation: Tensor) -> Tensor:
    """float64 representation matrix of ``irreps`` for a (possibly improper) rotation matrix:
    ``features @ wigner_D(irreps, r).T`` rotates mul_ir features as ``vectors @ r.T`` does."""
    with default_dtype(torch.float64):  # e3nn's J matrices are float32 under a float32 default
        return to_irreps(irreps).D_from_matrix(rotation.to(torch.float64))


def mode_allowed(mode: str, mul1: int, mul2: int, mul_out: int, has_weight: bool) -> bool:
    """Whether e3nn accepts a path of connection ``mode`` between these multiplicities."""
    return not mode_errors(mode, has_weight, mul1, mul2, mul_out)


def full_instructions(
    irreps_in1: Any, irreps_in2: Any, irreps_out: Any, modes: Iterable[str], weighted: bool = True
) -> list[tuple]:
    """Every selection-rule-allowed path ``(i1, i2, i_out, mode, weighted)``, with the first mode
    of ``modes`` that e3nn accepts; ValueError where there is none.

    >>> full_instructions("2x0e", "1x1o", "2x1o", ["uvu"])
    [(0, 0, 0, 'uvu', True)]
    """
    a, b, c = to_irreps(irreps_in1), to_irreps(irreps_in2), to_irreps(irreps_out)
    modes = list(modes)
    out = []
    for i1, (m1, r1) in enumerate(a):
        for i2, (m2, r2) in enumerate(b):
            for io, (mo, ro) in enumerate(c):
                if ro not in r1 * r2:
                    continue
                mode = next((m for m in modes if mode_allowed(m, m1, m2, mo, weighted)), None)
                if mode is not None:
                    out.append((i1, i2, io, mode, weighted))
    if not out:
        raise ValueError(f"no {modes} path from {a} x {b} to {c}")
    return out


# MACE product bases: (one channel's irreps in, irreps out, correlation (one or per output)).
SYMMETRIC_CONTRACTION_CASES: dict[str, tuple[str, str, int | tuple[int, ...]]] = {
    "l1-corr1": ("0e+1o", "0e+1o", 1),
    "l1-corr2": ("0e+1o", "0e+1o+1e", 2),
    "l2-corr3": ("0e+1o+2e", "0e+1o", 3),  # fastcg check's case
    "l3-corr3": ("0e+1o+2e+3o", "0e+1o", 3),  # MACE's default product basis
    "l1-corr4": ("0e+1o", "0e+1o", 4),
    "mixed-corr": ("0e+1o+2e", "0e+1o+2e", (3, 2, 1)),
}
