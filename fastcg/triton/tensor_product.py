"""Triton tensor product: one kernel launch per CG path, specialised on the path's shape.

A descriptor is data, so the launcher reads its tables once on the host and turns each path into
a ``PathPlan``: the connection mode and the irrep dimensions become ``tl.constexpr`` (the CG
loops unroll), the multiplicities and offsets stay runtime arguments. The CG block of a path is
passed as a small dense ``[n1, n2, d3]`` array (d3 = next power of two of 2*l3+1, zero padded)
so one kernel serves every (l1, l2, l3).

The backward of a bilinear product is the same product on a transposed path (derived on the host:
permuted CG block, relabelled mode, permuted weight strides), so only two kernels exist: the
product (``_tp_kernel``, also used for both input gradients) and the weight gradient
(``_tp_wgrad_kernel``). Both take optional row gathers (``x[src]``) and the product takes a
scattered output (atomic ``index_add`` or a deterministic CSR segment sum), which is what conv
needs; a plain tensor product uses neither.

Weights are indexed ``w[p * sp + q * sq + r * sr]`` with p, q, r the channels of x1, x2 and out
(equal channels share an index, e.g. uvu has p == r), so transposing a path only permutes
(sp, sq, sr).

Plans are cached twice (``PlanCache``): by the identity of the table tensors (the buffers a
``fastcg.nn`` module passes every call: a dictionary lookup, no device-to-host copy) and, behind
that, by the tables' content (equal tables held by different tensors share one plan).
"""

from __future__ import annotations

import contextlib
import functools
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..descriptors import MODE_RULES, MODES, PathCol

UVW, UVU, UUU, UVV, UUW = 0, 1, 2, 3, 4  # fastcg.descriptors.MODES order

OUT_ROWS, OUT_ATOMIC, OUT_SEGMENT = 0, 1, 2  # how the product writes its output rows


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (kernels run on CPU tensors, slowly)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64, everything else accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def deterministic() -> bool:
    return torch.are_deterministic_algorithms_enabled()


