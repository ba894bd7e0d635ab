"""The tensor-product descriptor: the math of an e3nn ``TensorProduct`` as plain data.

A descriptor lists the CG paths of an e3nn ``TensorProduct`` with their normalisation constants
already folded in. ``tables()`` packs it into the int64 / float64 tables every kernel reads (a
:class:`TPTables`, which TorchScript takes), so C++, Triton and CUDA see exactly the same
numbers. What every descriptor shares lives here too: the specification errors, the kernels'
connection modes and :func:`tables_on`, the per-device copy of a descriptor's tables.
"""

import operator
from dataclasses import dataclass
from enum import IntEnum
from math import sqrt
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..cg import sparse_cg
from ..irreps import irreps, offsets


class InvalidSpecification(ValueError, AssertionError):
    """An invalid irreps / instruction specification.

    e3nn raises ``AssertionError`` for these and code around it catches that; Python code
    elsewhere catches ``ValueError``. One class that is both keeps either kind of caller working.
    """


class InvalidIndex(InvalidSpecification, IndexError):
    """An instruction index outside its irreps (e3nn raises ``IndexError`` there)."""


class UnknownMode(InvalidSpecification, KeyError):
    """A connection mode e3nn does not have (e3nn raises ``KeyError`` there)."""

    __str__ = BaseException.__str__  # KeyError's would quote the message


# Kernel modes, in the order of the path table's mode column (csrc/core/common.h Mode).
MODES = ("uvw", "uvu", "uuu", "uvv", "uuw")
# Every connection mode of e3nn 0.6; uvuv, uvu<v and u<vw become several kernel-mode paths.
E3NN_MODES = ("uvw", "uvu", "uvv", "uuw", "uuu", "uvuv", "uvu<v", "u<vw")


def _mode_name(equal: tuple[bool, bool, bool]) -> str:
    """The kernel mode whose roles share channels as ``equal`` (x1 == x2, x1 == out, x2 == out)
    says: x1's letter is u, x2's is u or v, the output's is one of those or w."""
    a = "u"
    b = a if equal[0] else "v"
    c = a if equal[1] else (b if equal[2] else "w")
    return a + b + c


