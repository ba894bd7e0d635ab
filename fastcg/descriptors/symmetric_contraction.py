"""MACE's product basis (Batatia et al. 2022, eqs. 10-11) as a descriptor: coupling tensors and
the sparse tables the ``symmetric_contraction`` kernels read.

For node b of species e and channel c, with x[b, c, :] that channel's irreps side by side
(MACE's ``[num_nodes, num_channels, dim]`` layout),

    out[b, c, m] = sum_nu sum_{i_1..i_nu, k} U_nu[m, i_1..i_nu, k] w_nu[e, k, c]
                   * x[b, c, i_1] * ... * x[b, c, i_nu]

for each output irrep, U_nu being mace-torch's coupling tensors (``U_matrix_real``). The
descriptor stores U symmetrised over i_1..i_nu (x appears once per factor, so only sorted index
tuples matter) as sparse tables: the monomials (each a parent monomial times one variable), the
(output column, monomial) pairs, and per pair its (weight row, coefficient) entries.
"""

import functools
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..irreps import channel_irreps, o3
from .tensor_product import column_enum, tables_on

# Columns of the int64 tables, mirrored by csrc/core/symmetric_contraction.h's ScMonoCol,
# ScPairCol and ScEntryCol (tests/test_table_columns.py compares them): monomial = parent
# monomial (-1 for a single variable) times variable var; pair = output column out, monomial
# mono; entry = pair, weight row k. The out_cols table (start, dim) has no C++ enum.
SC_MONO_COLUMNS = ("parent", "var")
SC_PAIR_COLUMNS = ("out", "mono")
SC_ENTRY_COLUMNS = ("pair", "k")
ScMonoCol = column_enum("ScMonoCol", SC_MONO_COLUMNS)
ScPairCol = column_enum("ScPairCol", SC_PAIR_COLUMNS)
ScEntryCol = column_enum("ScEntryCol", SC_ENTRY_COLUMNS)
_ZERO = 1e-12  # symmetrised coefficients below this (relative to max |U|) are rounding residue


# Real annotations (this module has no `from __future__ import annotations`): TorchScript
# would resolve string ones in the scripted caller's module (pytorch #95858).
class SymmetricContractionTables(NamedTuple):
    """A symmetric contraction's packed tables and sizes
    (``SymmetricContractionDescriptor.tables(device)``): what ``symmetric_contraction`` takes.
    TorchScript accepts it, so ``fastcg.nn`` modules build one from their buffers in ``forward``.

    The tables are those of :meth:`SymmetricContractionDescriptor.tensors`; ``dim_in`` is one
    channel's input width and ``weight_numel`` the weight rows per species and channel.
    """

    monomials: Tensor
    pairs: Tensor
    entries: Tensor
    coeff: Tensor
    out_cols: Tensor
    dim_in: int
    weight_numel: int


