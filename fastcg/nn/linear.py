"""``e3nn.o3.Linear`` on the fastcg linear op: same arguments, weights, biases and state_dict."""

from collections.abc import Iterator
from math import prod
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..descriptor import LinearDescriptor, linear_descriptor
from ..irreps import irreps as to_irreps
from ..ops import linear_tables
from ..ops.tensor_product import broadcast
from .tensor_product import Float64Tables, load_twin


class Instruction(NamedTuple):
    """e3nn's linear ``Instruction``; ``i_in == -1`` marks a bias."""

    i_in: int
    i_out: int
    path_shape: tuple
    path_weight: float


def _instructions(ir_in: Any, ir_out: Any, pairs: list, biases: list[bool], path_norm: str) -> list:
    """e3nn's instruction list with its path weights, weights first, then biases."""

    def alpha(i_in: int, i_out: int) -> float:
        x = sum(ir_in[j if path_norm == "element" else i_in].mul for j, o in pairs if o == i_out)
        return (1.0 if x == 0 else x) ** -0.5

    ins = [Instruction(i, o, (ir_in[i].mul, ir_out[o].mul), alpha(i, o)) for i, o in pairs]
    bias = [Instruction(-1, o, (ir_out[o].dim,), 1.0) for o, b in enumerate(biases) if b]
    return ins + bias


