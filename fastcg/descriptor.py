"""Tensor-product and linear descriptors: the math of an op as plain data.

A descriptor lists the CG paths of an e3nn ``TensorProduct`` (or ``Linear``) with their
normalisation constants already folded in. ``tensors()`` packs it into the int64 / float64
tables every kernel reads, so C++, Triton and CUDA see exactly the same numbers.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from enum import IntEnum
from math import sqrt
from typing import Any

import torch

from .cg import sparse_cg
from .irreps import irreps, offsets


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

    def transpose(self, perm: tuple[int, int, int]) -> ModeRule:
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
# (ScMonoCol, ScPairCol, ScEntryCol); tests/test_table_columns.py compares the two sides.
# Path table of a tensor product (TPDescriptor.tensors), read by csrc/core/tp.h.
PATH_COLUMNS = (
    "mode", "l1", "l2", "l3", "mul1", "mul2", "mul_out",
    "off1", "off2", "off_out", "w_off", "cg_begin", "cg_end",
)  # fmt: skip
# Path table of a linear layer (LinearDescriptor.tensors).
LINEAR_COLUMNS = ("mul_in", "mul_out", "ir_dim", "off_in", "off_out", "w_off")
# Symmetric contraction tables (SymmetricContractionDescriptor.tensors): monomial = parent
# monomial (-1 for a single variable) times variable var; pair = output column out, monomial
# mono; entry = pair, weight row k. Its out_cols table (start, dim) has no C++ enum.
SC_MONO_COLUMNS = ("parent", "var")
SC_PAIR_COLUMNS = ("out", "mono")
SC_ENTRY_COLUMNS = ("pair", "k")


def _columns(name: str, columns: tuple[str, ...]) -> type[IntEnum]:
    """An IntEnum of a table's columns: ``paths[:, PathCol.w_off]`` instead of ``paths[:, 10]``."""
    return IntEnum(name, [(c, i) for i, c in enumerate(columns)])