@dataclass(frozen=True)
class ModeRule:
    """A kernel connection mode read from its letters, the channel index of x1, x2 and the output
    ("uvu": the output keeps x1's channel u and sums over x2's v). Every rule of a mode follows
    from the letters, so this is the one place they are written: the weight axes (the distinct
    letters in order), the summed channels (letters the output lacks), e3nn's equal
    multiplicities (repeated letters), the reference's einsum, the kernels' weight strides and,
    for the backward, the mode of a product with its roles permuted (``transpose``)."""

    name: str

    @property
    def equal(self) -> tuple[bool, bool, bool]:
        """Whether (x1, x2), (x1, out) and (x2, out) share a channel index."""
        a, b, c = self.name
        return a == b, a == c, b == c

    def _sizes(self, mul1: int, mul2: int, mul_out: int) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for letter, mul in zip(self.name, (mul1, mul2, mul_out)):
            sizes.setdefault(letter, mul)
        return sizes

    def weight_shape(self, mul1: int, mul2: int, mul_out: int) -> tuple[int, ...]:
        """e3nn's weight shape of one path: one axis per distinct letter."""
        return tuple(self._sizes(mul1, mul2, mul_out).values())

    def summed(self, mul1: int, mul2: int) -> int:
        """Products summed into one output element (e3nn's path normalisation count)."""
        n = 1
        for letter, mul in self._sizes(mul1, mul2, 1).items():
            n *= 1 if letter == self.name[2] else mul
        return n

    def weight_strides(self, mul1: int, mul2: int, mul_out: int) -> tuple[int, int, int]:
        """Strides of x1's, x2's and the output's channel in the row-major weights, 0 for a role
        whose letter an earlier role already indexes (w[p sp + q sq + r sr] with p == r, ...)."""
        sizes = self._sizes(mul1, mul2, mul_out)
        stride, step = {}, 1
        for letter in reversed(list(sizes)):
            stride[letter] = step
            step *= sizes[letter]
        seen: set[str] = set()
        out = []
        for letter in self.name:
            out.append(0 if letter in seen else stride[letter])
            seen.add(letter)
        return out[0], out[1], out[2]

    @property
    def einsum(self) -> str:
        """out[z, c, k] from x1 [z, a, i], x2 [z, b, j], CG [i, j, k] and per-sample weights."""
        a, b, c = self.name
        return f"z{a}i,z{b}j,ijk,z{''.join(dict.fromkeys(self.name))}->z{c}k"

    def mul_errors(self, mul1: int, mul2: int, mul_out: int) -> list[str]:
        """e3nn's equal-multiplicity conditions of this mode, where false."""
        if all(self.equal):
            return [] if mul1 == mul2 == mul_out else ["mul1 == mul2 == mul_out"]
        rules = ((mul1 == mul2, "mul1 == mul2"), (mul1 == mul_out, "mul_out == mul1"),
                 (mul2 == mul_out, "mul_out == mul2"))  # fmt: skip
        return [what for shared, (ok, what) in zip(self.equal, rules) if shared and not ok]

    def transpose(self, perm: tuple[int, int, int]) -> "ModeRule":
        """The mode of the product whose role n is this one's role perm[n] (0 x1, 1 x2, 2 out):
        the backward's products (grad x1 = product of grad out and x2 into x1's place, ...)."""
        eq = {(0, 1): self.equal[0], (0, 2): self.equal[1], (1, 2): self.equal[2]}

        def same(i: int, j: int) -> bool:
            return i == j or eq[(min(i, j), max(i, j))]

        a, b, c = perm
        return MODE_RULES[_mode_name((same(a, b), same(a, c), same(b, c)))]


MODE_RULES = {m: ModeRule(m) for m in MODES}
# Column orders of the int64 tables the kernels read: the one Python naming of each, mirrored
# by the enums of csrc/core/common.h (PathCol, LinCol) and csrc/core/symmetric_contraction.h
# (ScMonoCol, ScPairCol, ScEntryCol); tests/test_table_columns.py compares the two sides. Each
# descriptor's module names its own tables' columns, this one the tensor product's.
# Path table of a tensor product (TPDescriptor.tensors), read by csrc/core/tp.h.
PATH_COLUMNS = (
    "mode", "l1", "l2", "l3", "mul1", "mul2", "mul_out",
    "off1", "off2", "off_out", "w_off", "cg_begin", "cg_end",
)  # fmt: skip


def column_enum(name: str, columns: tuple[str, ...]) -> type[IntEnum]:
    """An IntEnum of a table's columns: ``paths[:, PathCol.w_off]`` instead of ``paths[:, 10]``."""
    return IntEnum(name, [(c, i) for i, c in enumerate(columns)])


PathCol = column_enum("PathCol", PATH_COLUMNS)


def weight_shape(mode: str, mul1: int, mul2: int, mul_out: int) -> tuple[int, ...]:
    """e3nn's weight shape of one instruction (``Instruction.path_shape``), any mode.

    >>> weight_shape("u<vw", 4, 4, 3)
    (6, 3)
    """
    if mode in MODE_RULES:
        return MODE_RULES[mode].weight_shape(mul1, mul2, mul_out)
    pairs = mul1 * (mul2 - 1) // 2  # e3nn's count of u < v pairs (mul1 == mul2 where it is used)
    shapes = {"uvuv": (mul1, mul2), "uvu<v": (pairs,), "u<vw": (pairs, mul_out)}
    if mode not in shapes:
        raise UnknownMode(f"connection mode {mode!r} is not one of e3nn's {E3NN_MODES}")
    return shapes[mode]


