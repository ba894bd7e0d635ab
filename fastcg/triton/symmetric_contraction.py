"""Triton symmetric contraction (MACE product basis): forward, backward, double backward.

Every order is a sum of "terms" over the descriptor's pairs (output column j, monomial n), each
term being ``coef * A[species, a, c] * [grad_out[j, c]] * f_1 * ... * f_DEG`` with factors
``x[i, c]``, ``ggx[i, c]`` or 1. The host derives one term table per order from the descriptor
(cached by the table tensors, then by content: ``PLANS``), in the spirit of a derived
descriptor: the input gradient lists, for each input variable i, the monomials containing i with
i removed; the double backward replaces one factor by the tangent ggx (Hessian-vector product) or
uses ``A`` of grad_grad_weights. So two kernels serve all three orders:

- ``_sc_rows_kernel``: one program per (chunk of <= BN nodes of one species, channel block);
  for each output row (a column of the output, or an input variable for gradients) it walks that
  row's terms and stores the row once. Nodes are grouped by species (stable sort), so the
  program reads ``A[species, a, channels]`` once for its BN nodes.
- ``_sc_wgrad_kernel``: the weight gradient, a reduction over nodes: one program per (chunk of
  nodes of one species, term block, channel block) writes a partial sum per chunk; the chunks
  are summed per species and mapped to weight rows by two matmuls (deterministic, no atomics).

``A[s, p, c] = sum over p's entries of coeff * w[s, k, c]`` (and the weight gradient's map back
to rows k) is a dense [K, P] matmul on the host side. Inputs are read in ``ir_mul`` order
([N, D, C], channels contiguous) so the gathers of x are coalesced; outputs are written in
their final layout (mul_ir for the output and its cotangent, [N, C, D] for x).
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..descriptors import ScEntryCol, ScMonoCol, ScPairCol
from ._indices import check_index
from .tensor_product import PlanCache, _pow2, acc_dtype, interpreting, rows_of

ROW_COLS = tl.constexpr(5)  # rows table: first term, end term, column base (x C), offset, stride


# ----------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _sc_rows_kernel(
    x, t, a, g, out, perm, chunks, terms, coef, rows,
    C, D, DOUT, P_A, so, num_rows,
    DEG: tl.constexpr, HAS_G: tl.constexpr, HAS_T: tl.constexpr, BN: tl.constexpr,
    BC: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """out[b, row r] = sum over r's terms of coef A[s, a, c] (g[b, j, c]) prod factors.

    x, t: [N, D, C]; g: [N, DOUT, C]; a: [S, P_A, C]; factor v: x[v] (0 <= v < D), t[v - D]
    (v >= D) or 1 (v < 0). Row r is stored at out[b * so + base * C + offset + c * stride].
    BK terms are summed per step ([BK, BN, BC] tiles).
    """
    ACC = coef.dtype.element_ty
    NT: tl.constexpr = DEG + 2
    q = tl.program_id(0)
    start = tl.load(chunks + 3 * q)
    end = tl.load(chunks + 3 * q + 1)
    s = tl.load(chunks + 3 * q + 2).to(tl.int64)
    ns = start + tl.arange(0, BN)
    nm = ns < end
    node = tl.load(perm + ns, mask=nm, other=0).to(tl.int64)
    cs = tl.program_id(1) * BC + tl.arange(0, BC)
    cm = cs < C
    m2 = nm[:, None] & cm[None, :]
    xr = (x + node[:, None] * D * C + cs[None, :])[None, :, :]
    tr = (t + node[:, None] * D * C + cs[None, :])[None, :, :]
    gr = (g + node[:, None] * DOUT * C + cs[None, :])[None, :, :]
    ar = a + s * P_A * C + cs[None, :]
    for r in range(tl.where(end > start, num_rows, 0)):  # the grid's spare chunks are empty
        lo = tl.load(rows + ROW_COLS * r)
        hi = tl.load(rows + ROW_COLS * r + 1)
        acc = tl.zeros([BN, BC], dtype=ACC)
        for k0 in range(lo, hi, BK):
            ks = k0 + tl.arange(0, BK)
            km = ks < hi
            m3 = km[:, None, None] & m2[None, :, :]
            term = terms + ks * NT
            ai = tl.load(term, mask=km, other=0)
            av = tl.load(ar + ai[:, None] * C, mask=km[:, None] & cm[None, :], other=0.0)
            val = (av.to(ACC) * tl.load(coef + ks, mask=km, other=0.0)[:, None])[:, None, :]
            if HAS_G:
                j = tl.load(term + 1, mask=km, other=0)[:, None, None]
                val = val * tl.load(gr + j * C, mask=m3, other=0.0).to(ACC)
            for u in tl.static_range(DEG):
                v = tl.load(term + 2 + u, mask=km, other=-1)[:, None, None]
                f = tl.load(xr + v * C, mask=m3 & (v >= 0) & (v < D), other=1.0).to(ACC)
                if HAS_T:
                    f = f * tl.load(tr + (v - D) * C, mask=m3 & (v >= D), other=1.0).to(ACC)
                val = val * f
            acc += tl.sum(val, axis=0)
        base = tl.load(rows + ROW_COLS * r + 2) * C + tl.load(rows + ROW_COLS * r + 3)
        stride = tl.load(rows + ROW_COLS * r + 4)
        tl.store(out + node[:, None] * so + base + cs[None, :] * stride, acc, mask=m2)


@triton.jit
def _sc_wgrad_kernel(
    x, t, g, perm, chunks, terms, coef, dt, C, D, DOUT, T,
    DEG: tl.constexpr, HAS_T: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """dt[q, term, c] = coef sum over the nodes b of chunk q of g[b, j, c] prod factors."""
    ACC = coef.dtype.element_ty
    NT: tl.constexpr = DEG + 2
    q = tl.program_id(0)
    start = tl.load(chunks + 3 * q)
    end = tl.load(chunks + 3 * q + 1)
    ts = tl.program_id(1) * BT + tl.arange(0, BT)
    tm = ts < T
    cs = tl.program_id(2) * BC + tl.arange(0, BC)
    cm = cs < C
    m2 = tm[:, None] & cm[None, :]
    term = terms + ts * NT
    j = tl.load(term + 1, mask=tm, other=0)
    acc = tl.zeros([BT, BC], dtype=ACC)
    for n in range(start, end):
        node = tl.load(perm + n).to(tl.int64)
        val = tl.load(g + node * DOUT * C + j[:, None] * C + cs[None, :], mask=m2, other=0.0)
        val = val.to(ACC)
        for u in tl.static_range(DEG):
            v = tl.load(term + 2 + u, mask=tm, other=-1)[:, None]
            off = node * D * C + v * C + cs[None, :]
            f = tl.load(x + off, mask=m2 & (v >= 0) & (v < D), other=1.0).to(ACC)
            if HAS_T:
                f = f * tl.load(t + off - D * C, mask=m2 & (v >= D), other=1.0).to(ACC)
            val = val * f
        acc += val
    acc = acc * tl.load(coef + ts, mask=tm, other=0.0)[:, None]
    tl.store(dt + q.to(tl.int64) * T * C + ts[:, None] * C + cs[None, :], acc, mask=m2)


# ----------------------------------------------------------------------------------------------
# term tables: descriptor tables -> the terms of each derivative order


@dataclass(frozen=True)
class Terms:
    """One term table: ints [T, DEG + 2] (A row, grad_out column, factors), coef [T], rows."""

    ints: Tensor
    coef: Tensor
    rows: Tensor  # [R, ROW_COLS] int32 (empty for weight-gradient tables)
    owner: tuple[int, ...]  # pair of each term (weight-gradient tables)
    deg: int
    num_rows: int


def _value(v: tuple, d: int) -> list[tuple[int | None, tuple]]:
    return [(None, v)]


def _tangent(v: tuple, d: int) -> list[tuple[int | None, tuple]]:
    """d/dx of the monomial along the tangent: one factor becomes t."""
    return [(None, v[:i] + (v[i] + d,) + v[i + 1 :]) for i in range(len(v))]


def _grad(v: tuple, d: int) -> list[tuple[int | None, tuple]]:
    """d/dx_i of the monomial: (i, remaining factors) per position."""
    return [(v[i], v[:i] + v[i + 1 :]) for i in range(len(v))]


def _grad_tangent(v: tuple, d: int) -> list[tuple[int | None, tuple]]:
    """d/dx_i of the tangent term: one factor removed, another replaced by t."""
    out = []
    for i in range(len(v)):
        rest = v[:i] + v[i + 1 :]
        out += [(v[i], rest[:k] + (rest[k] + d,) + rest[k + 1 :]) for k in range(len(rest))]
    return out


# kind -> (rows are output columns?, uses grad_out?, [(term generator, A block, needs)])
# A block 0 is A of the weights, 1 of grad_grad_weights; needs: "t" (a tangent), "w" (ggw)
_KINDS = {
    "fwd": (True, False, [(_value, 0, "")]),
    "bwd_dx": (False, True, [(_grad, 0, "")]),
    "dbl_dg": (True, False, [(_tangent, 0, "t"), (_value, 1, "w")]),
    "dbl_dx": (False, True, [(_grad_tangent, 0, "t"), (_grad, 1, "w")]),
    "wgrad": (None, True, [(_value, 0, "")]),
    "dbl_wgrad": (None, True, [(_tangent, 0, "t")]),
}


@dataclass
class Plan:
    """Host view of one descriptor's tables plus device tensors, built once per content."""

    mono_vars: list[tuple[int, ...]]
    pairs: list[tuple[int, int]]
    out_cols: list[tuple[int, int]]
    dim_in: int
    num_k: int  # weight rows the entries need (max k + 1)
    entries: list[tuple[int, int]]
    coeff: list[float]
    dtype: torch.dtype
    device: torch.device
    _cache: dict = field(default_factory=dict)

    def terms(self, kind: str, has_t: bool = True, has_w: bool = False) -> Terms:
        key = (kind, has_t, has_w)
        if key not in self._cache:
            self._cache[key] = self._build(kind, has_t, has_w)
        return self._cache[key]

    def _build(self, kind: str, has_t: bool, has_w: bool) -> Terms:
        out_rows, use_g, gens = _KINDS[kind]
        d, npairs = self.dim_in, len(self.pairs)
        count: Counter = Counter()
        for gen, block, need in gens:
            if (need == "t" and not has_t) or (need == "w" and not has_w):
                continue
            a_off = npairs if (block == 1 and has_t) else 0
            for p, (j, n) in enumerate(self.pairs):
                for target, fac in gen(self.mono_vars[n], d):
                    row = p if out_rows is None else (j if out_rows else target)
                    count[(row, a_off + p, j if use_g else -1, tuple(sorted(fac)))] += 1
        keys = sorted(count)
        deg = max([len(k[3]) for k in keys] + [1])
        ints = [[r[1], max(r[2], 0), *r[3], *([-1] * (deg - len(r[3])))] for r in keys]
        rows = [] if out_rows is None else self._rows(keys, out_rows)
        return Terms(
            torch.tensor(ints, dtype=torch.int32).reshape(-1, deg + 2).to(self.device),
            torch.tensor([float(count[k]) for k in keys], dtype=torch.float64).to(
                device=self.device, dtype=self.dtype),
            torch.tensor(rows, dtype=torch.int32).reshape(-1, ROW_COLS.value).to(self.device),
            tuple(k[0] for k in keys), deg, len(rows),
        )  # fmt: skip

    def _rows(self, keys: list, out_rows: bool) -> list[list[int]]:
        """CSR ranges per row and where the row goes (mul_ir column, or x's [C, D] layout)."""
        nrows = len(self.out_cols) if out_rows else self.dim_in
        bounds = [0] * (nrows + 1)
        for k in keys:
            bounds[k[0] + 1] += 1
        for r in range(nrows):
            bounds[r + 1] += bounds[r]
        if out_rows:  # out[b, s * C + c * dim + (j - s)] for output irrep (s, dim)
            place = [(s, j - s, dim) for j, (s, dim) in enumerate(self.out_cols)]
        else:  # dx[b, c * D + i]
            place = [(0, i, self.dim_in) for i in range(self.dim_in)]
        return [[bounds[r], bounds[r + 1], *place[r]] for r in range(nrows)]

    @functools.cached_property
    def coupling(self) -> Tensor:
        """M [num_k, P]: A = M^T w (per species and channel)."""
        m = torch.zeros(self.num_k, len(self.pairs), dtype=torch.float64)
        for (p, k), c in zip(self.entries, self.coeff):
            m[k, p] += c
        return m.to(device=self.device, dtype=self.dtype)

    def reducer(self, t: Terms) -> Tensor:
        """R [num_k, T]: weight rows from the per-term sums of a weight-gradient table.

        Built once per table: indexing with the owner list copies it to the device every time.
        """
        key = ("reducer", id(t))  # t lives in self._cache as long as this plan
        if key not in self._cache:
            self._cache[key] = self.coupling[:, list(t.owner)].contiguous()
        return self._cache[key]


