"""Tensor-product and linear descriptors: the math of an op as plain data.

A descriptor lists the CG paths of an e3nn ``TensorProduct`` (or ``Linear``) with their
normalisation constants already folded in. ``tensors()`` packs it into the int64 / float64
tables every kernel reads, so C++, Triton and CUDA see exactly the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import sqrt
from typing import Any

import torch

from .cg import sparse_cg
from .irreps import irreps, offsets

MODES = ("uvw", "uvu", "uuu", "uvv", "uuw")
# Column order of the int64 path table shared with csrc/core/tp.h.
PATH_COLUMNS = (
    "mode", "l1", "l2", "l3", "mul1", "mul2", "mul_out",
    "off1", "off2", "off_out", "w_off", "cg_begin", "cg_end",
)  # fmt: skip


def weight_shape(mode: str, mul1: int, mul2: int, mul_out: int) -> tuple[int, ...]:
    """e3nn's per-path weight shape for a connection mode."""
    return {
        "uvw": (mul1, mul2, mul_out),
        "uvu": (mul1, mul2),
        "uvv": (mul1, mul2),
        "uuw": (mul1, mul_out),
        "uuu": (mul1,),
    }[mode]


def _num_elements(mode: str, mul1: int, mul2: int) -> int:
    return {"uvw": mul1 * mul2, "uvu": mul2, "uvv": mul1, "uuw": mul1, "uuu": 1}[mode]


@dataclass(frozen=True)
class Path:
    """One CG path: block i1 of x1 with block i2 of x2 into block i_out of the output."""

    i1: int
    i2: int
    i_out: int
    mode: str
    has_weight: bool
    coeff: float  # e3nn's sqrt(alpha): normalisation times the user path_weight
    l1: int
    l2: int
    l3: int
    mul1: int
    mul2: int
    mul_out: int
    off1: int
    off2: int
    off_out: int
    w_off: int  # start in the flat weight vector, -1 when the path has no weight

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return weight_shape(self.mode, self.mul1, self.mul2, self.mul_out)

    @property
    def weight_numel(self) -> int:
        return int(torch.Size(self.weight_shape).numel()) if self.has_weight else 0


@dataclass(frozen=True)
class TPDescriptor:
    """All paths of a tensor product, in e3nn's instruction order."""

    irreps_in1: str
    irreps_in2: str
    irreps_out: str
    paths: tuple[Path, ...]
    dim1: int
    dim2: int
    dim_out: int
    weight_numel: int

    def __post_init__(self) -> None:
        # Packed once here rather than on each call: torch.compile then sees plain tensors and
        # never traces the packing (or e3nn's wigner_3j behind it).
        object.__setattr__(self, "_tables", _pack(self))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(paths int64 [P, 13], cg_index int64 [NNZ, 3], cg_value float64 [NNZ])."""
        return self._tables


def _pack(desc: TPDescriptor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, idx, val = [], [], []
    for p in desc.paths:
        begin = len(val)
        for i, j, k, c in sparse_cg(p.l1, p.l2, p.l3):
            idx.append((i, j, k))
            val.append(c * p.coeff)
        rows.append((
            MODES.index(p.mode), p.l1, p.l2, p.l3, p.mul1, p.mul2, p.mul_out,
            p.off1, p.off2, p.off_out, p.w_off, begin, len(val),
        ))  # fmt: skip
    paths = torch.tensor(rows, dtype=torch.int64).reshape(-1, len(PATH_COLUMNS))
    cg_index = torch.tensor(idx, dtype=torch.int64).reshape(-1, 3)
    return paths, cg_index, torch.tensor(val, dtype=torch.float64)


def _normalisation(
    ins: tuple, instructions: list[tuple], ir1, ir2, iro, var1, var2, varo, irrep_norm, path_norm
) -> float:
    """e3nn's sqrt(alpha) for one instruction (TensorProduct.__init__)."""
    i1, i2, io, mode, _, path_weight = ins
    alpha = {"component": iro[io].ir.dim, "norm": ir1[i1].ir.dim * ir2[i2].ir.dim, "none": 1}[
        irrep_norm
    ]

    def n(i):
        return var1[i[0]] * var2[i[1]] * _num_elements(i[3], ir1[i[0]].mul, ir2[i[1]].mul)

    if path_norm == "element":
        x = sum(n(i) for i in instructions if i[2] == io)
    elif path_norm == "path":
        x = n(ins) * len([i for i in instructions if i[2] == io])
    else:
        x = 1
    if x > 0:
        alpha /= x
    return sqrt(alpha * varo[io] * path_weight)


