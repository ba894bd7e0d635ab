"""Triton scatter_sum: CSR segment sums for sorted indices (deterministic), atomics otherwise."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._indices import check_index
from .conv import scatter_rows
from .tensor_product import _pow2, acc_dtype, interpreting


@triton.jit
def _scatter_kernel(
    src, out, index, perm, seg, nrows, F,
    SEGMENT: tl.constexpr, PERM: tl.constexpr, BE: tl.constexpr, BF: tl.constexpr,
):  # fmt: skip
    """out[index[e], f] += src[e, f]; SEGMENT: program n sums rows seg[n]:seg[n+1] in order."""
    ACC = out.dtype.element_ty
    pid = tl.program_id(0)
    fs = tl.program_id(1) * BF + tl.arange(0, BF)
    fm = fs < F
    if SEGMENT:
        start = tl.load(seg + pid)
        end = tl.load(seg + pid + 1)
        acc = tl.zeros([BE, BF], dtype=ACC)
        for z0 in range(start, end, BE):
            zs = z0 + tl.arange(0, BE)
            zm = zs < end
            e = zs
            if PERM:
                e = tl.load(perm + zs, mask=zm, other=0)
            m = zm[:, None] & fm[None, :]
            val = tl.load(src + e.to(tl.int64)[:, None] * F + fs[None, :], mask=m, other=0.0)
            acc += val.to(ACC)
        tl.store(out + pid.to(tl.int64) * F + fs, tl.sum(acc, axis=0), mask=fm)
    else:
        zs = pid * BE + tl.arange(0, BE)
        zm = zs < nrows
        m = zm[:, None] & fm[None, :]
        row = tl.load(index + zs, mask=zm, other=0).to(tl.int64)
        val = tl.load(src + zs.to(tl.int64)[:, None] * F + fs[None, :], mask=m, other=0.0)
        tl.atomic_add(out + row[:, None] * F + fs[None, :], val.to(ACC), mask=m)


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """``fastcg_triton::scatter_sum`` of 2-D ``src`` [E, F] (1-D is treated as [E, 1])."""
    check_index(index, dim_size, "index")
    features = 1
    for size in src.shape[1:]:
        features *= size
    flat = src.reshape(src.shape[0], features).contiguous()
    nrows, F = flat.shape
    out = torch.zeros(dim_size, F, dtype=acc_dtype(src.dtype), device=src.device)
    if nrows > 0 and F > 0 and dim_size > 0:
        rows = scatter_rows(index, dim_size)
        segment = rows.seg is not None
        bf = min(_pow2(F), 128 if interpreting() else 64)
        be = 16 if segment else (64 if interpreting() else max(1, 2048 // bf))
        grid = (dim_size if segment else triton.cdiv(nrows, be), triton.cdiv(F, bf))
        dummy = index
        _scatter_kernel[grid](
            flat, out, index, rows.perm if rows.perm is not None else dummy,
            rows.seg if segment else dummy, nrows, F,
            SEGMENT=segment, PERM=rows.perm is not None, BE=be, BF=bf,
        )  # fmt: skip
    return out.to(src.dtype).reshape([dim_size] + list(src.shape[1:]))
