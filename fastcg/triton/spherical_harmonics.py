"""Triton spherical harmonics (e3nn's, l <= 8) with their first and second derivatives.

The recursion levels come from tools/gen_sh.py (_sh_generated.py; the same term lists as the C++
csrc/core/sh.h), and the kernels follow the C++ Tile (csrc/cpu/spherical_harmonics.cpp): one
program holds BZ vectors, each level Y_l a tuple of per-lane tensors, and walks the levels once,
keeping only Y_{l-1}, Y_l and three accumulators live:

- forward: Y_{l+1} = B_l(Y_l, u), stored as it comes;
- backward: v = sum_l vjp_l(Y_l, G_{l+1}) (G = grad_sh * scale), then J^T v;
- double backward, given gg (cotangent of the backward's output) and d = J gg: the jvp
  P_{l+1} = (l + 1) B_l(Y_l, d) is d grad_sh; and sum_m G_m H_m d, the directional derivative of
  the backward's vjp (linear in Y), is sum_l vjp_l(P_l, G_{l+1}): no Hessian, no transposed jvp.
  d vectors = J^T (sum_m G_m H_m d) + sum_i v_i (d2u_i/dr2) gg with normalize.

With ``normalize`` the polynomial's argument is u = r / |r|, J = du/dr = (I - u u^T) / |r|; a zero
vector has u = 0 and 1/|r| = 0 (finite values, zero derivatives), a NaN component makes every
component of u NaN. Output normalisations ("norm", "integral") are a per-column scale table.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._sh_generated import _poly, _vjp
from .tensor_product import acc_dtype, interpreting


@triton.jit
def _load_arg(v, zs, zm, NORMALIZE: tl.constexpr):
    """(x, y, z, inv): u = r / |r| and 1/|r| with normalize (0 and 0 for r = 0), else r and 1."""
    x = tl.load(v + zs * 3 + 0, mask=zm, other=0.0)
    y = tl.load(v + zs * 3 + 1, mask=zm, other=0.0)
    z = tl.load(v + zs * 3 + 2, mask=zm, other=0.0)
    if v.dtype.element_ty != tl.float64:
        x = x.to(tl.float32)
        y = y.to(tl.float32)
        z = z.to(tl.float32)
    inv = tl.full(x.shape, 1.0, x.dtype)
    if NORMALIZE:
        n2 = x * x + y * y + z * z
        # only n2 == 0 is masked: a NaN n2 must make x, y and z NaN (e3nn), not 0 * finite
        inv = tl.where(n2 == 0, 0.0, 1.0 / tl.sqrt(tl.where(n2 == 0, 1.0, n2)))
        x = x * inv
        y = y * inv
        z = z * inv
    return x, y, z, inv


@triton.jit
def _project(vx, vy, vz, x, y, z, inv, NORMALIZE: tl.constexpr):
    """J^T v, J = du/dr = (I - u u^T) / |r| (the identity without normalize)."""
    if NORMALIZE:
        vu = vx * x + vy * y + vz * z
        vx = (vx - vu * x) * inv
        vy = (vy - vu * y) * inv
        vz = (vz - vu * z) * inv
    return vx, vy, vz


@triton.jit
def _store_level(row, T, base: tl.constexpr, scale, mask):
    """row[base + m] = T[m] * scale[base + m]."""
    for m in tl.static_range(len(T)):
        tl.store(row + base + m, T[m] * tl.load(scale + base + m), mask=mask)


@triton.jit
def _load_level(row, base: tl.constexpr, N: tl.constexpr, scale, mask, like):
    """(row[base + m] * scale[base + m] for m < N), in like's dtype."""
    G = ()
    for m in tl.static_range(N):
        g = tl.load(row + base + m, mask=mask, other=0.0).to(like.dtype)
        G = G + (g * tl.load(scale + base + m),)
    return G


@triton.jit
def _sh_fwd_kernel(
    v, out, scale, n, K: tl.constexpr, LMAX: tl.constexpr, NORMALIZE: tl.constexpr,
    BZ: tl.constexpr,
):  # fmt: skip
    zs = (tl.program_id(0) * BZ + tl.arange(0, BZ)).to(tl.int64)
    zm = zs < n
    x, y, z, _ = _load_arg(v, zs, zm, NORMALIZE)
    row = out + zs * K
    Y = (tl.full(x.shape, 1.0, x.dtype),)
    _store_level(row, Y, 0, scale, zm)
    for l in tl.static_range(LMAX):
        Y = _poly(Y, x, y, z, l)
        _store_level(row, Y, (l + 1) * (l + 1), scale, zm)