def _build_plan(tables: tuple, dim_in: int, dtype, device) -> Plan:
    mono, pairs, entries, coeff, cols = tables
    mono_vars: list[tuple[int, ...]] = []
    for n, row in enumerate(mono):
        parent, var = row[ScMonoCol.parent], row[ScMonoCol.var]
        if not (-1 <= parent < n and 0 <= var < dim_in):
            raise ValueError(f"monomial {n} is invalid")
        mono_vars.append((mono_vars[parent] if parent >= 0 else ()) + (var,))
    pairs = [(r[ScPairCol.out], r[ScPairCol.mono]) for r in pairs]
    for p, (j, n) in enumerate(pairs):
        if not (0 <= j < len(cols) and 0 <= n < len(mono)):
            raise ValueError(f"pair {p} is invalid")
    entries = [(r[ScEntryCol.pair], r[ScEntryCol.k]) for r in entries]
    for e, (p, k) in enumerate(entries):
        if not (0 <= p < len(pairs) and k >= 0):
            raise ValueError(f"entry {e} is invalid")
    for j, (s, d) in enumerate(cols):  # out_cols: (start, dim), no column enum
        if not (0 <= s <= j < s + d <= len(cols)):
            raise ValueError(f"out_cols row {j} is invalid")
    num_k = max([k for _, k in entries] + [-1]) + 1
    return Plan(mono_vars, pairs, cols, dim_in, num_k, entries, coeff, dtype, device)


