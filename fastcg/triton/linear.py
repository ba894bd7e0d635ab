"""Triton linear (e3nn ``o3.Linear``): one launch per path, shared or per-species weights.

A path maps block (mul_in, d) of x to block (mul_out, d) of the output with a [mul_in, mul_out]
weight: ``out[z, w, i] += coeff * sum_u x[z, u, i] W[s(z), u, w]``. The input gradient is the
same kernel with the weight transposed (strides swapped). The weight gradient is a reduction over
rows; one program owns a [BU, BW] tile of one species' weights and walks that species' rows in a
fixed order (rows sorted by species through a permutation), so it needs no atomics and is
deterministic.

The paths and coefficients of a descriptor are read once per table tensors (``PLANS``, see
``fastcg.triton.tensor_product.PlanCache``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..descriptors import LinCol
from ._indices import check_index
from .tensor_product import PlanCache, _pow2, acc_dtype, interpreting, rows_of


@triton.jit
def _linear_kernel(
    x, w, coeff, out, species, nrows, sx, so, numel, off_in, off_out, w_off, mul_in, mul_out,
    su, sw, P, N: tl.constexpr, D: tl.constexpr, SPECIES: tl.constexpr, BZ: tl.constexpr,
    BC: tl.constexpr,
):  # fmt: skip
    """out[z, c, i] += coeff[P] * sum_u x[z, u, i] * w[s(z), u * su + c * sw]."""
    ACC = coeff.dtype.element_ty
    zs = tl.program_id(0) * BZ + tl.arange(0, BZ)
    zm = zs < nrows
    cs = tl.program_id(1) * BC + tl.arange(0, BC)
    cm = cs < mul_out
    ks = tl.arange(0, D)
    km = ks < N
    m2 = zm[:, None] & cm[None, :]
    w_row = w + w_off
    if SPECIES:
        s = tl.load(species + zs, mask=zm, other=0).to(tl.int64)
        w_row = w_row + s * numel
    x_row = x + zs.to(tl.int64) * sx + off_in
    acc = tl.zeros([BZ, BC, D], dtype=ACC)
    for u in range(mul_in):
        xv = tl.load(x_row[:, None] + u * N + ks[None, :], mask=zm[:, None] & km[None, :], other=0)
        if SPECIES:
            wv = tl.load(w_row[:, None] + u * su + cs[None, :] * sw, mask=m2, other=0.0)
        else:
            wv = tl.load(w_row + u * su + cs * sw, mask=cm, other=0.0)[None, :]
        acc += wv.to(ACC)[:, :, None] * xv.to(ACC)[:, None, :]
    acc = acc * tl.load(coeff + P)
    ptr = out + zs.to(tl.int64)[:, None, None] * so + off_out + cs[None, :, None] * N
    ptr = ptr + ks[None, None, :]
    mask = m2[:, :, None] & km[None, None, :]
    tl.store(ptr, tl.load(ptr, mask=mask, other=0.0) + acc, mask=mask)


@triton.jit
def _linear_wgrad_kernel(
    x, g, coeff, dw, perm, seg, sx, sg, numel, off_in, off_out, w_off, mul_in, mul_out, P,
    N: tl.constexpr, BZ: tl.constexpr, BU: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """dw[s, u, c] = coeff[P] * sum over rows of species s of sum_i x[z, u, i] g[z, c, i]."""
    ACC = coeff.dtype.element_ty
    sp = tl.program_id(0)
    us = tl.program_id(1) * BU + tl.arange(0, BU)
    um = us < mul_in
    cs = tl.program_id(2) * BC + tl.arange(0, BC)
    cm = cs < mul_out
    start = tl.load(seg + sp)
    end = tl.load(seg + sp + 1)
    acc = tl.zeros([BU, BC], dtype=ACC)
    for z0 in range(start, end, BZ):
        zs = z0 + tl.arange(0, BZ)
        zm = zs < end
        e = tl.load(perm + zs, mask=zm, other=0).to(tl.int64)
        for i in tl.static_range(N):
            xv = tl.load(x + e[:, None] * sx + off_in + us[None, :] * N + i,
                         mask=zm[:, None] & um[None, :], other=0.0).to(ACC)  # fmt: skip
            gv = tl.load(g + e[:, None] * sg + off_out + cs[None, :] * N + i,
                         mask=zm[:, None] & cm[None, :], other=0.0).to(ACC)  # fmt: skip
            acc += tl.sum(xv[:, :, None] * gv[:, None, :], axis=0)
    acc = acc * tl.load(coeff + P)
    ptr = dw + sp.to(tl.int64) * numel + w_off + us[:, None] * mul_out + cs[None, :]
    tl.store(ptr, acc, mask=um[:, None] & cm[None, :])


@dataclass(frozen=True)
class LinearPath:
    mul_in: int
    mul_out: int
    d: int
    off_in: int
    off_out: int
    w_off: int


LinearPlan = tuple[tuple[LinearPath, ...], Tensor]  # paths, coefficients [P] on the device


@functools.lru_cache(maxsize=256)
def _plan_cached(rows: tuple, coeff: tuple, dtype, device) -> LinearPlan:
    paths = tuple(
        LinearPath(r[LinCol.mul_in], r[LinCol.mul_out], r[LinCol.ir_dim], r[LinCol.off_in],
                   r[LinCol.off_out], r[LinCol.w_off])
        for r in rows
    )  # fmt: skip
    return paths, torch.tensor(coeff, dtype=torch.float64).to(device=device, dtype=dtype)


def _read_plan(tables: tuple[Tensor, ...], extra: tuple) -> LinearPlan:
    paths, path_coeff = tables
    coeff = tuple(path_coeff.cpu().to(torch.float64).tolist())
    dtype, device = extra
    return _plan_cached(rows_of(paths), coeff, dtype, torch.device(device))


PLANS: PlanCache[LinearPlan] = PlanCache(_read_plan)


def _plan(paths: Tensor, path_coeff: Tensor, dtype, device) -> LinearPlan:
    """Launch plan of a descriptor's tables for inputs of ``dtype`` on ``device`` (``PLANS``)."""
    return PLANS.get((paths, path_coeff), (acc_dtype(dtype), device))


