"""Triton conv: gather x[src], tensor product with the edge attributes, sum into dst, fused.

Runs on the tensor-product kernels (fastcg/triton/tensor_product.py) with row gathers and a
scattered output. Two output variants:

- deterministic: edges sorted by dst (checked here, or sorted here when
  ``torch.use_deterministic_algorithms(True)``) are split into CSR segments and one program sums
  one node's edges in a fixed order, then adds the node's row once;
- atomic: any edge order, ``atomic_add`` per edge into out[dst].

Per-edge messages are never materialised. The backward scatters into src, so it is atomic unless
deterministic algorithms are on (then edges are sorted by src through a permutation).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._indices import check_index
from .tensor_product import Rows, acc_dtype, deterministic, launch_product, plan, weight_grad


def _segments(keys: Tensor, num_nodes: int) -> Tensor:
    """CSR offsets of sorted ``keys``: node n owns rows seg[n]:seg[n+1]."""
    bounds = torch.arange(num_nodes + 1, device=keys.device, dtype=keys.dtype)
    return torch.searchsorted(keys, bounds).contiguous()


def scatter_rows(index: Tensor, num_nodes: int, always_sorted: bool = False) -> Rows:
    """Rows of a product scattered into ``index``: CSR segments when sorted, atomics otherwise."""
    n = index.numel()
    is_sorted = n < 2 or bool((index[1:] >= index[:-1]).all())
    if is_sorted:
        return Rows(scatter=index, seg=_segments(index, num_nodes))
    if deterministic() or always_sorted:
        sorted_index, perm = torch.sort(index, stable=True)
        return Rows(scatter=index, perm=perm.contiguous(), seg=_segments(sorted_index, num_nodes))
    return Rows(scatter=index)


def conv(
    x: Tensor, edge_attr: Tensor, weights: Tensor, src: Tensor, dst: Tensor, num_nodes: int,
    paths: Tensor, cg_index: Tensor, cg_value: Tensor, dim_out: int,
) -> Tensor:  # fmt: skip
    """``fastcg_triton::conv``: zeros(num_nodes, dim_out).index_add_(0, dst, TP(x[src], ...))."""
    check_index(src, x.shape[0], "src")
    check_index(dst, num_nodes, "dst")
    pl = plan(paths, cg_index, cg_value, x.dtype, x.device)
    x, y, w = x.contiguous(), edge_attr.contiguous(), weights.contiguous()
    out = torch.zeros(num_nodes, dim_out, dtype=acc_dtype(x.dtype), device=x.device)
    rows = scatter_rows(dst, num_nodes)
    rows.gather1 = src
    launch_product(pl.fwd, x, y, w, out, y.shape[0], rows)
    return out.to(x.dtype)


def _rows_gathered(rows: Rows, gather1: Tensor) -> Rows:
    rows.gather1 = gather1
    return rows


def conv_backward(
    grad_out: Tensor, x: Tensor, edge_attr: Tensor, weights: Tensor, src: Tensor, dst: Tensor,
    paths: Tensor, cg_index: Tensor, cg_value: Tensor, output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """``fastcg_triton::conv_backward``: (d x, d edge_attr, d weights), masked ones empty."""
    check_index(src, x.shape[0], "src")
    check_index(dst, grad_out.shape[0], "dst")
    pl = plan(paths, cg_index, cg_value, x.dtype, x.device)
    g, x, y, w = (t.contiguous() for t in (grad_out, x, edge_attr, weights))
    acc, num_edges = acc_dtype(x.dtype), y.shape[0]
    dx = dy = dw = None
    if output_mask[0]:
        # d x[src] = T_x(g[dst], y, w): a conv with src and dst swapped
        d = torch.zeros(x.shape, dtype=acc, device=x.device)
        rows = _rows_gathered(scatter_rows(src, x.shape[0]), dst)
        launch_product(pl.dx1, g, y, w, d, num_edges, rows)
        dx = d.to(x.dtype)
    if output_mask[1]:
        d = torch.zeros(y.shape, dtype=acc, device=y.device)
        launch_product(pl.dx2, x, g, w, d, num_edges, Rows(gather1=src, gather2=dst))
        dy = d.to(y.dtype)
    if output_mask[2]:
        dw = weight_grad(pl.fwd, x, y, g, w, num_edges, gather1=src, gatherg=dst)
    empty = x.new_empty(0)
    return (
        dx if dx is not None else empty,
        dy if dy is not None else empty,
        dw if dw is not None else empty,
    )