@triton.jit
def _sh_bwd_kernel(
    g, v, dv, scale, n, K: tl.constexpr, LMAX: tl.constexpr, NORMALIZE: tl.constexpr,
    BZ: tl.constexpr,
):  # fmt: skip
    """dv = J^T sum_m G_m dY_m/du."""
    zs = (tl.program_id(0) * BZ + tl.arange(0, BZ)).to(tl.int64)
    zm = zs < n
    x, y, z, inv = _load_arg(v, zs, zm, NORMALIZE)
    row = g + zs * K
    vx = tl.zeros_like(x)
    vy = tl.zeros_like(x)
    vz = tl.zeros_like(x)
    Y = (tl.full(x.shape, 1.0, x.dtype),)
    for l in tl.static_range(LMAX):
        G = _load_level(row, (l + 1) * (l + 1), 2 * l + 3, scale, zm, x)
        vx, vy, vz = _vjp(Y, G, vx, vy, vz, l)
        if l + 1 < LMAX:
            Y = _poly(Y, x, y, z, l)
    vx, vy, vz = _project(vx, vy, vz, x, y, z, inv, NORMALIZE)
    tl.store(dv + zs * 3 + 0, vx, mask=zm)
    tl.store(dv + zs * 3 + 1, vy, mask=zm)
    tl.store(dv + zs * 3 + 2, vz, mask=zm)


@triton.jit
def _sh_dbl_kernel(
    gg, g, v, dg, dv, scale, n, K: tl.constexpr, LMAX: tl.constexpr,
    NORMALIZE: tl.constexpr, BZ: tl.constexpr,
):  # fmt: skip
    """dg = dY/du . d (d = J gg); dv = J^T sum_m G_m H_m d + the d2u term (normalize)."""
    zs = (tl.program_id(0) * BZ + tl.arange(0, BZ)).to(tl.int64)
    zm = zs < n
    x, y, z, inv = _load_arg(v, zs, zm, NORMALIZE)
    qx = tl.load(gg + zs * 3 + 0, mask=zm, other=0.0).to(x.dtype)
    qy = tl.load(gg + zs * 3 + 1, mask=zm, other=0.0).to(x.dtype)
    qz = tl.load(gg + zs * 3 + 2, mask=zm, other=0.0).to(x.dtype)
    dx, dy, dz = _project(qx, qy, qz, x, y, z, inv, NORMALIZE)  # J gg: J is symmetric
    row = g + zs * K
    dg_row = dg + zs * K
    vx = tl.zeros_like(x)  # sum_m G_m dY_m/du: the d2u term's gradient in u-space
    vy = tl.zeros_like(x)
    vz = tl.zeros_like(x)
    hx = tl.zeros_like(x)  # sum_m G_m H_m d
    hy = tl.zeros_like(x)
    hz = tl.zeros_like(x)
    Y = (tl.full(x.shape, 1.0, x.dtype),)
    P = (tl.zeros_like(x),)  # the jvp of level 0 (a constant)
    _store_level(dg_row, P, 0, scale, zm)
    for l in tl.static_range(LMAX):
        G = _load_level(row, (l + 1) * (l + 1), 2 * l + 3, scale, zm, x)
        vx, vy, vz = _vjp(Y, G, vx, vy, vz, l)
        if l > 0:
            hx, hy, hz = _vjp(P, G, hx, hy, hz, l)
        P = _poly(Y, (l + 1) * dx, (l + 1) * dy, (l + 1) * dz, l)
        _store_level(dg_row, P, (l + 1) * (l + 1), scale, zm)
        if l + 1 < LMAX:
            Y = _poly(Y, x, y, z, l)
    hx, hy, hz = _project(hx, hy, hz, x, y, z, inv, NORMALIZE)
    if NORMALIZE:
        # + sum_i v_i d2u_i/(dr dr) gg, d2u_i/(dr_a dr_b) = (3 u_i u_a u_b - d_ia u_b - d_ib u_a
        # - d_ab u_i) / |r|^2
        vu = vx * x + vy * y + vz * z
        qu = qx * x + qy * y + qz * z
        vq = vx * qx + vy * qy + vz * qz
        i2 = inv * inv
        hx += i2 * (3.0 * vu * qu * x - vq * x - vx * qu - qx * vu)
        hy += i2 * (3.0 * vu * qu * y - vq * y - vy * qu - qy * vu)
        hz += i2 * (3.0 * vu * qu * z - vq * z - vz * qu - qz * vu)
    tl.store(dv + zs * 3 + 0, hx, mask=zm)
    tl.store(dv + zs * 3 + 1, hy, mask=zm)
    tl.store(dv + zs * 3 + 2, hz, mask=zm)


