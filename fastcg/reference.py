"""Readable pure-PyTorch oracle of every fastcg op; runs on any device, differentiable by torch.

Each function reads the same descriptor tables the kernels read (the NamedTuple of
``descriptor.tables()``, or the descriptor itself), so the oracle also checks the tables. Tests
compare these with e3nn and the kernels with these.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .cg import sparse_cg
from .descriptors import (
    MODE_RULES,
    MODES,
    LinCol,
    LinearDescriptor,
    LinearTables,
    PathCol,
    ScEntryCol,
    ScMonoCol,
    ScPairCol,
    SymmetricContractionDescriptor,
    SymmetricContractionTables,
    TPDescriptor,
    TPTables,
)
from .irreps import to_channels

# out block from x1 [B,u,i], x2 [B,v,j], C [i,j,k], per-sample weights (uvu: zui,zvj,ijk,zuv->zuk)
_EINSUM = {m: rule.einsum for m, rule in MODE_RULES.items()}


def sh_scale(normalization: str, l: int) -> float:
    """e3nn's output scale of degree l relative to "component" normalisation."""
    if normalization == "norm":
        return 1.0 / math.sqrt(2 * l + 1)
    if normalization == "integral":
        return 1.0 / math.sqrt(4 * math.pi)
    return 1.0


def unit_vectors(vectors: Tensor) -> Tensor:
    """``vectors / |vectors|``: zero vectors give zero with zero gradients (the squared norm is
    masked before the square root, whose gradient at 0 is NaN); NaN or inf give NaN, as e3nn."""
    sq = vectors.pow(2).sum(dim=-1, keepdim=True)
    zero = sq == 0  # not ``sq > 0``: that would turn a NaN norm into a zero vector
    norm = torch.where(zero, torch.ones_like(sq), sq).sqrt()
    return torch.where(zero, torch.zeros_like(vectors), vectors / norm)


def _constant_result(fn):
    """``torch.compiler.assume_constant_result``'s marker, set without importing torch._dynamo:
    that import pulls in sympy, 0.16 GB resident at ``import fastcg`` (measured), which a
    deployed model's process never needs. tests/test_sh_e3nn_api.py compiles l > 8 in one graph,
    which fails if the marker stops working."""
    fn._dynamo_marked_constant = True
    return fn


# torch.compile runs this eagerly and keeps the result: e3nn's wigner_3j would break the graph
@_constant_result
def sh_recursion_terms(l: int) -> tuple[tuple[int, int, int, float], ...]:
    """The terms (i, j, m, c) of Y_{l+1}[m] = sum c Y_l[i] r_j (see spherical_harmonics)."""
    s = (2 * l + 3) / math.sqrt(l + 1)
    return tuple((i, j, m, s * c) for i, j, m, c in sparse_cg(l, 1, l + 1))


def spherical_harmonics(
    vectors: Tensor, lmax: int, normalize: bool = True, normalization: str = "integral"
) -> Tensor:
    """e3nn's spherical harmonics l = 0..lmax, any lmax, by e3nn's own recursion.

    Y_0 = 1 and Y_{l+1}[m] = s_l sum_ij C[i, j, m] Y_l[i] r_j with C = wigner_3j(l, 1, l + 1) and
    s_l = (2l + 3) / sqrt(l + 1) are e3nn's "component" harmonics (its generator builds its
    polynomials this way); e3nn's own polynomials are not called, so a test run that swaps
    ``e3nn.o3.spherical_harmonics`` for fastcg's still compares with an independent oracle.
    """
    r = unit_vectors(vectors) if normalize else vectors
    y = [torch.ones_like(r[..., :1])]  # 1 even for a NaN vector, as e3nn's ones_like(x)
    for l in range(lmax):
        cols = [torch.zeros_like(r[..., 0]) for _ in range(2 * l + 3)]
        for i, j, m, c in sh_recursion_terms(l):  # sparse: a NaN reaches only its own terms
            cols[m] = cols[m] + c * y[l][..., i] * r[..., j]
        y.append(torch.stack(cols, dim=-1))
    return torch.cat([block * sh_scale(normalization, l) for l, block in enumerate(y)], dim=-1)


def _dense_cg(row: list[int], cg_index: Tensor, cg_value: Tensor, like: Tensor) -> Tensor:
    l1, l2, l3 = row[PathCol.l1], row[PathCol.l2], row[PathCol.l3]
    begin, end = row[PathCol.cg_begin], row[PathCol.cg_end]
    c = torch.zeros(2 * l1 + 1, 2 * l2 + 1, 2 * l3 + 1, dtype=like.dtype, device=like.device)
    idx = cg_index[begin:end].to(like.device)
    c[idx[:, 0], idx[:, 1], idx[:, 2]] = cg_value[begin:end].to(like)
    return c


