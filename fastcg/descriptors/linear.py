"""The linear descriptor: ``e3nn.o3.Linear`` as plain data, packed once into the tables the
``linear`` kernels read (a :class:`LinearTables`, which TorchScript takes)."""

import operator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..irreps import irreps, offsets
from .tensor_product import InvalidIndex, InvalidSpecification, column_enum, tables_on

# Path table of a linear layer (LinearDescriptor.tensors), read by csrc/core/linear.h; mirrored
# by csrc/core/common.h's LinCol (tests/test_table_columns.py compares them).
LINEAR_COLUMNS = ("mul_in", "mul_out", "ir_dim", "off_in", "off_out", "w_off")
LinCol = column_enum("LinCol", LINEAR_COLUMNS)


# Real annotations (this module has no `from __future__ import annotations`): TorchScript
# would resolve string ones in the scripted caller's module (pytorch #95858).
class LinearTables(NamedTuple):
    """A linear layer's packed tables and sizes (``LinearDescriptor.tables(device)``): what
    ``fastcg.linear`` takes. TorchScript accepts it, so ``fastcg.nn`` modules build one from
    their buffers in ``forward``.

    ``paths`` int64 [P, 6] (LINEAR_COLUMNS) and ``path_coeff`` float64 [P] (each path's
    normalisation) are what the kernels read; ``dim_in``, ``dim_out`` and ``weight_numel`` are
    the op's sizes (with e3nn's channel axes: ``f_in * irreps_in.dim`` and so on).
    """

    paths: Tensor
    path_coeff: Tensor
    dim_in: int
    dim_out: int
    weight_numel: int


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

    def tensors(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """(paths int64 [P, 6] with LINEAR_COLUMNS, path_coeff float64 [P]), on ``device`` when
        given (copied once per device)."""
        return tables_on(self, self._tables, device)

    def tables(self, device: torch.device | str | None = None) -> LinearTables:
        """What the ``linear`` op takes: :meth:`tensors` (the same tensor objects on every call)
        with the op's sizes.

        >>> linear_descriptor("4x0e+2x1o", "3x0e+1x1o").tables().dim_out
        6
        """
        paths, path_coeff = self.tensors(device)
        return LinearTables(paths, path_coeff, self.dim_in, self.dim_out, self.weight_numel)

    @property
    def bias_numel(self) -> int:
        """Number of biases per output channel (e3nn's ``Linear.bias_numel``)."""
        return sum(s[0] for i, _, s, _ in self.instructions if i == -1)


# Fields of a LinearDescriptor.paths tuple (as _linear_build writes them), by which _pack_linear
# picks the table's columns.
LINEAR_PATH_FIELDS = (
    "i_in", "i_out", "mul_in", "mul_out", "ir_dim", "off_in", "off_out", "w_off", "coeff",
)  # fmt: skip


def _pack_linear(desc: LinearDescriptor) -> tuple[Tensor, Tensor]:
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