@functools.lru_cache(maxsize=64)
def _plan_by_content(content: tuple, dim_in: int, dtype, device) -> Plan:
    return _build_plan(content, dim_in, dtype, device)


def _read_plan(tables: tuple[Tensor, ...], extra: tuple) -> Plan:
    dim_in, dtype, device = extra
    return _plan_by_content(tuple(rows_of(t) for t in tables), dim_in, dtype, torch.device(device))


PLANS: PlanCache[Plan] = PlanCache(_read_plan)


def plan(tables: tuple[Tensor, ...], dim_in: int, dtype, device) -> Plan:
    """The plan of descriptor tables (monomials, pairs, entries, coeff, out_cols).

    Looked up by the tensors' identity first (the same module buffers every call), else by
    content, which costs a device-to-host copy of the small tables (``PLANS``).
    """
    return PLANS.get(tables, (dim_in, acc_dtype(dtype), device))


# ----------------------------------------------------------------------------------------------
# launchers


def rows_blocks(channels: int) -> tuple[int, int, int]:
    """(BN, BC, BK) of the rows kernel: on a GPU [BN, BC] = 512 elements, 4 per thread with 4
    warps, one term per step; 32 channels are one 128-byte line of x per node and factor.
    Under the interpreter larger blocks mean fewer (slow) Python-level steps: 32 terms per step
    made the l = 3, correlation 3 forward and input gradient ~5x faster than one (2.4 -> 0.5 s
    for 7 nodes)."""
    if interpreting():
        return 64, min(_pow2(channels), 64), 32
    return 16, min(_pow2(channels), 32), 1