# ----------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _tp_kernel(
    x1, x2, w, cg, out, idx1, idx2, idxo, perm, seg,
    nrows, s1, s2, sw_row, so, off1, off2, offw, offo,
    mul1, mul2, nchan, sp, sq, sr,
    MODE: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr, N3: tl.constexpr,
    D3: tl.constexpr, HAS_W: tl.constexpr, GATHER1: tl.constexpr, GATHER2: tl.constexpr,
    OUT_MODE: tl.constexpr, PERM: tl.constexpr, BZ: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """out[ro, r, k] += sum C[i, j, k] x1[r1, p, i] x2[r2, q, j] w[e, p, q, r] over one path.

    Rows z of a program: a BZ block (OUT_ROWS / OUT_ATOMIC) or the CSR segment of one output row
    (OUT_SEGMENT, deterministic). e = perm[z] when PERM; r1 = idx1[e] when GATHER1, etc.
    """
    ACC = cg.dtype.element_ty
    pid = tl.program_id(0)
    cs = tl.program_id(1) * BC + tl.arange(0, BC)
    cm = cs < nchan
    ks = tl.arange(0, D3)
    km = ks < N3
    if OUT_MODE == 2:
        start = tl.load(seg + pid)
        end = tl.load(seg + pid + 1)
    else:
        start = pid * BZ
        end = tl.minimum(start + BZ, nrows)
    acc = tl.zeros([BZ, BC, D3], dtype=ACC)
    for z0 in range(start, end, BZ):
        zs = z0 + tl.arange(0, BZ)
        zm = zs < end
        e = zs
        if PERM:
            e = tl.load(perm + zs, mask=zm, other=0)
        r1 = e
        if GATHER1:
            r1 = tl.load(idx1 + e, mask=zm, other=0)
        r2 = e
        if GATHER2:
            r2 = tl.load(idx2 + e, mask=zm, other=0)
        a_row = x1 + r1.to(tl.int64) * s1 + off1
        b_row = x2 + r2.to(tl.int64) * s2 + off2
        w_row = w + e.to(tl.int64) * sw_row + offw
        m2 = zm[:, None] & cm[None, :]
        if MODE == 1:  # uvu: p = r = c, q = v
            for v in range(mul2):
                t = tl.zeros([BZ, BC, D3], dtype=ACC)
                for i in tl.static_range(N1):
                    a = tl.load(a_row[:, None] + cs[None, :] * N1 + i, mask=m2, other=0.0)
                    s = tl.zeros([BZ, D3], dtype=ACC)
                    for j in tl.static_range(N2):
                        b = tl.load(b_row + v * N2 + j, mask=zm, other=0.0).to(ACC)
                        s += b[:, None] * tl.load(cg + (i * N2 + j) * D3 + ks)[None, :]
                    t += a.to(ACC)[:, :, None] * s[:, None, :]
                if HAS_W:
                    wv = tl.load(w_row[:, None] + cs[None, :] * (sp + sr) + v * sq, mask=m2)
                    t = t * wv.to(ACC)[:, :, None]
                acc += t
        elif MODE == 2:  # uuu: p = q = r = c
            t = tl.zeros([BZ, BC, D3], dtype=ACC)
            for i in tl.static_range(N1):
                a = tl.load(a_row[:, None] + cs[None, :] * N1 + i, mask=m2, other=0.0).to(ACC)
                for j in tl.static_range(N2):
                    b = tl.load(b_row[:, None] + cs[None, :] * N2 + j, mask=m2, other=0.0)
                    crow = tl.load(cg + (i * N2 + j) * D3 + ks)
                    t += (a * b.to(ACC))[:, :, None] * crow[None, None, :]
            if HAS_W:
                wv = tl.load(w_row[:, None] + cs[None, :] * (sp + sq + sr), mask=m2)
                t = t * wv.to(ACC)[:, :, None]
            acc += t
        elif MODE == 3:  # uvv: p = u, q = r = c
            for u in range(mul1):
                t = tl.zeros([BZ, BC, D3], dtype=ACC)
                for j in tl.static_range(N2):
                    b = tl.load(b_row[:, None] + cs[None, :] * N2 + j, mask=m2, other=0.0)
                    s = tl.zeros([BZ, D3], dtype=ACC)
                    for i in tl.static_range(N1):
                        a = tl.load(a_row + u * N1 + i, mask=zm, other=0.0).to(ACC)
                        s += a[:, None] * tl.load(cg + (i * N2 + j) * D3 + ks)[None, :]
                    t += b.to(ACC)[:, :, None] * s[:, None, :]
                if HAS_W:
                    wv = tl.load(w_row[:, None] + u * sp + cs[None, :] * (sq + sr), mask=m2)
                    t = t * wv.to(ACC)[:, :, None]
                acc += t
        else:  # uuw (p = q = u) and uvw (p = u, q = v); r = c
            nv = mul2
            if MODE == 4:
                nv = 1
            for u in range(mul1):
                for v in range(nv):
                    q = v
                    if MODE == 4:
                        q = u
                    ab = tl.zeros([BZ, D3], dtype=ACC)
                    for i in tl.static_range(N1):
                        a = tl.load(a_row + u * N1 + i, mask=zm, other=0.0).to(ACC)
                        for j in tl.static_range(N2):
                            b = tl.load(b_row + q * N2 + j, mask=zm, other=0.0).to(ACC)
                            ab += (a * b)[:, None] * tl.load(cg + (i * N2 + j) * D3 + ks)[None, :]
                    if HAS_W:
                        wv = tl.load(w_row[:, None] + u * sp + q * sq + cs[None, :] * sr, mask=m2)
                        acc += wv.to(ACC)[:, :, None] * ab[:, None, :]
                    else:
                        acc += ab[:, None, :]
    cmask = cm[:, None] & km[None, :]
    cols = offo + cs[:, None] * N3 + ks[None, :]
    if OUT_MODE == 2:
        ptr = out + pid.to(tl.int64) * so + cols
        res = tl.sum(acc, axis=0)
        tl.store(ptr, tl.load(ptr, mask=cmask, other=0.0) + res, mask=cmask)
    else:
        zs = start + tl.arange(0, BZ)
        zm = zs < end
        ro = zs
        if OUT_MODE == 1:
            e = zs
            if PERM:
                e = tl.load(perm + zs, mask=zm, other=0)
            ro = tl.load(idxo + e, mask=zm, other=0)
        ptr = out + ro.to(tl.int64)[:, None, None] * so + cols[None, :, :]
        mask = zm[:, None, None] & cmask[None, :, :]
        if OUT_MODE == 1:
            tl.atomic_add(ptr, acc, mask=mask)
        else:
            tl.store(ptr, tl.load(ptr, mask=mask, other=0.0) + acc, mask=mask)