def tensor_product_descriptor(
    irreps_in1: Any,
    irreps_in2: Any,
    irreps_out: Any,
    instructions: list[tuple],
    in1_var: list[float] | None = None,
    in2_var: list[float] | None = None,
    out_var: list[float] | None = None,
    irrep_normalization: str = "component",
    path_normalization: str = "element",
) -> TPDescriptor:
    """Descriptor of ``e3nn.o3.TensorProduct`` with the same arguments.

    >>> d = tensor_product_descriptor("2x1o", "1x1o", "2x0e", [(0, 0, 0, "uvu", True)])
    >>> d.weight_numel
    2
    """
    ir1, ir2, iro = irreps(irreps_in1), irreps(irreps_in2), irreps(irreps_out)
    if irrep_normalization not in ("component", "norm", "none"):
        raise ValueError(f"irrep_normalization={irrep_normalization!r} is not one of e3nn's")
    if path_normalization not in ("element", "path", "none"):
        raise ValueError(f"path_normalization={path_normalization!r} is not one of e3nn's")
    ins = [tuple(i) if len(i) == 6 else (*i, 1.0) for i in instructions]
    var1 = [1.0] * len(ir1) if in1_var is None else [float(v) for v in in1_var]
    var2 = [1.0] * len(ir2) if in2_var is None else [float(v) for v in in2_var]
    varo = [1.0] * len(iro) if out_var is None else [float(v) for v in out_var]
    coeffs = []
    for i in ins:
        _check_instruction(i, ir1, ir2, iro)
        coeffs.append(
            _normalisation(
                i, ins, ir1, ir2, iro, var1, var2, varo, irrep_normalization, path_normalization
            )  # fmt: skip
        )
    return _build(ir1, ir2, iro, [(*i[:5], c) for i, c in zip(ins, coeffs)])


def _check_instruction(ins: tuple, ir1, ir2, iro) -> None:
    i1, i2, io, mode = ins[:4]
    for i, ir, name in ((i1, ir1, "irreps_in1"), (i2, ir2, "irreps_in2"), (io, iro, "irreps_out")):
        if not 0 <= i < len(ir):
            raise ValueError(f"instruction {ins}: index {i} is out of range for {name}={ir}")
    a, b, c = ir1[i1], ir2[i2], iro[io]
    if a.ir.p * b.ir.p != c.ir.p or not abs(a.ir.l - b.ir.l) <= c.ir.l <= a.ir.l + b.ir.l:
        raise ValueError(f"instruction {ins}: {a.ir} x {b.ir} cannot give {c.ir}")
    if mode not in MODES:
        raise NotImplementedError(
            f"connection mode {mode!r} is not supported by fastcg (supported: {', '.join(MODES)})"
        )
    if mode in ("uvu", "uuu") and c.mul != a.mul:
        raise ValueError(
            f"instruction {ins}: mode {mode} needs mul_out == mul1 ({c.mul} != {a.mul})"
        )
    if mode == "uvv" and c.mul != b.mul:
        raise ValueError(f"instruction {ins}: mode uvv needs mul_out == mul2 ({c.mul} != {b.mul})")
    if mode in ("uuu", "uuw") and a.mul != b.mul:
        raise ValueError(f"instruction {ins}: mode {mode} needs mul1 == mul2 ({a.mul} != {b.mul})")