def wgrad_blocks(channels: int, num_terms: int, num_nodes: int) -> tuple[int, int, int]:
    """(BT, BC, nodes per chunk) of the weight-gradient kernel: chunks of at least 64 nodes, at
    most ~64 chunks (their partial sums are [chunks, T, C]). [16, 32] tiles: at [32, 32] ptxas
    used 128-182 registers (tools/triton_aot.py, MACE's product basis)."""
    if interpreting():
        return min(_pow2(num_terms), 128), min(_pow2(channels), 64), max(64, num_nodes)
    return 16, min(_pow2(channels), 32), max(64, triton.cdiv(num_nodes, 64))


@dataclass(frozen=True)
class Nodes:
    """Nodes sorted by species and cut into chunks of <= ``size`` nodes of one species."""

    perm: Tensor  # int64 [N]
    chunks: Tensor  # int64 [Q, 3]: start, end, species (Q is an upper bound: empty tails)
    size: int


def check_species(species: Tensor, num_species: int) -> Tensor:
    """``species`` as contiguous int64, its values checked (fastcg/triton/_indices.py)."""
    check_index(species, num_species, "species")
    return species.to(torch.int64).contiguous()


def node_chunks(species: Tensor, num_species: int, size: int, exact: bool | None = None) -> Nodes:
    """Species-pure chunks computed on the device: the grid size comes from N and S only (no
    sync), the spare chunks are empty. ``exact`` (default: on CPU) counts them on the host."""
    n, dev = species.numel(), species.device
    keys, perm = torch.sort(species, stable=True)
    # segment bounds by searchsorted of the sorted keys, as fastcg/triton/linear.py does
    seg = torch.searchsorted(keys, torch.arange(num_species + 1, device=dev, dtype=keys.dtype))
    counts = seg[1:] - seg[:-1]
    per = (counts + size - 1) // size
    last = torch.cumsum(per, 0)
    nq = triton.cdiv(n, size) + num_species  # an upper bound
    if exact if exact is not None else dev.type == "cpu":
        nq = int(last[-1]) if num_species > 0 else 0
    q = torch.arange(nq, device=dev)
    sp = torch.searchsorted(last, q, right=True)
    valid = sp < num_species
    sp = sp.clamp(max=num_species - 1)
    start = seg[sp] + (q - (last[sp] - per[sp])) * size
    end = torch.minimum(start + size, seg[sp + 1])
    start, end = torch.where(valid, start, 0), torch.where(valid, end, 0)
    return Nodes(perm.contiguous(), torch.stack([start, end, sp], 1).contiguous(), size)