def _path_weight(row: list[int], weights: Tensor, batch: int, like: Tensor) -> Tensor:
    mode, w_off = MODES[row[PathCol.mode]], row[PathCol.w_off]
    m1, m2, mo = row[PathCol.mul1], row[PathCol.mul2], row[PathCol.mul_out]
    shape = MODE_RULES[mode].weight_shape(m1, m2, mo)
    if w_off < 0:
        return torch.ones((batch, *shape), dtype=like.dtype, device=like.device)
    numel = int(torch.Size(shape).numel())
    w = weights[..., w_off : w_off + numel]
    return w.reshape(-1, *shape).expand(batch, *shape)


def _tensor_product_rows(x1: Tensor, x2: Tensor, weights: Tensor, tables: TPTables) -> Tensor:
    """TP of 2-D x1 [B, dim1], x2 [B, dim2]; weights [numel] (shared) or [B, numel]."""
    batch = x1.shape[0]
    out = x1.new_zeros(batch, tables.dim_out)
    for row in tables.paths.tolist():
        l1, l2, l3 = row[PathCol.l1], row[PathCol.l2], row[PathCol.l3]
        m1, m2, mo = row[PathCol.mul1], row[PathCol.mul2], row[PathCol.mul_out]
        o1, o2, oo = row[PathCol.off1], row[PathCol.off2], row[PathCol.off_out]
        a = x1[:, o1 : o1 + m1 * (2 * l1 + 1)].reshape(batch, m1, 2 * l1 + 1)
        b = x2[:, o2 : o2 + m2 * (2 * l2 + 1)].reshape(batch, m2, 2 * l2 + 1)
        c = _dense_cg(row, tables.cg_index, tables.cg_value, x1)
        w = _path_weight(row, weights, batch, x1)
        block = torch.einsum(_EINSUM[MODES[row[PathCol.mode]]], a, b, c, w).reshape(
            batch, mo * (2 * l3 + 1)
        )
        out[:, oo : oo + mo * (2 * l3 + 1)] += block
    return out