@dataclass(frozen=True)
class SymmetricContractionDescriptor:
    """Sparse symmetric-contraction tables for one channel's irreps in and out.

    ``weight_numel`` rows of weights per species and channel: for each output irrep in order,
    ``num_params[o][nu - 1]`` rows for correlation order nu = 1..correlation[o].
    """

    irreps_in: str  # one channel's irreps, e.g. "0e+1o+2e+3o"
    irreps_out: str
    correlation: tuple[int, ...]  # per output irrep
    num_params: tuple[tuple[int, ...], ...]
    dim_in: int
    dim_out: int
    weight_numel: int
    _packed: tuple[Tensor, ...] = field(repr=False, compare=False)

    def weight_offset(self, i_out: int, nu: int) -> int:
        """First weight row of output irrep ``i_out`` at correlation order ``nu``."""
        rows = [k for ks in self.num_params for k in ks]
        return sum(rows[: sum(len(ks) for ks in self.num_params[:i_out]) + nu - 1])

    def tensors(
        self, device: torch.device | str | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(monomials int64 [M, 2], pairs int64 [P, 2], entries int64 [E, 2], coeff float64 [E],
        out_cols int64 [dim_out, 2]); see csrc/core/symmetric_contraction.h. On ``device`` when
        given (copied once per device)."""
        return tables_on(self, self._packed, device)  # type: ignore[return-value]

    def tables(self, device: torch.device | str | None = None) -> SymmetricContractionTables:
        """What the ``symmetric_contraction`` op takes: :meth:`tensors` (the same tensor objects
        on every call) with the op's sizes.

        >>> symmetric_contraction_descriptor("0e+1o", "0e", 2).tables().dim_in
        4
        """
        mono, pairs, entries, coeff, out_cols = self.tensors(device)
        return SymmetricContractionTables(mono, pairs, entries, coeff, out_cols, self.dim_in,
                                          self.weight_numel)  # fmt: skip


def _wigner_nj(irreps_list: list, filter_ir_mid: list | None, last: Any) -> list:
    """mace-torch's ``_wigner_nj`` (component normalisation, float64), keeping only ``last`` at
    the final level: the same coupling paths in the same order for that irrep."""
    if len(irreps_list) == 1:
        (irreps,) = irreps_list
        eye, out, i = torch.eye(irreps.dim, dtype=torch.float64), [], 0
        for mul, ir in irreps:
            for _ in range(mul):
                out.append((ir, eye[i : i + ir.dim]))
                i += ir.dim
        return out
    *left, right = irreps_list
    dims = [r.dim for r in left]
    out = []
    for ir_left, c_left in _wigner_nj(left, filter_ir_mid, None):
        i = 0
        for mul, ir in right:
            for ir_out in ir_left * ir:
                keep = ir_out == last if last is not None else True
                if not keep or (filter_ir_mid is not None and ir_out not in filter_ir_mid):
                    continue
                c = o3().wigner_3j(ir_out.l, ir_left.l, ir.l, dtype=torch.float64)
                c = torch.einsum("jk,ijl->ikl", c_left.flatten(1), c * ir_out.dim**0.5)
                c = c.reshape(ir_out.dim, *dims, ir.dim)
                for u in range(mul):
                    e = torch.zeros(ir_out.dim, *dims, right.dim, dtype=torch.float64)
                    e[..., i + u * ir.dim : i + (u + 1) * ir.dim] = c
                    out.append((ir_out, e))
            i += mul * ir.dim
    return sorted(out, key=lambda t: t[0])


@functools.cache
def _coupling(irreps_in: str, irrep_out: str, nu: int) -> Tensor:
    ir_in, ir_out = channel_irreps(irreps_in), o3().Irrep(irrep_out)
    filt = [o3().Irrep(i, 1 if i % 2 == 0 else -1) for i in range(12)] if nu == 4 else None
    if nu == 1:
        mats = [c for ir, c in _wigner_nj([ir_in], None, None) if ir == ir_out]
    else:
        mats = [c for _, c in _wigner_nj([ir_in] * nu, filt, ir_out)]
    if not mats:
        return torch.zeros(ir_out.dim, *[ir_in.dim] * nu, 1, dtype=torch.float64)
    return torch.stack([c.reshape(ir_out.dim, *[ir_in.dim] * nu) for c in mats], dim=-1)


def coupling_tensors(irreps_in: Any, irrep_out: Any, correlation: int) -> list[Tensor]:
    """mace-torch's ``U_matrix_real`` for nu = 1..correlation, each ``[2l+1, D, ..., D, K]``
    float64 (mace squeezes the leading axis when l = 0)."""
    key = str(channel_irreps(irreps_in))
    return [_coupling(key, str(o3().Irrep(irrep_out)), nu) for nu in range(1, correlation + 1)]


def _symmetrise(u: Tensor, nu: int, d_out: int, dim: int) -> tuple[Tensor, Tensor]:
    """Rows (m, i_1 <= .. <= i_nu, k) and summed coefficients of the nonzeros of U."""
    u = u.detach().to("cpu", torch.float64).reshape(d_out, *[dim] * nu, -1)
    nz = u.nonzero()
    vals = u[tuple(nz.T)]
    key = torch.cat([nz[:, :1], nz[:, 1 : 1 + nu].sort(dim=1).values, nz[:, -1:]], dim=1)
    if key.shape[0] == 0:
        return key, vals
    uniq, inv = torch.unique(key, dim=0, return_inverse=True)
    acc = torch.zeros(uniq.shape[0], dtype=torch.float64).index_add_(0, inv, vals)
    keep = acc.abs() > _ZERO * float(u.abs().max())
    return uniq[keep], acc[keep]


def descriptor_from_coupling(
    irreps_in: Any, irreps_out: Any, couplings: list[list[Tensor]]
) -> SymmetricContractionDescriptor:
    """Descriptor from the coupling tensors ``couplings[o][nu - 1]`` of each output irrep
    (any shape holding ``[2l+1, D, ..., D, K]`` values, e.g. mace's ``U_matrix_nu`` buffers)."""
    ir_in, ir_out = channel_irreps(irreps_in), channel_irreps(irreps_out)
    if len(couplings) != len(ir_out):
        raise ValueError(f"{len(couplings)} coupling lists for {len(ir_out)} output irreps")
    terms: dict[tuple[int, tuple[int, ...]], list[tuple[int, float]]] = {}
    num_params, w_off, col = [], 0, 0
    for (_, ir), us in zip(ir_out, couplings):
        ks = []
        for nu, u in enumerate(us, start=1):
            k = u.numel() // (ir.dim * ir_in.dim**nu)
            if k * ir.dim * ir_in.dim**nu != u.numel():
                raise ValueError(f"coupling tensor of {ir} at order {nu} has {u.numel()} values")
            rows, vals = _symmetrise(u, nu, ir.dim, ir_in.dim)
            for r, v in zip(rows.tolist(), vals.tolist()):
                terms.setdefault((col + r[0], tuple(r[1:-1])), []).append((w_off + r[-1], v))
            ks.append(k)
            w_off += k
        num_params.append(tuple(ks))
        col += ir.dim
    tables = _pack(terms, ir_out)
    return SymmetricContractionDescriptor(
        str(ir_in), str(ir_out), tuple(len(k) for k in num_params), tuple(num_params),
        ir_in.dim, ir_out.dim, w_off, tables,
    )  # fmt: skip


def _pack(terms: dict, ir_out: Any) -> tuple[Tensor, ...]:
    monos = {m[:i] for _, m in terms for i in range(1, len(m) + 1)}
    order = sorted(monos, key=lambda m: (len(m), m))  # parents before children
    index = {m: n for n, m in enumerate(order)}
    mono_rows = [(index[m[:-1]] if len(m) > 1 else -1, m[-1]) for m in order]
    pair_keys = sorted(terms, key=lambda jm: (jm[0], index[jm[1]]))
    pairs = [(j, index[m]) for j, m in pair_keys]
    entries = [(p, k) for p, jm in enumerate(pair_keys) for k, _ in terms[jm]]
    coeff = [v for jm in pair_keys for _, v in terms[jm]]
    cols, start = [], 0
    for _, ir in ir_out:
        cols += [(start, ir.dim)] * ir.dim
        start += ir.dim

    def table(rows: list, width: int) -> Tensor:
        return torch.tensor(rows, dtype=torch.int64).reshape(-1, width)

    return (table(mono_rows, len(SC_MONO_COLUMNS)), table(pairs, len(SC_PAIR_COLUMNS)),
            table(entries, len(SC_ENTRY_COLUMNS)), torch.tensor(coeff, dtype=torch.float64),
            table(cols, 2))  # fmt: skip


@functools.cache
def _descriptor(irreps_in: str, irreps_out: str, corr: tuple[int, ...]):
    ir_out = channel_irreps(irreps_out)
    us = [coupling_tensors(irreps_in, ir, c) for (_, ir), c in zip(ir_out, corr)]
    return descriptor_from_coupling(irreps_in, irreps_out, us)


def symmetric_contraction_descriptor(
    irreps_in: Any, irreps_out: Any, correlation: int | list[int] | tuple[int, ...]
) -> SymmetricContractionDescriptor:
    """Descriptor of mace-torch's ``SymmetricContraction(irreps_in, irreps_out, correlation)``.

    Multiplicities are ignored (every channel has the same irreps); ``correlation`` is one int
    or one per output irrep.

    >>> d = symmetric_contraction_descriptor("8x0e+8x1o", "8x0e", 2)
    >>> d.dim_in, d.dim_out, d.weight_numel
    (4, 1, 3)
    """
    ir_in, ir_out = channel_irreps(irreps_in), channel_irreps(irreps_out)
    corr = [correlation] * len(ir_out) if isinstance(correlation, int) else list(correlation)
    if len(corr) != len(ir_out) or any(int(c) < 1 for c in corr):
        raise ValueError(f"correlation must be >= 1 for each of {len(ir_out)} output irreps")
    return _descriptor(str(ir_in), str(ir_out), tuple(int(c) for c in corr))