def ir_mul(x: Tensor) -> Tensor:
    """[N, C, D] -> [N, D, C] contiguous (channels fastest: coalesced loads)."""
    return x.transpose(1, 2).contiguous()


def grad_ir_mul(g: Tensor, out_cols: list[tuple[int, int]], channels: int) -> Tensor:
    """mul_ir [N, C * Dout] -> [N, Dout, C]."""
    n, blocks = g.shape[0], []
    for j, (s, d) in enumerate(out_cols):
        if s == j:
            blocks.append(g[:, s * channels : (s + d) * channels].reshape(n, channels, d))
    return torch.cat(blocks, 2).transpose(1, 2).contiguous() if blocks else g.new_zeros(n, 0, 0)


def species_matrix(pl: Plan, w: Tensor) -> Tensor:
    """A [S, P, C] = sum over each pair's entries of coeff * w[s, k, c] (a [P, K] matmul)."""
    return torch.matmul(pl.coupling.T, w.to(pl.dtype)).contiguous()


def launch_rows(
    pl: Plan, tm: Terms, nodes: Nodes, x: Tensor, t: Tensor | None, a: Tensor,
    g: Tensor | None, out: Tensor, channels: int,
) -> None:  # fmt: skip
    """out (row layout of ``tm``) = the rows kernel over every node chunk and channel block."""
    if tm.num_rows == 0 or out.numel() == 0:
        return
    _, bc, bk = rows_blocks(channels)
    grid = (nodes.chunks.shape[0], triton.cdiv(channels, bc))
    _sc_rows_kernel[grid](
        x, t if t is not None else x, a, g if g is not None else x, out, nodes.perm,
        nodes.chunks, tm.ints, tm.coef, tm.rows,
        channels, pl.dim_in, len(pl.out_cols), a.shape[1], out[0].numel(), tm.num_rows,
        DEG=tm.deg, HAS_G=g is not None, HAS_T=t is not None, BN=nodes.size, BC=bc, BK=bk,
    )  # fmt: skip