def _blocks(mul_out: int, d: int) -> tuple[int, int]:
    if interpreting():
        return 64, min(_pow2(mul_out), 64)
    bc = min(_pow2(mul_out), 32)
    bz = max(1, min(64, 2048 // (bc * _pow2(d))))
    return 1 << (bz.bit_length() - 1), bc


def _apply(
    paths, coeff: Tensor, x: Tensor, w: Tensor, species: Tensor | None, out: Tensor,
    transpose: bool, numel: int,
) -> None:  # fmt: skip
    nrows = x.shape[0]
    for k, p in enumerate(paths):
        mi, mo, oi, oo = p.mul_in, p.mul_out, p.off_in, p.off_out
        su, sw = mo, 1
        if transpose:  # d x: map the output block back to the input block with W^T
            mi, mo, oi, oo, su, sw = mo, mi, oo, oi, 1, mo
        bz, bc = _blocks(mo, p.d)
        grid = (triton.cdiv(nrows, bz), triton.cdiv(mo, bc))
        _linear_kernel[grid](
            x, w, coeff, out, species if species is not None else x, nrows, x.shape[1],
            out.shape[1], numel, oi, oo, p.w_off, mi, mo, su, sw, k, N=p.d, D=_pow2(p.d),
            SPECIES=species is not None, BZ=bz, BC=bc,
        )  # fmt: skip


def linear(
    x: Tensor, weights: Tensor, species: Tensor | None, paths: Tensor, path_coeff: Tensor,
    dim_out: int,
) -> Tensor:  # fmt: skip
    """``fastcg_triton::linear`` of 2-D x [B, dim_in]."""
    if species is not None:
        check_index(species, weights.shape[0], "species")
    lp, coeff = _plan(paths, path_coeff, x.dtype, x.device)
    x, w = x.contiguous(), weights.contiguous()
    out = torch.zeros(x.shape[0], dim_out, dtype=acc_dtype(x.dtype), device=x.device)
    if x.shape[0] > 0:
        _apply(lp, coeff, x, w, species, out, False, w.shape[-1])
    return out.to(x.dtype)


def _weight_grad(lp, coeff: Tensor, x: Tensor, g: Tensor, w: Tensor, species) -> Tensor:
    nrows = x.shape[0]
    dw = torch.zeros(w.shape, dtype=coeff.dtype, device=w.device)
    if nrows == 0:
        return dw.to(w.dtype)
    if species is None:
        perm = torch.arange(nrows, device=x.device)
        # [0, nrows] without a host-to-device copy (torch.tensor would make one every call)
        seg = torch.arange(0, nrows + 1, nrows, device=x.device)
    else:
        keys, perm = torch.sort(species, stable=True)
        bounds = torch.arange(w.shape[0] + 1, device=x.device, dtype=keys.dtype)
        seg = torch.searchsorted(keys, bounds)
    nseg = 1 if species is None else w.shape[0]
    for k, p in enumerate(lp):
        bu, bc = min(_pow2(p.mul_in), 16), min(_pow2(p.mul_out), 16)
        bz = 64 if interpreting() else 8
        grid = (nseg, triton.cdiv(p.mul_in, bu), triton.cdiv(p.mul_out, bc))
        _linear_wgrad_kernel[grid](
            x, g, coeff, dw, perm.contiguous(), seg.contiguous(), x.shape[1], g.shape[1],
            w.shape[-1], p.off_in, p.off_out, p.w_off, p.mul_in, p.mul_out, k, N=p.d,
            BZ=bz, BU=bu, BC=bc,
        )  # fmt: skip
    return dw.to(w.dtype)


def linear_backward(
    grad_out: Tensor, x: Tensor, weights: Tensor, species: Tensor | None, paths: Tensor,
    path_coeff: Tensor, output_mask: list[bool],
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``fastcg_triton::linear_backward``: (d x, d weights), masked ones empty."""
    if species is not None:
        check_index(species, weights.shape[0], "species")
    lp, coeff = _plan(paths, path_coeff, x.dtype, x.device)
    g, x, w = grad_out.contiguous(), x.contiguous(), weights.contiguous()
    dx = x.new_empty(0)
    if output_mask[0]:
        d = torch.zeros(x.shape, dtype=coeff.dtype, device=x.device)
        if x.shape[0] > 0:
            _apply(lp, coeff, g, w, species, d, True, w.shape[-1])
        dx = d.to(x.dtype)
    dw = _weight_grad(lp, coeff, x, g, w, species) if output_mask[1] else w.new_empty(0)
    return dx, dw