@triton.jit
def _tp_wgrad_kernel(
    x1, x2, g, cg, dw, idx1, idx2, idxg,
    nrows, s1, s2, sg, sw_row, off1, off2, offg, offw,
    mul1, mul2, nchan, sp, sq, sr,
    MODE: tl.constexpr, N1: tl.constexpr, N2: tl.constexpr, N3: tl.constexpr,
    D3: tl.constexpr, GATHER1: tl.constexpr, GATHER2: tl.constexpr, GATHERG: tl.constexpr,
    SHARED: tl.constexpr, BZ: tl.constexpr, BC: tl.constexpr,
):  # fmt: skip
    """dw[e, p, q, r] = sum C[i, j, k] x1[r1, p, i] x2[r2, q, j] g[rg, r, k] over one path.

    Per-row weights are stored per row; SHARED sums the block's rows and adds atomically.
    """
    ACC = cg.dtype.element_ty
    zs = tl.program_id(0) * BZ + tl.arange(0, BZ)
    zm = zs < nrows
    cs = tl.program_id(1) * BC + tl.arange(0, BC)
    cm = cs < nchan
    ks = tl.arange(0, D3)
    km = ks < N3
    r1 = zs
    if GATHER1:
        r1 = tl.load(idx1 + zs, mask=zm, other=0)
    r2 = zs
    if GATHER2:
        r2 = tl.load(idx2 + zs, mask=zm, other=0)
    rg = zs
    if GATHERG:
        rg = tl.load(idxg + zs, mask=zm, other=0)
    a_row = x1 + r1.to(tl.int64) * s1 + off1
    b_row = x2 + r2.to(tl.int64) * s2 + off2
    w_row = dw + zs.to(tl.int64) * sw_row + offw
    m2 = zm[:, None] & cm[None, :]
    gt = tl.load(
        g + rg.to(tl.int64)[:, None, None] * sg + offg + cs[None, :, None] * N3 + ks[None, None, :],
        mask=m2[:, :, None] & km[None, None, :], other=0.0,
    ).to(ACC)  # fmt: skip
    if MODE == 1:  # uvu
        for v in range(mul2):
            val = tl.zeros([BZ, BC], dtype=ACC)
            for i in tl.static_range(N1):
                a = tl.load(a_row[:, None] + cs[None, :] * N1 + i, mask=m2, other=0.0).to(ACC)
                s = tl.zeros([BZ, D3], dtype=ACC)
                for j in tl.static_range(N2):
                    b = tl.load(b_row + v * N2 + j, mask=zm, other=0.0).to(ACC)
                    s += b[:, None] * tl.load(cg + (i * N2 + j) * D3 + ks)[None, :]
                val += a * tl.sum(gt * s[:, None, :], axis=2)
            widx = cs * (sp + sr) + v * sq
            if SHARED:
                tl.atomic_add(dw + offw + widx, tl.sum(val, axis=0), mask=cm)
            else:
                tl.store(w_row[:, None] + widx[None, :], val, mask=m2)
    elif MODE == 2:  # uuu
        val = tl.zeros([BZ, BC], dtype=ACC)
        for i in tl.static_range(N1):
            a = tl.load(a_row[:, None] + cs[None, :] * N1 + i, mask=m2, other=0.0).to(ACC)
            for j in tl.static_range(N2):
                b = tl.load(b_row[:, None] + cs[None, :] * N2 + j, mask=m2, other=0.0).to(ACC)
                crow = tl.load(cg + (i * N2 + j) * D3 + ks)
                val += a * b * tl.sum(gt * crow[None, None, :], axis=2)
        widx = cs * (sp + sq + sr)
        if SHARED:
            tl.atomic_add(dw + offw + widx, tl.sum(val, axis=0), mask=cm)
        else:
            tl.store(w_row[:, None] + widx[None, :], val, mask=m2)
    elif MODE == 3:  # uvv
        for u in range(mul1):
            val = tl.zeros([BZ, BC], dtype=ACC)
            for j in tl.static_range(N2):
                b = tl.load(b_row[:, None] + cs[None, :] * N2 + j, mask=m2, other=0.0).to(ACC)
                s = tl.zeros([BZ, D3], dtype=ACC)
                for i in tl.static_range(N1):
                    a = tl.load(a_row + u * N1 + i, mask=zm, other=0.0).to(ACC)
                    s += a[:, None] * tl.load(cg + (i * N2 + j) * D3 + ks)[None, :]
                val += b * tl.sum(gt * s[:, None, :], axis=2)
            widx = u * sp + cs * (sq + sr)
            if SHARED:
                tl.atomic_add(dw + offw + widx, tl.sum(val, axis=0), mask=cm)
            else:
                tl.store(w_row[:, None] + widx[None, :], val, mask=m2)
    else:  # uuw, uvw
        nv = mul2
        if MODE == 4:
            nv = 1
        for u in range(mul1):
            for v in range(nv):
                q = v
                if MODE == 4:
                    q = u
                ab = tl.zeros([BZ, D3], dtype=ACC)
                for i in tl.static_range(N1):
                    a = tl.load(a_row + u * N1 + i, mask=zm, other=0.0).to(ACC)
                    for j in tl.static_range(N2):
                        b = tl.load(b_row + q * N2 + j, mask=zm, other=0.0).to(ACC)
                        ab += (a * b)[:, None] * tl.load(cg + (i * N2 + j) * D3 + ks)[None, :]
                val = tl.sum(gt * ab[:, None, :], axis=2)
                widx = u * sp + q * sq + cs * sr
                if SHARED:
                    tl.atomic_add(dw + offw + widx, tl.sum(val, axis=0), mask=cm)
                else:
                    tl.store(w_row[:, None] + widx[None, :], val, mask=m2)