def weight_grad(
    pl: Plan, tm: Terms, species: Tensor, x: Tensor, t: Tensor | None, g: Tensor,
    like: Tensor,
) -> Tensor:  # fmt: skip
    """[S, K, C] gradient of the weights: per-chunk partial sums, then two matmuls."""
    s, k, c = like.shape
    n, nt = x.shape[0], tm.ints.shape[0]
    if n == 0 or nt == 0 or c == 0:
        return torch.zeros(like.shape, dtype=pl.dtype, device=like.device)
    bt, bc, size = wgrad_blocks(c, nt, n)
    nodes = node_chunks(species, s, size)
    nq = nodes.chunks.shape[0]
    partial = torch.empty(nq, nt, c, dtype=pl.dtype, device=x.device)
    grid = (nq, triton.cdiv(nt, bt), triton.cdiv(c, bc))
    _sc_wgrad_kernel[grid](
        x, t if t is not None else x, g, nodes.perm, nodes.chunks, tm.ints, tm.coef, partial,
        c, pl.dim_in, len(pl.out_cols), nt, DEG=tm.deg, HAS_T=t is not None, BT=bt, BC=bc,
    )  # fmt: skip
    per_chunk = torch.matmul(pl.reducer(tm)[:k], partial)  # [Q, K, C]
    onehot = torch.nn.functional.one_hot(nodes.chunks[:, 2], s).to(pl.dtype).T  # [S, Q]
    return torch.matmul(onehot, per_chunk.reshape(nq, -1)).reshape(s, k, c)


def _prepare(x: Tensor, species: Tensor, weights: Tensor, tables: tuple) -> tuple[Plan, Tensor]:
    if x.dim() != 3 or weights.dim() != 3 or weights.shape[2] != x.shape[1]:
        raise ValueError("x must be [N, C, D] and weights [S, K, C]")
    pl = plan(tables, x.shape[2], x.dtype, x.device)
    if pl.num_k > weights.shape[1]:
        raise ValueError(f"entries need {pl.num_k} weight rows, weights have {weights.shape[1]}")
    if species.dim() != 1 or species.shape[0] != x.shape[0]:
        raise ValueError(f"species must have shape [{x.shape[0]}]")
    return pl, check_species(species, weights.shape[0])


def symmetric_contraction(
    x: Tensor, species: Tensor, weights: Tensor, monomials: Tensor, pairs: Tensor,
    entries: Tensor, coeff: Tensor, out_cols: Tensor,
) -> Tensor:  # fmt: skip
    """``fastcg_triton::symmetric_contraction``: [N, C * dim_out] (mul_ir)."""
    pl, species = _prepare(x, species, weights, (monomials, pairs, entries, coeff, out_cols))
    n, c = x.shape[0], x.shape[1]
    out = torch.zeros(n, c * len(pl.out_cols), dtype=pl.dtype, device=x.device)
    if n > 0 and c > 0 and weights.shape[0] > 0:
        bn = rows_blocks(c)[0]
        a = species_matrix(pl, weights[:, : pl.num_k])
        launch_rows(pl, pl.terms("fwd"), node_chunks(species, weights.shape[0], bn), ir_mul(x),
                    None, a, None, out, c)  # fmt: skip
    return out.to(x.dtype)