def _build(ir1, ir2, iro, instructions: list[tuple]) -> TPDescriptor:
    """Descriptor from instructions ``(i1, i2, i_out, mode, has_weight, coeff)``."""
    o1, o2, oo = offsets(ir1), offsets(ir2), offsets(iro)
    paths, w_off = [], 0
    for i1, i2, io, mode, has_weight, coeff in instructions:
        a, b, c = ir1[i1], ir2[i2], iro[io]
        p = Path(
            i1, i2, io, mode, bool(has_weight), float(coeff), a.ir.l, b.ir.l, c.ir.l,
            a.mul, b.mul, c.mul, o1[i1], o2[i2], oo[io], w_off if has_weight else -1,
        )  # fmt: skip
        w_off += p.weight_numel
        if 0 not in (a.mul, b.mul, c.mul):  # e3nn drops empty paths but keeps their weights
            paths.append(p)
    return TPDescriptor(
        str(ir1), str(ir2), str(iro), tuple(paths), ir1.dim, ir2.dim, iro.dim, w_off
    )


def from_e3nn(tp: Any) -> TPDescriptor:
    """Descriptor of an existing ``e3nn.o3.TensorProduct`` (its path weights are final)."""
    ins = [
        (i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight, i.path_weight)
        for i in tp.instructions
    ]
    for i in ins:
        _check_instruction(i, tp.irreps_in1, tp.irreps_in2, tp.irreps_out)
    return _build(tp.irreps_in1, tp.irreps_in2, tp.irreps_out, ins)


@dataclass(frozen=True)
class LinearDescriptor:
    """e3nn ``o3.Linear`` paths: (i_in, i_out, mul_in, mul_out, ir_dim, off_in, off_out, w_off,
    coeff)."""

    irreps_in: str
    irreps_out: str
    paths: tuple[tuple[int, int, int, int, int, int, int, int, float], ...]
    dim_in: int
    dim_out: int
    weight_numel: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tables", _pack_linear(self))  # see TPDescriptor

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(paths int64 [P, 6], path_coeff float64 [P])."""
        return self._tables


def _pack_linear(desc: LinearDescriptor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [p[2:8] for p in desc.paths]
    paths = torch.tensor(rows, dtype=torch.int64).reshape(-1, 6)
    return paths, torch.tensor([p[8] for p in desc.paths], dtype=torch.float64)


def linear_descriptor(
    irreps_in: Any,
    irreps_out: Any,
    instructions: list[tuple[int, int]] | None = None,
    path_normalization: str = "element",
) -> LinearDescriptor:
    """Descriptor of ``e3nn.o3.Linear(irreps_in, irreps_out, instructions=...)`` (no biases).

    >>> linear_descriptor("4x0e+2x1o", "3x0e+1x1o").weight_numel
    14
    """
    ir_in, ir_out = irreps(irreps_in), irreps(irreps_out)
    if path_normalization not in ("element", "path"):
        raise ValueError(f"path_normalization={path_normalization!r} is not one of e3nn's")
    if instructions is None:
        instructions = [
            (i, o) for i, (_, a) in enumerate(ir_in) for o, (_, b) in enumerate(ir_out) if a == b
        ]
    for i, o in instructions:
        if not (0 <= i < len(ir_in) and 0 <= o < len(ir_out)) or ir_in[i].ir != ir_out[o].ir:
            raise ValueError(f"linear instruction {(i, o)} does not match {ir_in} -> {ir_out}")
    oi, oo = offsets(ir_in), offsets(ir_out)
    paths, w_off = [], 0
    for i, o in instructions:
        fan = sum(
            ir_in[j if path_normalization == "element" else i].mul
            for j, p in instructions
            if p == o
        )
        coeff = 1.0 if fan == 0 else fan**-0.5
        mi, mo = ir_in[i].mul, ir_out[o].mul
        if mi * mo > 0:
            paths.append((i, o, mi, mo, ir_in[i].ir.dim, oi[i], oo[o], w_off, coeff))
        w_off += mi * mo
    return LinearDescriptor(str(ir_in), str(ir_out), tuple(paths), ir_in.dim, ir_out.dim, w_off)