# ----------------------------------------------------------------------------------------------
# plans: descriptor tables -> per-path launch parameters


@dataclass(frozen=True)
class PathPlan:
    """One path as the kernels see it (or a transpose of one)."""

    mode: int
    n1: int
    n2: int
    n3: int
    d3: int
    mul1: int
    mul2: int
    mul_out: int
    off1: int
    off2: int
    off_out: int
    w_off: int  # -1: no weight
    sp: int
    sq: int
    sr: int
    cg: Tensor  # dense [n1, n2, d3] in the accumulation dtype, on the device

    @property
    def nchan(self) -> int:
        """Channels along the kernel's second grid axis (the output multiplicity)."""
        return self.mul_out


@dataclass(frozen=True)
class TPPlan:
    """Forward paths and their two transposes (gradient w.r.t. x1 and w.r.t. x2)."""

    fwd: tuple[PathPlan, ...]
    dx1: tuple[PathPlan, ...]
    dx2: tuple[PathPlan, ...]


def _weight_strides(mode: int, m1: int, m2: int, mo: int) -> tuple[int, int, int]:
    return MODE_RULES[MODES[mode]].weight_strides(m1, m2, mo)


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def _dense(c: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    d3 = _pow2(c.shape[2])
    pad = torch.zeros(c.shape[0], c.shape[1], d3, dtype=torch.float64)
    pad[:, :, : c.shape[2]] = c
    return pad.to(device=device, dtype=dtype).contiguous()


def _transpose(p: dict, perm: tuple[int, int, int]) -> dict:
    """Relabel roles: new role n takes old role perm[n] (0 = x1, 1 = x2, 2 = out)."""
    return {
        "mode": MODES.index(MODE_RULES[MODES[p["mode"]]].transpose(perm).name),
        "n": tuple(p["n"][k] for k in perm),
        "mul": tuple(p["mul"][k] for k in perm),
        "off": tuple(p["off"][k] for k in perm),
        "s": tuple(p["s"][k] for k in perm),
        "w_off": p["w_off"],
        "cg": p["cg"].permute(*perm),
    }


def _to_plan(p: dict, dtype: torch.dtype, device: torch.device) -> PathPlan:
    n1, n2, n3 = p["n"]
    return PathPlan(
        p["mode"], n1, n2, n3, _pow2(n3), *p["mul"], *p["off"], p["w_off"], *p["s"],
        _dense(p["cg"], dtype, device),
    )  # fmt: skip


P = TypeVar("P")


class PlanCache(Generic[P]):
    """Plans of descriptor tables looked up by the tables' identity: a dictionary lookup per call.

    ``build(tables, extra)`` reads the tables (on a GPU a device-to-host copy and a sync) and runs
    only on a miss; it looks the content up in an lru_cache, so equal tables held by different
    tensors share one plan. The key is each table's (id, ``_version``, data_ptr, shape) plus
    ``extra`` (dtype, device, ...): an in-place change bumps ``_version``, so it misses. Entries
    hold weak references to the tables: the entry of a table that dies is dropped (with its plan's
    device tensors, unless the content cache keeps them) and a recycled id never matches a dead
    table's entry. At most ``maxsize`` entries, least recently used dropped first (a table changed
    in place leaves one entry per version). Inference tensors have no version counter: they are
    read on every call. Writes the version counter does not see (through ``.data``, ``numpy()``
    or ``data_ptr()``) are not detected.
    """

    def __init__(self, build: Callable[[tuple[Tensor, ...], Hashable], P], maxsize: int = 128):
        self._build = build
        self._maxsize = maxsize
        self._entries: OrderedDict[Hashable, tuple[tuple[weakref.ref, ...], P]] = OrderedDict()
        self.builds = 0  # misses, i.e. reads of the tables (tests count them)

    def get(self, tables: tuple[Tensor, ...], extra: Hashable) -> P:
        """The plan of ``tables`` for ``extra``; reads the tables only on a miss."""
        try:
            key = (tuple((id(t), t._version, t.data_ptr(), t.shape) for t in tables), extra)
        except RuntimeError:  # an inference tensor: without a version counter, never trusted
            self.builds += 1
            return self._build(tables, extra)
        hit = self._entries.get(key)
        if hit is not None and all(r() is t for r, t in zip(hit[0], tables)):
            with contextlib.suppress(KeyError):  # a weakref callback may have just dropped it
                self._entries.move_to_end(key)
            return hit[1]
        value = self._build(tables, extra)
        self.builds += 1
        drop = functools.partial(self._drop, key)
        self._entries[key] = (tuple(weakref.ref(t, drop) for t in tables), value)
        while len(self._entries) > self._maxsize:
            self._entries.popitem(last=False)
        return value

    def _drop(self, key: Hashable, _ref: weakref.ref) -> None:
        # A stale callback (its table died after a newer entry took the key) only costs a rebuild.
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()


def rows_of(t: Tensor) -> tuple:
    """A small table's content as nested tuples (a device-to-host copy on a GPU)."""
    values = t.cpu().tolist()
    return tuple(tuple(r) for r in values) if t.dim() == 2 else tuple(values)


@functools.lru_cache(maxsize=256)
def _plan_cached(rows: tuple, cg_idx: tuple, cg_val: tuple, dtype, device) -> TPPlan:
    fwd, dx1, dx2 = [], [], []
    for row in rows:
        mode = row[PathCol.mode]
        m1, m2, mo = row[PathCol.mul1], row[PathCol.mul2], row[PathCol.mul_out]
        b, e = row[PathCol.cg_begin], row[PathCol.cg_end]
        n = tuple(2 * row[c] + 1 for c in (PathCol.l1, PathCol.l2, PathCol.l3))
        c = torch.zeros(n, dtype=torch.float64)
        for (i, j, k), v in zip(cg_idx[b:e], cg_val[b:e]):
            c[i, j, k] = v
        p = {
            "mode": mode, "n": n, "mul": (m1, m2, mo),
            "off": (row[PathCol.off1], row[PathCol.off2], row[PathCol.off_out]),
            "s": _weight_strides(mode, m1, m2, mo), "w_off": row[PathCol.w_off], "cg": c,
        }  # fmt: skip
        fwd.append(_to_plan(p, dtype, device))
        dx1.append(_to_plan(_transpose(p, (2, 1, 0)), dtype, device))
        dx2.append(_to_plan(_transpose(p, (0, 2, 1)), dtype, device))
    return TPPlan(tuple(fwd), tuple(dx1), tuple(dx2))


def _read_plan(tables: tuple[Tensor, ...], extra: tuple) -> TPPlan:
    paths, cg_index, cg_value = tables
    val = tuple(cg_value.cpu().to(torch.float64).tolist())
    dtype, device = extra
    return _plan_cached(rows_of(paths), rows_of(cg_index), val, dtype, torch.device(device))


PLANS: PlanCache[TPPlan] = PlanCache(_read_plan)


def plan(paths: Tensor, cg_index: Tensor, cg_value: Tensor, dtype, device) -> TPPlan:
    """Launch plan of a descriptor's tables for inputs of ``dtype`` on ``device`` (``PLANS``)."""
    # torch.device(...) only on a miss: callers pass x.device, and the lookup is per call
    return PLANS.get((paths, cg_index, cg_value), (acc_dtype(dtype), device))


# ----------------------------------------------------------------------------------------------
# launchers


def blocks(nchan: int, d3: int, segment: bool = False, wide: bool = False) -> tuple[int, int]:
    """(BZ, BC): rows x channels of a program; ``wide``: float64 accumulators.

    On a GPU the [BZ, BC, d3] accumulator is kept at 4 KiB: 1024 float32 elements (8 per thread
    with 4 warps; uvu holds two of them) or 512 float64 ones. At 2048 float32 elements ptxas
    spilled up to 876 bytes in the unrolled l1 = 3 uvu paths, and float64 at 1024 elements up to
    640 bytes (tools/triton_aot.py --float64). Under the interpreter larger blocks mean fewer
    (slow) Python-level programs.
    """
    if interpreting():
        return 16 if segment else 64, min(_pow2(nchan), 64)
    bc = min(_pow2(nchan), 32)
    bz = max(1, min(32, (512 if wide else 1024) // (bc * d3)))
    return 1 << (bz.bit_length() - 1), bc  # largest power of two <= bz


class Rows:
    """Where a kernel reads/writes its rows: optional gather index and permutation."""

    def __init__(self, gather1=None, gather2=None, scatter=None, perm=None, seg=None):
        self.gather1, self.gather2, self.scatter, self.perm, self.seg = (
            gather1, gather2, scatter, perm, seg,
        )  # fmt: skip


def launch_product(
    plans: tuple[PathPlan, ...], a: Tensor, b: Tensor, w: Tensor, out: Tensor, nrows: int,
    rows: Rows | None = None,
) -> None:  # fmt: skip
    """out (+)= product of a and b for every path in ``plans`` (out is zero-initialised)."""
    rows = rows or Rows()
    dummy = out
    shared = w.dim() == 1
    if rows.seg is not None:
        out_mode, nprog = OUT_SEGMENT, rows.seg.numel() - 1
    elif rows.scatter is not None:
        out_mode, nprog = OUT_ATOMIC, None
    else:
        out_mode, nprog = OUT_ROWS, None
    for p in plans:
        if nrows == 0 or p.mul_out == 0:
            continue
        bz, bc = blocks(p.nchan, p.d3, out_mode == OUT_SEGMENT, out.dtype == torch.float64)
        grid = (nprog if nprog is not None else triton.cdiv(nrows, bz), triton.cdiv(p.nchan, bc))
        if grid[0] == 0:
            continue
        _tp_kernel[grid](
            a, b, w if p.w_off >= 0 else dummy, p.cg, out,
            _or(rows.gather1, dummy), _or(rows.gather2, dummy), _or(rows.scatter, dummy),
            _or(rows.perm, dummy), _or(rows.seg, dummy),
            nrows, a.shape[1], b.shape[1], 0 if shared else w.shape[-1], out.shape[1],
            p.off1, p.off2, max(p.w_off, 0), p.off_out,
            p.mul1, p.mul2, p.nchan, p.sp, p.sq, p.sr,
            MODE=p.mode, N1=p.n1, N2=p.n2, N3=p.n3, D3=p.d3, HAS_W=p.w_off >= 0,
            GATHER1=rows.gather1 is not None, GATHER2=rows.gather2 is not None,
            OUT_MODE=out_mode, PERM=rows.perm is not None, BZ=bz, BC=bc,
        )  # fmt: skip


def launch_wgrad(
    plans: tuple[PathPlan, ...], a: Tensor, b: Tensor, g: Tensor, dw: Tensor, nrows: int,
    gather1: Tensor | None = None, gather2: Tensor | None = None, gatherg: Tensor | None = None,
) -> None:  # fmt: skip
    """dw = weight gradient of every weighted path (dw zero-initialised; [numel] sums rows)."""
    shared = dw.dim() == 1
    dummy = dw
    for p in plans:
        if p.w_off < 0 or nrows == 0:
            continue
        bz, bc = blocks(p.nchan, p.d3, wide=dw.dtype == torch.float64)
        grid = (triton.cdiv(nrows, bz), triton.cdiv(p.nchan, bc))
        _tp_wgrad_kernel[grid](
            a, b, g, p.cg, dw, _or(gather1, dummy), _or(gather2, dummy), _or(gatherg, dummy),
            nrows, a.shape[1], b.shape[1], g.shape[1], 0 if shared else dw.shape[1],
            p.off1, p.off2, p.off_out, p.w_off, p.mul1, p.mul2, p.nchan, p.sp, p.sq, p.sr,
            MODE=p.mode, N1=p.n1, N2=p.n2, N3=p.n3, D3=p.d3, GATHER1=gather1 is not None,
            GATHER2=gather2 is not None, GATHERG=gatherg is not None, SHARED=shared,
            BZ=bz, BC=bc,
        )  # fmt: skip


def _or(t: Tensor | None, dummy: Tensor) -> Tensor:
    return dummy if t is None else t


def weight_grad(
    fwd: tuple[PathPlan, ...], a: Tensor, b: Tensor, g: Tensor, w: Tensor, nrows: int,
    **gathers: Tensor | None,
) -> Tensor:  # fmt: skip
    """Gradient of the weights, shaped like ``w`` ([numel] shared or [rows, numel])."""
    acc = acc_dtype(w.dtype)
    if w.dim() == 1 and deterministic() and nrows > 0:
        # atomics reorder the sum; per-row gradients summed by torch keep it deterministic
        per_row = torch.zeros(nrows, w.shape[0], dtype=acc, device=w.device)
        launch_wgrad(fwd, a, b, g, per_row, nrows, **gathers)
        return per_row.sum(0).to(w.dtype)
    dw = torch.zeros(w.shape, dtype=acc, device=w.device)
    launch_wgrad(fwd, a, b, g, dw, nrows, **gathers)
    return dw.to(w.dtype)


# ----------------------------------------------------------------------------------------------
# ops


def tensor_product(
    x1: Tensor, x2: Tensor, weights: Tensor, paths: Tensor, cg_index: Tensor, cg_value: Tensor,
    dim_out: int,
) -> Tensor:  # fmt: skip
    """``fastcg_triton::tensor_product`` (rows of x1, x2 and per-row weights aligned)."""
    pl = plan(paths, cg_index, cg_value, x1.dtype, x1.device)
    out = torch.zeros(x1.shape[0], dim_out, dtype=acc_dtype(x1.dtype), device=x1.device)
    launch_product(pl.fwd, x1.contiguous(), x2.contiguous(), weights.contiguous(), out, x1.shape[0])
    return out.to(x1.dtype)


def tensor_product_backward(
    grad_out: Tensor, x1: Tensor, x2: Tensor, weights: Tensor, paths: Tensor, cg_index: Tensor,
    cg_value: Tensor, output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """``fastcg_triton::tensor_product_backward``: (d x1, d x2, d weights), masked ones empty."""
    pl = plan(paths, cg_index, cg_value, x1.dtype, x1.device)
    g, x1, x2, w = (t.contiguous() for t in (grad_out, x1, x2, weights))
    n, acc = x1.shape[0], acc_dtype(x1.dtype)
    res = []
    for k, (plans, a, b, like) in enumerate(((pl.dx1, g, x2, x1), (pl.dx2, x1, g, x2))):
        if not output_mask[k]:
            res.append(like.new_empty(0))
            continue
        d = torch.zeros(like.shape, dtype=acc, device=like.device)
        launch_product(plans, a, b, w, d, n)
        res.append(d.to(like.dtype))
    res.append(weight_grad(pl.fwd, x1, x2, g, w, n) if output_mask[2] else w.new_empty(0))
    return tuple(res)