def _weights_or_empty(weights: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(0) if weights is None else weights


def _rows(t: Tensor, batch: torch.Size) -> Tensor:
    """``t`` broadcast to ``batch`` and flattened to ``[batch.numel(), t.shape[-1]]`` (explicit
    rows: a zero-width ``t`` has none to infer)."""
    return t.expand(*batch, t.shape[-1]).reshape(batch.numel(), t.shape[-1])


def tensor_product(
    x1: Tensor, x2: Tensor, weights: Tensor | None, tables: TPTables | TPDescriptor
) -> Tensor:
    """e3nn ``TensorProduct`` semantics: broadcast batch dims, shared or per-sample weights."""
    t = tables.tables() if isinstance(tables, TPDescriptor) else tables
    w = _weights_or_empty(weights, x1)
    shared = w.dim() == 1
    batch = torch.broadcast_shapes(x1.shape[:-1], x2.shape[:-1], () if shared else w.shape[:-1])
    out = _tensor_product_rows(
        _rows(x1, batch), _rows(x2, batch), w if shared else _rows(w, batch), t
    )
    return out.reshape(*batch, t.dim_out)


def conv(
    x: Tensor, edge_attr: Tensor, weights: Tensor | None, src: Tensor, dst: Tensor,
    num_nodes: int, tables: TPTables | TPDescriptor,
) -> Tensor:  # fmt: skip
    """``zeros(num_nodes, dim_out).index_add_(0, dst, TP(x[src], edge_attr, weights))``."""
    msg = tensor_product(x[src.long()], edge_attr, weights, tables)
    return msg.new_zeros(num_nodes, msg.shape[-1]).index_add(0, dst.long(), msg)


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """``zeros(dim_size, ...).index_add_(0, index, src)``."""
    return src.new_zeros(dim_size, *src.shape[1:]).index_add(0, index.long(), src)


def linear(
    x: Tensor, weights: Tensor, tables: LinearTables | LinearDescriptor,
    species: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """``e3nn.o3.Linear(irreps_in, irreps_out)(x)`` with these weights (no biases); with
    ``species`` ([batch] integers), row b of x uses weight row ``species[b]``."""
    t = tables.tables() if isinstance(tables, LinearDescriptor) else tables
    flat = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
    out = flat.new_zeros(flat.shape[0], t.dim_out)
    w_all = weights if species is None else weights[species.long()]
    for row, coeff in zip(t.paths.tolist(), t.path_coeff.tolist()):
        mi, mo, d = row[LinCol.mul_in], row[LinCol.mul_out], row[LinCol.ir_dim]
        oi, oo, w_off = row[LinCol.off_in], row[LinCol.off_out], row[LinCol.w_off]
        xb = flat[:, oi : oi + mi * d].reshape(-1, mi, d)
        w = w_all[..., w_off : w_off + mi * mo]
        if species is None:
            yb = torch.einsum("zui,uw->zwi", xb, w.reshape(mi, mo))
        else:
            yb = torch.einsum("zui,zuw->zwi", xb, w.reshape(-1, mi, mo))
        out[:, oo : oo + mo * d] += coeff * yb.reshape(flat.shape[0], mo * d)
    return out.reshape(*x.shape[:-1], t.dim_out)


def symmetric_contraction(
    x: Tensor, species: Tensor, weights: Tensor,
    tables: SymmetricContractionTables | SymmetricContractionDescriptor,
) -> Tensor:  # fmt: skip
    """MACE's product basis (``fastcg.symmetric_contraction``) of x [N, C, D] (or mul_ir
    [N, C * D] with a descriptor) and weights [S, K, C]; [N, C * dim_out] in mul_ir.

    out[b, c, j] = sum_p A[species[b], p, c] * mono[b, c, n_p] over the pairs (j, n_p), with
    A[e, p, c] = sum over p's entries (k, coeff) of coeff * weights[e, k, c].
    """
    if isinstance(tables, SymmetricContractionDescriptor):
        if x.dim() == 2:
            x = to_channels(x, tables.irreps_in, weights.shape[2])
        tables = tables.tables()
    n, c = x.shape[0], x.shape[1]
    vals: list[Tensor] = []
    for row in tables.monomials.tolist():
        parent, var = row[ScMonoCol.parent], row[ScMonoCol.var]
        xv = x[:, :, var]
        vals.append(xv if parent < 0 else vals[parent] * xv)
    mono = torch.stack(vals, dim=1) if vals else x.new_zeros(n, 0, c)  # [N, M, C]
    pairs, entries = tables.pairs.long().to(x.device), tables.entries.long().to(x.device)
    scaled = tables.coeff.to(weights)[None, :, None] * weights[:, entries[:, ScEntryCol.k], :]
    a = weights.new_zeros(weights.shape[0], pairs.shape[0], c).index_add(
        1, entries[:, ScEntryCol.pair], scaled
    )
    terms = a[species.long()] * mono[:, pairs[:, ScPairCol.mono], :]  # [N, P, C]
    out_cols = tables.out_cols
    acc = x.new_zeros(n, out_cols.shape[0], c).index_add(1, pairs[:, ScPairCol.out], terms)
    blocks = [acc[:, s : s + d, :].transpose(1, 2).reshape(n, c * d)
              for j, (s, d) in enumerate(out_cols.tolist()) if s == j]  # fmt: skip
    return torch.cat(blocks, dim=1) if blocks else x.new_zeros(n, 0)


def symmetric_contraction_dense(
    x: Tensor, species: Tensor, weights: Tensor, couplings: list[list[Tensor]],
    offsets: list[list[int]],
) -> Tensor:  # fmt: skip
    """MACE's product basis from its dense coupling tensors, independent of the sparse tables:
    ``out[n, c, m] = sum_nu sum_k W[s_n, off + k, c] sum_j U_nu[m, j_1..j_nu, k] x[n, c, j_1]..``.

    ``couplings[o][nu - 1]`` is ``U`` ``[2l+1, D, .., D, K]`` of output irrep o,
    ``offsets[o][nu - 1]`` its first weight row; returns ``[N, C * dim_out]`` (mul_ir). U is
    contracted with each species' weights first, then with x one index at a time, node by
    species group (memory ``O(N C (2l+1) D^(nu-1))``).
    """
    n, c = x.shape[0], x.shape[1]
    outs = []
    for u_o, off_o in zip(couplings, offsets):
        out = x.new_zeros(n, c, u_o[0].shape[0])
        for u, off in zip(u_o, off_o):
            nu = u.dim() - 2
            w = weights[:, off : off + u.shape[-1]]
            uw = torch.einsum("m...k,skc->scm...", u.to(x.dtype), w)
            for s in range(weights.shape[0]):
                rows = (species == s).nonzero().flatten()
                if rows.numel() == 0:
                    continue
                xs = x.index_select(0, rows)
                t = torch.einsum("ncj,cm...j->ncm...", xs, uw[s])
                for _ in range(nu - 1):
                    t = torch.einsum("ncj,ncm...j->ncm...", xs, t)
                out = out.index_add(0, rows, t)
        outs.append(out.flatten(1))
    return torch.cat(outs, dim=1)