PathCol = _columns("PathCol", PATH_COLUMNS)
LinCol = _columns("LinCol", LINEAR_COLUMNS)
ScMonoCol = _columns("ScMonoCol", SC_MONO_COLUMNS)
ScPairCol = _columns("ScPairCol", SC_PAIR_COLUMNS)
ScEntryCol = _columns("ScEntryCol", SC_ENTRY_COLUMNS)


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

    def tensors(
        self, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(paths int64 [P, 13] (PATH_COLUMNS), cg_index int64 [NNZ, 3], cg_value float64 [NNZ]),
        on ``device`` when given (copied once per device)."""
        return tables_on(self, self._tables, device)


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


def _pack(desc: TPDescriptor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


@dataclass(frozen=True)
class LinearDescriptor:
    """``e3nn.o3.Linear`` as data.

    ``instructions`` are e3nn's ``(i_in, i_out, path_shape, path_weight)`` in e3nn's order, empty
    paths included and biases (``i_in == -1``) last. ``paths`` are what the kernels run, the
    non-empty weighted paths: (i_in, i_out, mul_in, mul_out, ir_dim, off_in, off_out, w_off,
    coeff). ``dim_in``, ``dim_out`` and ``weight_numel`` are the op's sizes: with e3nn's channel
    axes ``f_in`` / ``f_out`` the op sees x as ``[..., f_in * irreps_in.dim]``, the output as
    ``[..., f_out * irreps_out.dim]`` and the weights as ``[f_in * f_out * n]`` (e3nn's
    ``[f_in, f_out, n]`` flattened), with one path per (channel in, channel out, instruction).
    """

    irreps_in: str
    irreps_out: str
    paths: tuple[tuple[int, int, int, int, int, int, int, int, float], ...]
    dim_in: int
    dim_out: int
    weight_numel: int
    instructions: tuple[tuple[int, int, tuple[int, ...], float], ...] = ()
    f_in: int | None = None
    f_out: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tables", _pack_linear(self))  # see TPDescriptor

    def tensors(
        self, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(paths int64 [P, 6] with LINEAR_COLUMNS, path_coeff float64 [P]), on ``device`` when
        given (copied once per device)."""
        return tables_on(self, self._tables, device)

    @property
    def bias_numel(self) -> int:
        """Number of biases per output channel (e3nn's ``Linear.bias_numel``)."""
        return sum(s[0] for i, _, s, _ in self.instructions if i == -1)


# Fields of a LinearDescriptor.paths tuple (as _linear_build writes them), by which _pack_linear
# picks the table's columns.
LINEAR_PATH_FIELDS = (
    "i_in", "i_out", "mul_in", "mul_out", "ir_dim", "off_in", "off_out", "w_off", "coeff",
)  # fmt: skip


def _pack_linear(desc: LinearDescriptor) -> tuple[torch.Tensor, torch.Tensor]:
    cols = [LINEAR_PATH_FIELDS.index(c) for c in LINEAR_COLUMNS]
    coeff = LINEAR_PATH_FIELDS.index("coeff")
    rows = [[p[i] for i in cols] for p in desc.paths]
    paths = torch.tensor(rows, dtype=torch.int64).reshape(-1, len(LINEAR_COLUMNS))
    return paths, torch.tensor([p[coeff] for p in desc.paths], dtype=torch.float64)


def _linear_pairs(instructions: Any, ir_in: Any, ir_out: Any) -> list[tuple[int, int]]:
    """e3nn's ``(i_in, i_out)`` pairs, checked where e3nn's constructor raises."""
    if instructions is None:  # e3nn's default: every pair of equal irreps
        return [(i, o) for i, (_, a) in enumerate(ir_in) for o, (_, b) in enumerate(ir_out)
                if a == b]  # fmt: skip
    pairs = []
    for ins in instructions:
        try:
            i, o = ins
        except (TypeError, ValueError):
            raise InvalidSpecification(
                f"linear instruction {ins!r} must be (i_in, i_out)"
            ) from None
        try:
            i, o = operator.index(i), operator.index(o)
        except TypeError:
            raise InvalidIndex(
                f"linear instruction {ins!r}: the indices must be integers"
            ) from None
        # e3nn reads a negative index Python's way, and -1 as its bias marker: refused here
        if not 0 <= i < len(ir_in):
            raise InvalidIndex(f"linear instruction {(i, o)}: {i} is not a valid index for "
                               f"irreps_in = {ir_in} ({len(ir_in)} blocks)")  # fmt: skip
        if not 0 <= o < len(ir_out):
            raise InvalidIndex(f"linear instruction {(i, o)}: {o} is not a valid index for "
                               f"irreps_out = {ir_out} ({len(ir_out)} blocks)")  # fmt: skip
        if ir_in[i].ir != ir_out[o].ir:
            raise InvalidSpecification(
                f"linear instruction {(i, o)}: irreps_in[{i}] = {ir_in[i]} "
                f"and irreps_out[{o}] = {ir_out[o]} are different irreps"
            )
        pairs.append((i, o))
    return pairs


def _linear_biases(biases: Any, ir_out: Any) -> list[bool]:
    """e3nn's per-output-block bias flags: ``True`` means every ``0e`` block."""
    if biases is None:
        return [False] * len(ir_out)
    if isinstance(biases, bool):
        return [biases and ir.is_scalar() for _, ir in ir_out]
    biases = [bool(b) for b in biases]
    if len(biases) != len(ir_out):
        raise InvalidSpecification(
            f"biases has {len(biases)} entries but irreps_out = {ir_out} has {len(ir_out)} blocks"
        )
    for o, (b, (_, ir)) in enumerate(zip(biases, ir_out)):
        if b and not ir.is_scalar():
            raise InvalidSpecification(f"biases[{o}]: only 0e outputs can have a bias, not {ir}")
    return biases


def _channels(f_in: Any, f_out: Any) -> tuple[int | None, int | None]:
    if f_in is None and f_out is None:
        return None, None
    if f_in is None or f_out is None:  # e3nn breaks (TypeError or a wrong reshape) with one
        raise InvalidSpecification(f"f_in and f_out go together, got f_in={f_in}, f_out={f_out}")
    try:
        f_in, f_out = operator.index(f_in), operator.index(f_out)
    except TypeError:
        raise InvalidSpecification(
            f"f_in / f_out must be integers, got {f_in!r}, {f_out!r}"
        ) from None
    if f_in < 1 or f_out < 1:
        raise InvalidSpecification(f"f_in and f_out must be >= 1, got {f_in}, {f_out}")
    return f_in, f_out


def linear_descriptor(
    irreps_in: Any,
    irreps_out: Any,
    instructions: list[tuple[int, int]] | None = None,
    path_normalization: str = "element",
    *,
    biases: bool | list[bool] = False,
    f_in: int | None = None,
    f_out: int | None = None,
) -> LinearDescriptor:
    """Descriptor of ``e3nn.o3.Linear`` with the same arguments.

    Raises ``InvalidSpecification`` (a ValueError and an AssertionError; ``InvalidIndex`` for an
    index out of range, also an IndexError) wherever e3nn's constructor raises.

    >>> linear_descriptor("4x0e+2x1o", "3x0e+1x1o").weight_numel
    14
    """
    ir_in, ir_out = irreps(irreps_in), irreps(irreps_out)
    if path_normalization not in ("element", "path"):
        raise InvalidSpecification(
            f"path_normalization={path_normalization!r} is not one of e3nn's ('element', 'path')"
        )
    pairs = _linear_pairs(instructions, ir_in, ir_out)
    bias = _linear_biases(biases, ir_out)
    f_in, f_out = _channels(f_in, f_out)
    ins = []
    for i, o in pairs:  # e3nn's path weight: 1 / sqrt(fan-in of output block o)
        norm = path_normalization == "element"
        fan = sum(ir_in[j if norm else i].mul for j, p in pairs if p == o) * (f_in or 1)
        ins.append((i, o, (ir_in[i].mul, ir_out[o].mul), (1.0 if fan == 0 else fan) ** -0.5))
    ins += [(-1, o, (ir_out[o].dim,), 1.0) for o, b in enumerate(bias) if b]
    return _linear_build(ir_in, ir_out, ins, f_in, f_out)


def _linear_build(ir_in: Any, ir_out: Any, ins: list, f_in: int | None, f_out: int | None):
    """Kernel paths of e3nn instructions ``(i_in, i_out, path_shape, path_weight)``."""
    oi, oo = offsets(ir_in), offsets(ir_out)
    weighted = [i for i in ins if i[0] != -1]
    numel = sum(s[0] * s[1] for _, _, s, _ in weighted)
    paths = []
    for x in range(f_in or 1):
        for y in range(f_out or 1):
            w_off = (x * (f_out or 1) + y) * numel
            for i, o, (mi, mo), coeff in weighted:
                if mi * mo > 0:
                    d = ir_in[i].ir.dim
                    paths.append((i, o, mi, mo, d, x * ir_in.dim + oi[i], y * ir_out.dim + oo[o],
                                  w_off, coeff))  # fmt: skip
                w_off += mi * mo
    fi, fo = f_in or 1, f_out or 1
    return LinearDescriptor(
        str(ir_in), str(ir_out), tuple(paths), fi * ir_in.dim, fo * ir_out.dim, fi * fo * numel,
        tuple((i, o, tuple(s), float(c)) for i, o, s, c in ins), f_in, f_out,
    )  # fmt: skip


def linear_from_e3nn(module: Any) -> LinearDescriptor:
    """Descriptor of an existing ``e3nn.o3.Linear`` (its path weights are final)."""
    ir_in, ir_out = module.irreps_in, module.irreps_out
    ins = [(i.i_in, i.i_out, tuple(i.path_shape), i.path_weight) for i in module.instructions]
    _linear_pairs([i[:2] for i in ins if i[0] != -1], ir_in, ir_out)
    f_in = f_out = None
    if module.weight.dim() > 1:  # e3nn's weight is [f_in, f_out, n] with channel axes
        f_in, f_out = module.weight.shape[0], module.weight.shape[1]
    return _linear_build(ir_in, ir_out, ins, f_in, f_out)
