"""``e3nn.o3.Linear`` on the fastcg linear op: same arguments, weights, biases and state_dict."""

from collections.abc import Iterator
from math import prod
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..descriptors import (
    InvalidSpecification,
    LinearDescriptor,
    LinearTables,
    linear_descriptor,
    linear_from_e3nn,
)
from ..irreps import irreps as to_irreps
from ..irreps import o3
from ..ops import linear
from ..ops.tensor_product import broadcast
from .tensor_product import Float64Tables, load_twin


class Instruction(NamedTuple):
    """e3nn's linear ``Instruction``; ``i_in == -1`` marks a bias."""

    i_in: int
    i_out: int
    path_shape: tuple
    path_weight: float


class LinearSlices(NamedTuple):
    """e3nn's ``LinearSlices``: where an instruction's weights lie in the flat weight vector."""

    slice_1D: slice
    shape_2D: tuple


class Linear(Float64Tables):
    """Equivariant linear layer, ``e3nn.o3.Linear`` with the same arguments, weights and numbers.

    ``f_in`` / ``f_out`` add e3nn's channel axes: x ``[..., f_in, irreps_in.dim]`` ->
    ``[..., f_out, irreps_out.dim]`` with weights ``[f_in, f_out, weight_numel]``. With
    ``shared_weights=False`` the weights are ``[..., weight_numel]`` (``[..., f_in, f_out,
    weight_numel]``), one set per sample; their batch dimensions broadcast with the input's.
    Biases given to ``forward`` may have batch dimensions too.

    Where e3nn itself fails (a bias on an output block no weight reaches, per-sample biases,
    an empty ``irreps_in`` with biases) this layer computes the evident result instead.

    >>> lin = Linear("4x0e+16x1o", "8x0e+8x1o")
    >>> lin.weight_numel
    160
    """

    weight_numel: int
    bias_numel: int
    internal_weights: bool
    shared_weights: bool
    _optimize_einsums: bool
    _dim_in: int
    _dim_out: int
    _f_in: int
    _f_out: int
    _has_f: bool
    _op_weight_numel: int
    _float64_tables = ("_path_coeff",)
    __e3nn_compile_mode__ = "script"  # e3nn.util.jit.compile scripts us

    def __init__(
        self,
        irreps_in: Any,
        irreps_out: Any,
        *,
        f_in: int | None = None,
        f_out: int | None = None,
        internal_weights: bool | None = None,
        shared_weights: bool | None = None,
        instructions: list[tuple[int, int]] | None = None,
        biases: bool | list[bool] = False,
        path_normalization: str = "element",
        _optimize_einsums: bool | None = None,
    ) -> None:
        super().__init__()
        # validates, raising InvalidSpecification wherever e3nn's constructor raises
        desc = linear_descriptor(irreps_in, irreps_out, instructions, path_normalization,
                                 biases=biases, f_in=f_in, f_out=f_out)  # fmt: skip
        self._setup(desc, internal_weights, shared_weights, _optimize_einsums)

    def _setup(
        self, desc: LinearDescriptor, internal_weights: bool | None, shared_weights: bool | None,
        optimize_einsums: bool | None,
    ) -> None:  # fmt: skip
        internal, shared = _weight_flags(internal_weights, shared_weights)
        self.internal_weights, self.shared_weights = internal, shared
        if optimize_einsums is None:  # only recorded: there are no einsums to optimise
            optimize_einsums = _e3nn_default("optimize_einsums")
        self._optimize_einsums = bool(optimize_einsums)
        self.irreps_in, self.irreps_out = to_irreps(desc.irreps_in), to_irreps(desc.irreps_out)
        self.descriptor = desc
        self.instructions = [Instruction(i, o, s, c) for i, o, s, c in desc.instructions]
        self.weight_numel = sum(prod(i.path_shape) for i in self.instructions if i.i_in != -1)
        self.bias_numel = desc.bias_numel
        self._has_f = desc.f_in is not None
        self._f_in, self._f_out = desc.f_in or 1, desc.f_out or 1
        self._dim_in, self._dim_out = self.irreps_in.dim, self.irreps_out.dim
        self._op_weight_numel = desc.weight_numel
        w_lead = [self._f_in, self._f_out] if self._has_f else []
        if internal and self.weight_numel > 0:
            self.weight = torch.nn.Parameter(torch.randn(*w_lead, self.weight_numel))
        else:  # TorchScript needs some .weight
            self.register_buffer("weight", torch.Tensor())
        if internal and self.bias_numel > 0:
            b_lead = [self._f_out] if self._has_f else []
            self.bias = torch.nn.Parameter(torch.zeros(*b_lead, self.bias_numel))
        else:
            self.register_buffer("bias", torch.Tensor())
        self.register_buffer("output_mask", _output_mask(self.irreps_out, self.instructions))
        self.weight_index_slices = _slices(self.instructions)
        paths, coeff = desc.tensors()
        self.register_buffer("_paths", paths, persistent=False)
        self.register_buffer("_path_coeff", coeff, persistent=False)
        self.register_buffer("_bias_index", _bias_index(self.irreps_out, self.instructions),
                             persistent=False)  # fmt: skip

    @classmethod
    def from_e3nn(cls, module: torch.nn.Module) -> "Linear":
        """The fastcg twin of an ``e3nn.o3.Linear`` (instructions, biases, weights, flags)."""
        desc = linear_from_e3nn(module)
        if desc.f_in is None and module.weight.numel() == 0 and not _plain_path_weights(module):
            raise NotImplementedError(
                "this e3nn Linear has external weights and path weights of f_in / f_out "
                "channels, whose sizes it does not record: build fastcg.nn.Linear directly"
            )
        twin = cls.__new__(cls)
        Float64Tables.__init__(twin)
        twin._setup(desc, module.internal_weights, module.shared_weights,
                    getattr(module, "_optimize_einsums", None))  # fmt: skip
        return load_twin(twin, module)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.irreps_in} -> {self.irreps_out} | "
                f"{self.weight_numel} weights)")  # fmt: skip

    def forward(
        self, features: Tensor, weight: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        """``features[..., irreps_in.dim] -> [..., irreps_out.dim]`` (with ``f_in`` / ``f_out``:
        ``[..., f_in, irreps_in.dim] -> [..., f_out, irreps_out.dim]``)."""
        if weight is None:
            if self.weight_numel > 0 and not self.internal_weights:
                raise RuntimeError("Weights must be provided when internal_weights = False")
            weight = self.weight
        if bias is None:
            if self.bias_numel > 0 and not self.internal_weights:
                raise RuntimeError("Biases must be provided when internal_weights = False")
            bias = self.bias
        out = self._linear(self._flat_features(features), weight)
        if self._has_f:
            out = out.reshape(list(out.shape[:-1]) + [self._f_out, self._dim_out])
        if self.bias_numel > 0:
            b = self._bias(bias)
            shape = list(b.shape[:-1]) + [self._dim_out]
            out = out + b.new_zeros(shape).index_copy(b.dim() - 1, self._bias_index, b)
        return out

    def _flat_features(self, x: Tensor) -> Tensor:
        """``[..., (f_in,) dim_in]`` as the op's ``[..., f_in * dim_in]``."""
        if x.dim() == 0 or x.shape[-1] != self._dim_in:
            raise ValueError(f"features must have last dimension {self._dim_in} (irreps_in.dim), "
                             f"got shape {list(x.shape)}")  # fmt: skip
        if not self._has_f:
            return x
        if x.dim() < 2 or x.shape[-2] != self._f_in:
            raise ValueError(f"features must be [..., f_in={self._f_in}, {self._dim_in}], "
                             f"got shape {list(x.shape)}")  # fmt: skip
        return x.reshape(list(x.shape[:-2]) + [self._f_in * self._dim_in])

    def _linear(self, x: Tensor, weight: Tensor) -> Tensor:
        dim_in, dim_out = self._f_in * self._dim_in, self._f_out * self._dim_out
        n = self._op_weight_numel
        tables = LinearTables(self._paths, self._path_coeff, dim_in, dim_out, n)
        if self._paths.shape[0] == 0:  # no non-empty path: zeros, as e3nn
            return x.new_zeros(list(x.shape[:-1]) + [dim_out])
        if self.shared_weights:
            if weight.numel() != n:
                raise ValueError(f"weight must have {n} elements ([{self._f_in}, {self._f_out}, "
                                 f"{self.weight_numel}] or [{self.weight_numel}]), got shape "
                                 f"{list(weight.shape)}")  # fmt: skip
            return linear(x, weight.reshape(n), tables)
        # Per-sample weights: row b of the batch is its own "species" with weights w[b].
        w = self._per_sample(weight)
        batch = broadcast(list(x.shape[:-1]), list(w.shape[:-1]))
        x = x.expand(batch + [dim_in]).reshape(-1, dim_in)
        w = w.expand(batch + [n]).reshape(-1, n)
        species = torch.arange(x.shape[0], device=x.device)
        out = linear(x, w, tables, species)
        return out.reshape(batch + [dim_out])

    def _per_sample(self, weight: Tensor) -> Tensor:
        """Per-sample weights ``[..., (f_in, f_out,) weight_numel]`` as ``[..., n]``."""
        n, s = self._op_weight_numel, list(weight.shape)
        if self._has_f and len(s) >= 3 and s[-3:] == [self._f_in, self._f_out, self.weight_numel]:
            return weight.reshape(s[:-3] + [n])
        if len(s) == 0 or s[-1] != n:
            raise ValueError(f"weight must be [..., {n}] with shared_weights=False, got shape {s}")
        return weight

    def _bias(self, bias: Tensor) -> Tensor:
        """Biases ``[..., (f_out,) bias_numel]``, checked."""
        n, s = self.bias_numel, list(bias.shape)
        if self._has_f:
            if len(s) >= 1 and s[-1] == self._f_out * n and not (len(s) >= 2 and s[-2:] == [
                    self._f_out, n]):  # fmt: skip
                return bias.reshape(s[:-1] + [self._f_out, n])
            if len(s) < 2 or s[-2:] != [self._f_out, n]:
                raise ValueError(f"bias must be [..., {self._f_out}, {n}], got shape {s}")
        elif len(s) == 0 or s[-1] != n:
            raise ValueError(f"bias must be [..., {n}], got shape {s}")
        return bias

    def weight_view_for_instruction(self, instruction: int, weight: Tensor | None = None) -> Tensor:
        """View of ``weight`` (default: this module's) for the ``instruction``-th instruction,
        ``[..., mul_in, mul_out]`` (as e3nn; a bias instruction has no weights)."""
        if weight is None:
            assert self.internal_weights, "Weights must be provided when internal_weights = False"
            weight = self.weight
        ins = self.instructions[instruction]
        if ins.i_in == -1:
            raise ValueError(f"instruction {instruction} is a bias: its values are in .bias")
        offset = sum(prod(i.path_shape) for i in self.instructions[:instruction])
        n = prod(ins.path_shape)
        return weight.narrow(-1, offset, n).view(weight.shape[:-1] + ins.path_shape)

    def weight_views(
        self, weight: Tensor | None = None, yield_instruction: bool = False
    ) -> Iterator:
        """Iterate over the weight view of each weighted instruction (e3nn's, without biases);
        ``(index, instruction, view)`` with ``yield_instruction``."""
        if weight is None:
            assert self.internal_weights, "Weights must be provided when internal_weights = False"
            weight = self.weight
        offset = 0
        for i, ins in enumerate(self.instructions):
            if ins.i_in == -1:  # e3nn would narrow past the end of the weights here
                continue
            n = prod(ins.path_shape)
            view = weight.narrow(-1, offset, n).view(weight.shape[:-1] + ins.path_shape)
            offset += n
            yield (i, ins, view) if yield_instruction else view


def _weight_flags(internal: bool | None, shared: bool | None) -> tuple[bool, bool]:
    """e3nn's defaults for ``internal_weights`` / ``shared_weights``, checked as e3nn does."""
    if shared is False and internal is None:
        internal = False
    shared = True if shared is None else shared
    internal = True if internal is None else internal
    if internal and not shared:
        raise InvalidSpecification("internal_weights=True needs shared_weights=True (as in e3nn)")
    return bool(internal), bool(shared)


def _e3nn_default(name: str) -> Any:
    o3()  # imports e3nn with the flag e3nn 0.4.4 needs
    import e3nn

    return e3nn.get_optimization_defaults()[name]


def _output_mask(irreps_out: Any, instructions: list[Instruction]) -> Tensor:
    """e3nn's: 1 on output blocks some non-empty instruction (or bias) reaches."""
    if irreps_out.dim == 0:
        return torch.ones(0)
    blocks = []
    for i_out, mul_ir in enumerate(irreps_out):
        hit = any(i.i_out == i_out and 0 not in i.path_shape for i in instructions)
        blocks.append(torch.ones(mul_ir.dim) if hit else torch.zeros(mul_ir.dim))
    return torch.cat(blocks)


def _slices(instructions: list[Instruction]) -> list[LinearSlices]:
    """e3nn's ``weight_index_slices`` (offsets run over all instructions, biases included)."""
    out, offset = [], 0
    for ins in instructions:
        n = prod(ins.path_shape)
        out.append(LinearSlices(slice(offset, offset + n, None), ins.path_shape))
        offset += n
    return out


def _bias_index(irreps_out: Any, instructions: list[Instruction]) -> Tensor:
    """Output column of each bias, in the order of the flat bias vector."""
    starts = [irreps_out[: i.i_out].dim for i in instructions if i.i_in == -1]
    sizes = [i.path_shape[0] for i in instructions if i.i_in == -1]
    index = [s + k for s, n in zip(starts, sizes) for k in range(n)]
    return torch.tensor(index, dtype=torch.long)


def _plain_path_weights(module: torch.nn.Module) -> bool:
    """Whether an e3nn Linear's path weights are those of some normalisation without f_in."""
    pairs = [(i.i_in, i.i_out) for i in module.instructions if i.i_in != -1]
    for norm in ("element", "path"):
        d = linear_descriptor(module.irreps_in, module.irreps_out, pairs, norm)
        ours = [c for i, _, _, c in d.instructions]
        theirs = [i.path_weight for i in module.instructions if i.i_in != -1]
        if all(abs(a - b) < 1e-12 for a, b in zip(ours, theirs)):
            return True
    return False