@functools.lru_cache(maxsize=64)
def _scale(lmax: int, normalization: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The per-column scale of e3nn's normalisations, in the accumulation dtype."""
    scale = []
    for deg in range(lmax + 1):
        s = {"component": 1.0, "norm": 1.0 / math.sqrt(2 * deg + 1),
             "integral": 1.0 / math.sqrt(4 * math.pi)}[normalization]  # fmt: skip
        scale += [s] * (2 * deg + 1)
    return torch.tensor(scale, dtype=torch.float64).to(device=device, dtype=dtype)


def _block() -> int:
    return 128 if interpreting() else 64


def spherical_harmonics(vectors: Tensor, lmax: int, normalize: bool, normalization: str) -> Tensor:
    """``fastcg_triton::spherical_harmonics`` of vectors [N, 3] -> [N, (lmax + 1)^2]."""
    acc, n, k = acc_dtype(vectors.dtype), vectors.shape[0], (lmax + 1) ** 2
    scale = _scale(lmax, normalization, acc, vectors.device)
    v = vectors.contiguous().to(acc)
    out = torch.empty(n, k, dtype=acc, device=vectors.device)
    if n > 0:
        bz = _block()
        _sh_fwd_kernel[(triton.cdiv(n, bz),)](
            v, out, scale, n, K=k, LMAX=lmax, NORMALIZE=normalize, BZ=bz
        )
    return out.to(vectors.dtype)


def spherical_harmonics_backward(
    grad_sh: Tensor, vectors: Tensor, lmax: int, normalize: bool, normalization: str
) -> Tensor:
    """``fastcg_triton::spherical_harmonics_backward``: d vectors."""
    acc, n, k = acc_dtype(vectors.dtype), vectors.shape[0], (lmax + 1) ** 2
    scale = _scale(lmax, normalization, acc, vectors.device)
    v, g = vectors.contiguous().to(acc), grad_sh.contiguous().to(acc)
    dv = torch.empty(n, 3, dtype=acc, device=vectors.device)
    if n > 0:
        bz = _block()
        _sh_bwd_kernel[(triton.cdiv(n, bz),)](
            g, v, dv, scale, n, K=k, LMAX=lmax, NORMALIZE=normalize, BZ=bz
        )
    return dv.to(vectors.dtype)


def spherical_harmonics_double_backward(
    grad_grad_vectors: Tensor, grad_sh: Tensor, vectors: Tensor, lmax: int, normalize: bool,
    normalization: str,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``fastcg_triton::spherical_harmonics_double_backward``: (d grad_sh, d vectors)."""
    acc, n, k = acc_dtype(vectors.dtype), vectors.shape[0], (lmax + 1) ** 2
    scale = _scale(lmax, normalization, acc, vectors.device)
    v, g = vectors.contiguous().to(acc), grad_sh.contiguous().to(acc)
    gg = grad_grad_vectors.contiguous().to(acc)
    dg = torch.empty(n, k, dtype=acc, device=vectors.device)
    dv = torch.empty(n, 3, dtype=acc, device=vectors.device)
    if n > 0:
        bz = _block()
        _sh_dbl_kernel[(triton.cdiv(n, bz),)](
            gg, g, v, dg, dv, scale, n, K=k, LMAX=lmax, NORMALIZE=normalize, BZ=bz
        )
    return dg.to(grad_sh.dtype), dv.to(vectors.dtype)