class Linear(Float64Tables):
    """Equivariant linear layer, ``e3nn.o3.Linear`` with the same arguments.

    ``f_in`` / ``f_out`` are not supported. With ``shared_weights=False`` the weights are
    ``[..., weight_numel]``, one set per sample.

    >>> lin = Linear("4x0e+16x1o", "8x0e+8x1o")
    >>> lin.weight_numel
    160
    """

    weight_numel: int
    bias_numel: int
    internal_weights: bool
    shared_weights: bool
    _dim_in: int
    _dim_out: int
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
        if f_in is not None or f_out is not None:
            raise NotImplementedError("fastcg.nn.Linear does not support f_in / f_out")
        ir_in, ir_out = to_irreps(irreps_in), to_irreps(irreps_out)
        desc = linear_descriptor(ir_in, ir_out, instructions, path_normalization)  # validates
        if instructions is None:  # the descriptor drops empty paths; e3nn keeps them
            pairs = [(i, o) for i, (_, a) in enumerate(ir_in) for o, (_, b) in enumerate(ir_out)
                     if a == b]  # fmt: skip
        else:
            pairs = [(int(i), int(o)) for i, o in instructions]
        if biases is None:
            biases = [False] * len(ir_out)
        if isinstance(biases, bool):
            biases = [biases and ir.is_scalar() for _, ir in ir_out]
        if len(biases) != len(ir_out):
            raise ValueError(f"biases has {len(biases)} entries for {len(ir_out)} output irreps")
        if any(b and not ir.is_scalar() for b, (_, ir) in zip(biases, ir_out)):
            raise ValueError("only scalar (0e) outputs can have biases")
        ins = _instructions(ir_in, ir_out, pairs, biases, path_normalization)
        self._setup(ir_in, ir_out, ins, desc, internal_weights, shared_weights)

    def _setup(
        self, ir_in: Any, ir_out: Any, instructions: list[Instruction], desc: LinearDescriptor,
        internal_weights: bool | None, shared_weights: bool | None,
    ) -> None:  # fmt: skip
        self.irreps_in, self.irreps_out = ir_in, ir_out
        self.instructions, self.descriptor = instructions, desc
        if shared_weights is False and internal_weights is None:
            internal_weights = False
        shared_weights = True if shared_weights is None else shared_weights
        internal_weights = True if internal_weights is None else internal_weights
        if internal_weights and not shared_weights:
            raise ValueError("internal_weights=True needs shared_weights=True (as in e3nn)")
        self.internal_weights, self.shared_weights = bool(internal_weights), bool(shared_weights)
        self.weight_numel = desc.weight_numel
        self.bias_numel = sum(prod(i.path_shape) for i in instructions if i.i_in == -1)
        if internal_weights and self.weight_numel > 0:
            self.weight = torch.nn.Parameter(torch.randn(self.weight_numel))
        else:
            self.register_buffer("weight", torch.Tensor())
        if internal_weights and self.bias_numel > 0:
            self.bias = torch.nn.Parameter(torch.zeros(self.bias_numel))
        else:
            self.register_buffer("bias", torch.Tensor())
        self.register_buffer("output_mask", _output_mask(ir_out, instructions))
        self._dim_in, self._dim_out = ir_in.dim, ir_out.dim
        paths, coeff = desc.tensors()
        self.register_buffer("_paths", paths, persistent=False)
        self.register_buffer("_path_coeff", coeff, persistent=False)
        starts = [ir_out[: i.i_out].dim for i in instructions if i.i_in == -1]
        sizes = [i.path_shape[0] for i in instructions if i.i_in == -1]
        index = [s + k for s, n in zip(starts, sizes) for k in range(n)]
        self.register_buffer("_bias_index", torch.tensor(index, dtype=torch.long), persistent=False)

    @classmethod
    def from_e3nn(cls, module: torch.nn.Module) -> "Linear":
        """The fastcg twin of an ``e3nn.o3.Linear`` (instructions, biases, weights, flags)."""
        if module.weight.dim() > 1:
            raise NotImplementedError("fastcg.nn.Linear does not support f_in / f_out")
        ir_in, ir_out = module.irreps_in, module.irreps_out
        pairs = [(i.i_in, i.i_out) for i in module.instructions if i.i_in != -1]
        biases = [any(i.i_in == -1 and i.i_out == o for i in module.instructions)
                  for o in range(len(ir_out))]  # fmt: skip
        for norm in ("element", "path"):  # e3nn keeps only the resulting path weights
            ins = _instructions(ir_in, ir_out, pairs, biases, norm)
            if all(abs(a.path_weight - b.path_weight) < 1e-12
                   for a, b in zip(ins, module.instructions)):  # fmt: skip
                break
        else:
            raise NotImplementedError("path weights of this e3nn Linear are not reproducible")
        twin = cls.__new__(cls)
        Float64Tables.__init__(twin)
        desc = linear_descriptor(ir_in, ir_out, pairs, norm)
        twin._setup(ir_in, ir_out, ins, desc, module.internal_weights, module.shared_weights)
        return load_twin(twin, module)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.irreps_in} -> {self.irreps_out} | "
                f"{self.weight_numel} weights)")  # fmt: skip

    def forward(
        self, features: Tensor, weight: Tensor | None = None, bias: Tensor | None = None
    ) -> Tensor:
        """``features[..., irreps_in.dim] -> [..., irreps_out.dim]``."""
        if weight is None:
            if self.weight_numel > 0 and not self.internal_weights:
                raise RuntimeError("Weights must be provided when internal_weights = False")
            weight = self.weight
        if bias is None:
            if self.bias_numel > 0 and not self.internal_weights:
                raise RuntimeError("Biases must be provided when internal_weights = False")
            bias = self.bias
        out = self._linear(features, weight)
        if self.bias_numel > 0:
            shape = list(bias.shape[:-1]) + [self._dim_out]
            out = out + bias.new_zeros(shape).index_copy(bias.dim() - 1, self._bias_index, bias)
        return out

    def _linear(self, x: Tensor, weight: Tensor) -> Tensor:
        if self.weight_numel == 0:
            return x.new_zeros(list(x.shape[:-1]) + [self._dim_out])
        if self.shared_weights:
            return linear_tables(x, weight, None, self._paths, self._path_coeff, self._dim_in,
                                 self._dim_out, self.weight_numel)  # fmt: skip
        # Per-sample weights: row b of the batch is its own "species" with weights w[b].
        batch = broadcast(list(x.shape[:-1]), list(weight.shape[:-1]))
        x = x.expand(batch + [self._dim_in]).reshape(-1, self._dim_in)
        w = weight.expand(batch + [self.weight_numel]).reshape(-1, self.weight_numel)
        species = torch.arange(x.shape[0], device=x.device)
        out = linear_tables(x, w, species, self._paths, self._path_coeff, self._dim_in,
                            self._dim_out, self.weight_numel)  # fmt: skip
        return out.reshape(batch + [self._dim_out])

    @torch.jit.unused
    def weight_views(
        self, weight: Tensor | None = None, yield_instruction: bool = False
    ) -> Iterator:
        """Iterate over ``[..., mul_in, mul_out]`` views of each weighted instruction (as e3nn)."""
        w = self.weight if weight is None else weight
        offset = 0
        for i, ins in enumerate(self.instructions):
            if ins.i_in == -1:
                continue
            n = prod(ins.path_shape)
            view = w.narrow(-1, offset, n).view(w.shape[:-1] + ins.path_shape)
            offset += n
            yield (i, ins, view) if yield_instruction else view


def _output_mask(irreps_out: Any, instructions: list[Instruction]) -> Tensor:
    if irreps_out.dim == 0:
        return torch.ones(0)
    blocks = []
    for i_out, mul_ir in enumerate(irreps_out):
        hit = any(i.i_out == i_out and 0 not in i.path_shape for i in instructions)
        blocks.append(torch.ones(mul_ir.dim) if hit else torch.zeros(mul_ir.dim))
    return torch.cat(blocks)