def _num_elements(mode: str, mul1: int, mul2: int) -> int:
    """e3nn's number of products summed into one output element (path normalisation)."""
    if mode in MODE_RULES:
        return MODE_RULES[mode].summed(mul1, mul2)
    return {"uvuv": 1, "uvu<v": 1, "u<vw": mul1 * (mul2 - 1) // 2}[mode]


@dataclass(frozen=True)
class Path:
    """One CG path: block i1 of x1 with block i2 of x2 into block i_out of the output.

    ``mode`` is a kernel mode (``MODES``); an e3nn instruction of mode uvuv, uvu<v or u<vw is
    several paths, each reading part of its blocks (``off1``, ``off2``, ``off_out``, ``w_off``
    already point there). ``instruction`` is the index of the e3nn instruction.
    """

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
    instruction: int = -1

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return weight_shape(self.mode, self.mul1, self.mul2, self.mul_out)

    @property
    def weight_numel(self) -> int:
        return int(torch.Size(self.weight_shape).numel()) if self.has_weight else 0


# Real annotations (this module has no `from __future__ import annotations`): TorchScript
# would resolve string ones in the scripted caller's module (pytorch #95858).
class TPTables(NamedTuple):
    """A tensor product's packed tables and sizes (``TPDescriptor.tables(device)``): what
    ``fastcg.tensor_product`` and the ``fastcg.conv`` ops take. TorchScript accepts it, so
    ``fastcg.nn`` modules build one from their buffers in ``forward``.

    ``paths`` int64 [P, 13] (PATH_COLUMNS), ``cg_index`` int64 [NNZ, 3] and ``cg_value`` float64
    [NNZ] (the CG entries times each path's normalisation) are what the kernels read; ``dim1``,
    ``dim2``, ``dim_out`` and ``weight_numel`` are the op's sizes.
    """

    paths: Tensor
    cg_index: Tensor
    cg_value: Tensor
    dim1: int
    dim2: int
    dim_out: int
    weight_numel: int


@dataclass(frozen=True)
class TPDescriptor:
    """All paths of a tensor product, in e3nn's instruction order.

    ``instructions`` are e3nn's final ones, ``(i_in1, i_in2, i_out, mode, has_weight,
    path_weight, path_shape)`` with ``path_weight`` the normalisation constant (sqrt(alpha)).
    """

    irreps_in1: str
    irreps_in2: str
    irreps_out: str
    paths: tuple[Path, ...]
    dim1: int
    dim2: int
    dim_out: int
    weight_numel: int
    instructions: tuple[tuple, ...] = ()

    def __post_init__(self) -> None:
        # Packed once here rather than on each call: torch.compile then sees plain tensors and
        # never traces the packing (or e3nn's wigner_3j behind it).
        object.__setattr__(self, "_tables", _pack(self))

    def tensors(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(paths int64 [P, 13] (PATH_COLUMNS), cg_index int64 [NNZ, 3], cg_value float64 [NNZ]),
        on ``device`` when given (copied once per device)."""
        return tables_on(self, self._tables, device)

    def tables(self, device: torch.device | str | None = None) -> TPTables:
        """What the tensor-product and conv ops take: :meth:`tensors` (the same tensor objects on
        every call) with the sizes.

        >>> d = tensor_product_descriptor("1x1o", "1x1o", "1x0e", [(0, 0, 0, "uuu", False)])
        >>> d.tables().dim_out, d.tables().paths.shape
        (1, torch.Size([1, 13]))
        """
        paths, cg_index, cg_value = self.tensors(device)
        return TPTables(paths, cg_index, cg_value, self.dim1, self.dim2, self.dim_out,
                        self.weight_numel)  # fmt: skip


def tables_on(owner: Any, tables: tuple, device: torch.device | str | None) -> tuple:
    """``tables`` on ``device``, copied once per device and kept by ``owner`` (a descriptor).

    The functional ops pass a descriptor's tables every call: the same tensors each time, so the
    Triton launchers find their plans by the tensors' identity instead of reading them again (a
    device-to-host copy on a GPU) and no host-to-device copy is made per call.
    """
    if device is None or all(t.device == torch.device(device) for t in tables):
        return tables
    key = torch.device(device)
    cache = owner.__dict__.setdefault("_tables_on", {})  # frozen dataclass: not a field
    if key not in cache:
        cache[key] = tuple(t.to(key) for t in tables)
    return cache[key]


def _pack(desc: TPDescriptor) -> tuple[Tensor, Tensor, Tensor]:
    rows, idx, val = [], [], []
    prev, begin = None, 0
    for p in desc.paths:
        # the paths of one expanded instruction share its CG rows (same l1, l2, l3 and coeff)
        if prev is None or p.instruction < 0 or p.instruction != prev.instruction:
            begin = len(val)
            for i, j, k, c in sparse_cg(p.l1, p.l2, p.l3):
                idx.append((i, j, k))
                val.append(c * p.coeff)
        # by name, so the row follows PATH_COLUMNS; the other columns are Path fields
        own = {"mode": MODES.index(p.mode), "cg_begin": begin, "cg_end": len(val)}
        rows.append(tuple(own[c] if c in own else getattr(p, c) for c in PATH_COLUMNS))
        prev = p
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
    alpha *= varo[io] * path_weight
    if alpha < 0:  # e3nn: math.sqrt's ValueError
        raise InvalidSpecification(
            f"instruction {ins}: path_weight * out_var * normalisation = {alpha} is negative"
        )
    return sqrt(alpha)


def _variances(var: Any, ir: Any, name: str) -> list[float]:
    """Per-irrep variances (list or tensor; None: ones), checked like e3nn."""
    if var is None:
        return [1.0] * len(ir)
    var = [float(v) for v in var]
    if len(var) != len(ir):
        raise InvalidSpecification(
            f"len({name}) = {len(var)} must equal the number of irreps ({len(ir)} in {ir})"
        )
    return var


def _as_instruction(ins: Any) -> tuple:
    """``(i1, i2, i_out, mode, has_weight, path_weight)`` (path_weight defaults to 1)."""
    ins = tuple(ins)
    if len(ins) not in (5, 6):
        raise InvalidSpecification(
            f"instruction {ins} must be (i_in1, i_in2, i_out, mode, has_weight[, path_weight])"
        )
    try:
        index = tuple(operator.index(i) for i in ins[:3])  # ints, numpy ints, 0-d int tensors
    except TypeError:
        raise InvalidIndex(f"instruction {ins}: the indices must be integers") from None
    return (*index, *ins[3:5], ins[5] if len(ins) == 6 else 1.0)


def tensor_product_descriptor(
    irreps_in1: Any,
    irreps_in2: Any,
    irreps_out: Any,
    instructions: list[tuple],
    in1_var: list[float] | torch.Tensor | None = None,
    in2_var: list[float] | torch.Tensor | None = None,
    out_var: list[float] | torch.Tensor | None = None,
    irrep_normalization: str = "component",
    path_normalization: str = "element",
) -> TPDescriptor:
    """Descriptor of ``e3nn.o3.TensorProduct`` with the same arguments (every connection mode).

    Raises ``InvalidSpecification`` (a ValueError and an AssertionError) wherever e3nn's
    constructor raises.

    >>> d = tensor_product_descriptor("2x1o", "1x1o", "2x0e", [(0, 0, 0, "uvu", True)])
    >>> d.weight_numel
    2
    """
    ir1, ir2, iro = irreps(irreps_in1), irreps(irreps_in2), irreps(irreps_out)
    if irrep_normalization not in ("component", "norm", "none"):
        raise InvalidSpecification(
            f"irrep_normalization={irrep_normalization!r} is not one of e3nn's "
            "('component', 'norm', 'none')"
        )
    if path_normalization not in ("element", "path", "none"):
        raise InvalidSpecification(
            f"path_normalization={path_normalization!r} is not one of e3nn's "
            "('element', 'path', 'none')"
        )
    ins = [_as_instruction(i) for i in instructions]
    for i in ins:
        _check_instruction(i, ir1, ir2, iro)
    _check_e3nn_codegen(ins, ir1, ir2, iro)
    var = (_variances(in1_var, ir1, "in1_var"), _variances(in2_var, ir2, "in2_var"),
           _variances(out_var, iro, "out_var"))  # fmt: skip
    norms = (irrep_normalization, path_normalization)
    final = [(*i[:5], _normalisation(i, ins, ir1, ir2, iro, *var, *norms)) for i in ins]
    return _build(ir1, ir2, iro, final)


def mode_errors(mode: str, has_weight: bool, m1: int, m2: int, mo: int) -> list[str]:
    """What e3nn's code generator asserts about a non-empty path of this mode, where false."""
    if mode in MODE_RULES:
        # beyond the letters: uvw has nothing to sum over without weights, and an unweighted
        # uuw sums every channel into one
        errors = MODE_RULES[mode].mul_errors(m1, m2, mo)
        if mode == "uvw" and not has_weight:
            errors.append("weights")
        if mode == "uuw" and not (has_weight or mo == 1):
            errors.append("mul_out == 1 unweighted")
        return errors
    rules = {
        "uvuv": [(m1 * m2 == mo, "mul_out == mul1 * mul2")],
        "uvu<v": [(m1 == m2, "mul1 == mul2"),
                  (m1 * (m1 - 1) // 2 == mo, "mul_out == mul1 * (mul1 - 1) / 2")],
        "u<vw": [(m1 == m2, "mul1 == mul2"), (has_weight, "weights")],
    }[mode]  # fmt: skip
    return [what for ok, what in rules if not ok]


def _check_instruction(ins: tuple, ir1, ir2, iro) -> None:
    """Raise ``InvalidSpecification`` where e3nn's TensorProduct rejects this instruction."""
    i1, i2, io, mode, has_weight = ins[:5]
    for i, ir, name in ((i1, ir1, "irreps_in1"), (i2, ir2, "irreps_in2"), (io, iro, "irreps_out")):
        # e3nn takes a negative index as Python does, and silently drops a path whose i_out
        # is negative from its output; fastcg refuses negative indices
        if not 0 <= i < len(ir):
            raise InvalidIndex(f"instruction {ins}: index {i!r} is out of range for {name}={ir}")
    if mode not in E3NN_MODES:
        raise UnknownMode(f"instruction {ins}: connection mode {mode!r} is not one of e3nn's "
                          f"{E3NN_MODES}")  # fmt: skip
    a, b, c = ir1[i1], ir2[i2], iro[io]
    if a.ir.p * b.ir.p != c.ir.p or not abs(a.ir.l - b.ir.l) <= c.ir.l <= a.ir.l + b.ir.l:
        raise InvalidSpecification(f"instruction {ins}: {a.ir} x {b.ir} cannot give {c.ir}")
    shape = weight_shape(mode, a.mul, b.mul, c.mul)
    if min(shape, default=0) < 0:  # e3nn would count a negative number of weights
        raise InvalidSpecification(
            f"instruction {ins}: mode {mode} needs mul1 == mul2 ({a.mul} != {b.mul})"
        )
    if 0 in shape or 0 in (a.mul, b.mul, c.mul):
        return  # e3nn generates no code for an empty path, and checks nothing more
    errors = mode_errors(mode, bool(has_weight), a.mul, b.mul, c.mul)
    if errors:
        raise InvalidSpecification(
            f"instruction {ins}: mode {mode} needs {' and '.join(errors)} (mul1={a.mul}, "
            f"mul2={b.mul}, mul_out={c.mul})"
        )


def _check_e3nn_codegen(ins: list[tuple], ir1, ir2, iro) -> None:
    """Raise where e3nn 0.6's code generator fails on instructions that pass its checks.

    e3nn generates code for every path whose weight shape has no 0 and then skips those with an
    empty block. With every output block empty, it then indexes an empty list (IndexError) when
    it builds the module. Its other mishaps with such paths are not copied: its einsum optimiser
    fails on them (an operand without components, weights of a skipped path), and after a
    skipped path it adds each later path's output to the block of the path before; fastcg
    computes every path into its own block, with e3nn's weight layout (``weight_views``).
    """
    if iro.dim > 0:
        return
    muls = [(ir1[i[0]].mul, ir2[i[1]].mul, iro[i[2]].mul) for i in ins]
    coded = [i for i, m in zip(ins, muls) if 0 not in weight_shape(i[3], *m)]
    if coded:
        raise InvalidIndex(
            f"irreps_out={iro} is empty but instructions {coded} have weight shapes without 0; "
            "e3nn 0.6 cannot build this either (IndexError)"
        )


def _expand(
    mode: str, m1: int, m2: int, mo: int, d1: int, d2: int, d3: int
) -> list[tuple[str, int, int, int, int, int, int, int]]:
    """Kernel paths ``(mode, mul1, mul2, mul_out, off1, off2, off_out, w_off)`` (offsets
    relative to the instruction's blocks) of one non-empty instruction: uvuv, uvu<v and u<vw
    become one path per channel u of x1, in e3nn's output and weight order."""
    if mode in MODES:
        return [(mode, m1, m2, mo, 0, 0, 0, 0)]
    if mode == "uvuv" and m2 == 1:  # out[u] = w[u] x1[u] x2[0]: one uvu path, same layout
        return [("uvu", m1, 1, m1, 0, 0, 0, 0)]
    if mode == "uvuv":  # out[u * m2 + v] = w[u, v] x1[u] x2[v]: a uvv path per u
        return [("uvv", 1, m2, m2, u * d1, 0, u * m2 * d3, u * m2) for u in range(m1)]
    # uvu<v and u<vw: the pairs u < v in torch.triu_indices(m1, m1, 1) order (row-major);
    # row u holds pairs start .. start + n - 1, v = u + 1 .. m1 - 1
    rows, start = [], 0
    for u in range(m1 - 1):
        n = m1 - 1 - u
        if mode == "uvu<v":  # out[pair] = w[pair] x1[u] x2[v]
            rows.append(("uvv", 1, n, n, u * d1, (u + 1) * d2, start * d3, start))
        else:  # u<vw: out[w] = sum over pairs of w[pair, w] x1[u] x2[v]
            rows.append(("uvw", 1, n, mo, u * d1, (u + 1) * d2, 0, start * mo))
        start += n
    return rows


def _build(ir1, ir2, iro, instructions: list[tuple]) -> TPDescriptor:
    """Descriptor from checked instructions ``(i1, i2, i_out, mode, has_weight, coeff)``."""
    o1, o2, oo = offsets(ir1), offsets(ir2), offsets(iro)
    paths, final, w_off = [], [], 0
    for n, (i1, i2, io, mode, has_weight, coeff) in enumerate(instructions):
        a, b, c = ir1[i1], ir2[i2], iro[io]
        shape = weight_shape(mode, a.mul, b.mul, c.mul)
        final.append((i1, i2, io, mode, bool(has_weight), float(coeff), shape))
        if 0 not in (a.mul, b.mul, c.mul) and 0 not in shape:  # e3nn keeps their weights
            for km, m1, m2, mo, d1, d2, do, dw in _expand(
                mode, a.mul, b.mul, c.mul, a.ir.dim, b.ir.dim, c.ir.dim
            ):
                paths.append(Path(
                    i1, i2, io, km, bool(has_weight), float(coeff), a.ir.l, b.ir.l, c.ir.l,
                    m1, m2, mo, o1[i1] + d1, o2[i2] + d2, oo[io] + do,
                    w_off + dw if has_weight else -1, n,
                ))  # fmt: skip
        w_off += int(torch.Size(shape).numel()) if has_weight else 0
    return TPDescriptor(
        str(ir1), str(ir2), str(iro), tuple(paths), ir1.dim, ir2.dim, iro.dim, w_off, tuple(final)
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