def symmetric_contraction_backward(
    grad_out: Tensor, x: Tensor, species: Tensor, weights: Tensor, monomials: Tensor,
    pairs: Tensor, entries: Tensor, coeff: Tensor, out_cols: Tensor, output_mask: list[bool],
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``fastcg_triton::symmetric_contraction_backward``: (d x, d weights), masked ones empty."""
    pl, species = _prepare(x, species, weights, (monomials, pairs, entries, coeff, out_cols))
    n, c, s = x.shape[0], x.shape[1], weights.shape[0]
    if grad_out.shape != (n, c * len(pl.out_cols)):
        raise ValueError(f"grad_out must be [{n}, {c * len(pl.out_cols)}]")
    live = n > 0 and c > 0 and s > 0
    xt = ir_mul(x) if live else x
    g = grad_ir_mul(grad_out, pl.out_cols, c) if live else grad_out
    dx = x.new_empty(0)
    if output_mask[0]:
        d = torch.zeros(x.shape, dtype=pl.dtype, device=x.device)
        if live:
            bn = rows_blocks(c)[0]
            a = species_matrix(pl, weights[:, : pl.num_k])
            launch_rows(pl, pl.terms("bwd_dx"), node_chunks(species, s, bn), xt, None, a, g, d, c)
        dx = d.to(x.dtype)
    dw = weights.new_empty(0)
    if output_mask[1]:
        dw = torch.zeros(weights.shape, dtype=pl.dtype, device=x.device)
        if live:
            dw[:, : pl.num_k] = weight_grad(pl, pl.terms("wgrad"), species, xt, None, g,
                                            weights[:, : pl.num_k])  # fmt: skip
        dw = dw.to(weights.dtype)
    return dx, dw


def symmetric_contraction_double_backward(
    grad_out: Tensor, x: Tensor, species: Tensor, weights: Tensor, grad_grad_x: Tensor | None,
    grad_grad_weights: Tensor | None, monomials: Tensor, pairs: Tensor, entries: Tensor,
    coeff: Tensor, out_cols: Tensor, output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """``fastcg_triton::symmetric_contraction_double_backward``: gradients of
    <ggx, dx> + <ggw, dw> w.r.t. (grad_out, x, weights), dx and dw being backward's."""
    pl, species = _prepare(x, species, weights, (monomials, pairs, entries, coeff, out_cols))
    n, c, s = x.shape[0], x.shape[1], weights.shape[0]
    has_t, has_w = grad_grad_x is not None, grad_grad_weights is not None
    live = n > 0 and c > 0 and s > 0 and (has_t or has_w)
    res = []
    for m, like in zip(output_mask, (grad_out, x, weights)):
        res.append(torch.zeros(like.shape, dtype=pl.dtype, device=x.device) if m else None)
    if live:
        _double_backward(pl, res, grad_out, x, species, weights, grad_grad_x, grad_grad_weights)
    return tuple(r.to(like.dtype) if r is not None else like.new_empty(0)
                 for r, like in zip(res, (grad_out, x, weights)))  # fmt: skip


def _double_backward(
    pl: Plan, res: list, grad_out: Tensor, x: Tensor, species: Tensor, weights: Tensor,
    ggx: Tensor | None, ggw: Tensor | None,
) -> None:  # fmt: skip
    c, s = x.shape[1], weights.shape[0]
    has_t, has_w = ggx is not None, ggw is not None
    xt = ir_mul(x)
    tt = ir_mul(ggx) if has_t else None
    g = grad_ir_mul(grad_out, pl.out_cols, c)
    if res[0] is not None or res[1] is not None:
        blocks = ([species_matrix(pl, weights[:, : pl.num_k])] if has_t else []) + (
            [species_matrix(pl, ggw[:, : pl.num_k])] if has_w else [])  # fmt: skip
        a = torch.cat(blocks, 1).contiguous()
        nodes = node_chunks(species, s, rows_blocks(c)[0])
        if res[0] is not None:
            launch_rows(pl, pl.terms("dbl_dg", has_t, has_w), nodes, xt, tt, a, None, res[0], c)
        if res[1] is not None:
            launch_rows(pl, pl.terms("dbl_dx", has_t, has_w), nodes, xt, tt, a, g, res[1], c)
    if res[2] is not None and has_t:
        res[2][:, : pl.num_k] = weight_grad(pl, pl.terms("dbl_wgrad"), species, xt, tt, g,
                                            weights[:, : pl.num_k])  # fmt: skip
