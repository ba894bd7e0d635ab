"""e3nn-compatible tensor products: same constructor arguments, weight layout and state_dict.

``fastcg.nn.TensorProduct(...)`` is a drop-in for ``e3nn.o3.TensorProduct(...)``: an e3nn
state_dict loads into it strictly, and ``TensorProduct.from_e3nn(module)`` builds the twin of an
existing e3nn module. The forward calls the ``fastcg`` tensor-product op on descriptor tables kept
as non-persistent buffers, so the module works under TorchScript, torch.compile and torch.export.
"""

import warnings
from collections.abc import Iterator
from math import prod
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..descriptors import (
    InvalidSpecification,
    TPDescriptor,
    TPTables,
    from_e3nn,
    tensor_product_descriptor,
    weight_shape,
)
from ..irreps import irreps as to_irreps
from ..irreps import o3
from ..ops import tensor_product

_E3NN_CODEGEN = ("_compiled_main_left_right", "_compiled_main_right")


class Instruction(NamedTuple):
    """e3nn's ``Instruction``; ``path_weight`` is the final normalisation constant."""

    i_in1: int
    i_in2: int
    i_out: int
    connection_mode: str
    has_weight: bool
    path_weight: float
    path_shape: tuple


def path_shape(mode: str, mul1: int, mul2: int, mul_out: int) -> tuple[int, ...]:
    """e3nn's weight shape of one instruction (every e3nn connection mode)."""
    return weight_shape(mode, mul1, mul2, mul_out)


class Float64Tables(torch.nn.Module):
    """Keeps the float64 coefficient tables float64 through ``.float()`` / ``.to(dtype)``.

    The kernels accumulate with float64 coefficients; rounding them to float32 with the rest of
    the module would lose precision that a later ``.double()`` cannot restore.
    """

    _float64_tables = ()  # names of float64 buffers (no annotation: TorchScript reads those)

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        keep = {name: getattr(self, name) for name in self._float64_tables}
        out = super()._apply(fn, recurse)
        for name, table in keep.items():
            setattr(self, name, table.to(getattr(self, name).device))
        return out


def without_e3nn_codegen(state_dict: dict, prefix: str) -> dict:
    """``state_dict`` without e3nn's generated-code buffers under ``prefix``."""
    codegen = tuple(prefix + name + "." for name in _E3NN_CODEGEN)
    return {k: v for k, v in state_dict.items() if not k.startswith(codegen)}


def copy_persistent_buffers(target: torch.nn.Module, source: torch.nn.Module) -> None:
    """Register copies of ``source``'s own persistent buffers on ``target``, same names (so the
    state_dict keys of a twin match the module it was made from)."""
    for name, buf in source.named_buffers(recurse=False):
        if name not in source._non_persistent_buffers_set:
            target.register_buffer(name, buf.detach().clone())


def load_twin(twin: torch.nn.Module, module: torch.nn.Module) -> Any:
    """Move ``twin`` to ``module``'s device and dtype, then load ``module``'s state strictly."""
    ref = next(
        (t for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()), None
    )
    if ref is not None:
        twin = twin.to(device=ref.device, dtype=ref.dtype)
    twin.load_state_dict(module.state_dict(), strict=True)
    return twin


class TensorProduct(Float64Tables):
    r"""``e3nn.o3.TensorProduct`` on fastcg kernels: :math:`z = w \, x \otimes y`.

    Same arguments, attributes, weight layout and errors as e3nn 0.6: every connection mode
    (uvw, uvu, uvv, uuw, uuu, uvuv, uvu<v, u<vw), ``right()``, weight views, internal / shared /
    external weights. ``compile_left_right``, ``compile_right``, ``_specialized_code`` and
    ``_optimize_einsums`` are recorded and change nothing (the kernels are the same either way).
    An invalid specification raises ``fastcg.descriptors.InvalidSpecification`` (a ValueError and
    an AssertionError) here, where e3nn's constructor raises.

    Where e3nn 0.6 misbehaves, fastcg does not copy it: negative instruction indices and uvu<v /
    u<vw with mul2 = 0 < mul1 (a negative weight count) are refused; a path with an empty block
    leaves later paths in their own output blocks; ``weight_view_for_instruction`` counts the
    weights of weighted instructions only; ``right()`` exists for every mode.

    >>> tp = TensorProduct("2x1o", "1x1o", "2x0e", [(0, 0, 0, "uvu", True)])
    >>> tp(torch.randn(5, 6), torch.randn(5, 3)).shape
    torch.Size([5, 2])
    """

    shared_weights: bool
    internal_weights: bool
    weight_numel: int
    _specialized_code: bool
    _optimize_einsums: bool
    _in1_dim: int
    _in2_dim: int
    _out_dim: int
    _float64_tables = ("_cg_value",)
    __e3nn_compile_mode__ = "script"  # e3nn.util.jit.compile scripts us

    def __init__(
        self,
        irreps_in1: Any,
        irreps_in2: Any,
        irreps_out: Any,
        instructions: list[tuple],
        in1_var: list[float] | Tensor | None = None,
        in2_var: list[float] | Tensor | None = None,
        out_var: list[float] | Tensor | None = None,
        irrep_normalization: str | None = None,
        path_normalization: str | None = None,
        internal_weights: bool | None = None,
        shared_weights: bool | None = None,
        compile_left_right: bool = True,
        compile_right: bool = False,
        normalization: str | None = None,
        _specialized_code: bool | None = None,
        _optimize_einsums: bool | None = None,
    ) -> None:
        super().__init__()
        if normalization is not None:  # e3nn's deprecated spelling wins, as in e3nn
            warnings.warn(
                "`normalization` is deprecated. Use `irrep_normalization` instead.",
                DeprecationWarning,
                stacklevel=2,
            )
            irrep_normalization = normalization
        ir1, ir2, iro = to_irreps(irreps_in1), to_irreps(irreps_in2), to_irreps(irreps_out)
        desc = tensor_product_descriptor(
            ir1, ir2, iro, instructions, in1_var, in2_var, out_var,
            irrep_normalization or "component", path_normalization or "element",
        )  # validates everything, as e3nn's constructor  # fmt: skip
        final = [Instruction(*i) for i in desc.instructions]
        self._setup(ir1, ir2, iro, final, desc, internal_weights, shared_weights)
        self._specialized_code, self._optimize_einsums = _optimization_flags(
            _specialized_code, _optimize_einsums
        )

    def _setup(
        self, ir1: Any, ir2: Any, iro: Any, instructions: list[Instruction],
        descriptor: TPDescriptor | None, internal_weights: bool | None,
        shared_weights: bool | None,
    ) -> None:  # fmt: skip
        """Everything after the instructions are final (shared by __init__ and from_e3nn)."""
        self.irreps_in1, self.irreps_in2, self.irreps_out = ir1, ir2, iro
        self.instructions = instructions
        if descriptor is None:
            descriptor = from_e3nn(self)
        self.descriptor = descriptor
        if shared_weights is False and internal_weights is None:
            internal_weights = False
        if shared_weights is None:
            shared_weights = True
        if internal_weights is None:
            internal_weights = shared_weights and any(i.has_weight for i in instructions)
        if internal_weights and not shared_weights:
            raise InvalidSpecification(
                "internal_weights=True needs shared_weights=True (as in e3nn)"
            )
        self.internal_weights, self.shared_weights = bool(internal_weights), bool(shared_weights)
        self.weight_numel = sum(prod(i.path_shape) for i in instructions if i.has_weight)
        if internal_weights and self.weight_numel > 0:
            self.weight = torch.nn.Parameter(torch.randn(self.weight_numel))
        else:  # e3nn keeps an empty (persistent) buffer so the state_dict keys are fixed
            self.register_buffer("weight", torch.Tensor())
        self.register_buffer("output_mask", _output_mask(iro, instructions))
        self._in1_dim, self._in2_dim, self._out_dim = ir1.dim, ir2.dim, iro.dim
        paths, cg_index, cg_value = descriptor.tensors()
        self.register_buffer("_paths", paths, persistent=False)
        self.register_buffer("_cg_index", cg_index, persistent=False)
        self.register_buffer("_cg_value", cg_value, persistent=False)
        self._specialized_code, self._optimize_einsums = _optimization_flags(None, None)

    @classmethod
    def from_e3nn(cls, module: torch.nn.Module) -> Any:
        """The fastcg twin of an e3nn ``TensorProduct`` (same instructions, weights and flags).

        Raises NotImplementedError for a subclass with its own ``forward`` (e.g. e3nn's
        ``TensorSquare(x)``): a twin with TensorProduct's ``forward(x, y)`` would break callers.
        """
        base = o3().TensorProduct
        if isinstance(module, base) and type(module).forward is not base.forward:
            raise NotImplementedError(
                f"{type(module).__name__} has its own forward; fastcg has no twin of it"
            )
        twin = cls.__new__(cls)
        Float64Tables.__init__(twin)
        ins = [Instruction(*tuple(i)) for i in module.instructions]
        twin._setup(module.irreps_in1, module.irreps_in2, module.irreps_out, ins, None,
                    module.internal_weights, module.shared_weights)  # fmt: skip
        twin._specialized_code, twin._optimize_einsums = _optimization_flags(
            getattr(module, "_specialized_code", None), getattr(module, "_optimize_einsums", None)
        )
        return load_twin(twin, module)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # e3nn's generated code stores its Wigner 3j blocks in the state_dict
        # ("_compiled_main_left_right._w3j_1_1_1"); our CG tables are fixed, so skip them.
        super()._load_from_state_dict(without_e3nn_codegen(state_dict, prefix), prefix, *args,
                                      **kwargs)  # fmt: skip

    def __repr__(self) -> str:
        npath = sum(prod(i.path_shape) for i in self.instructions)
        return (
            f"{self.__class__.__name__}({self.irreps_in1.simplify()} x {self.irreps_in2.simplify()}"
            f" -> {self.irreps_out.simplify()} | {npath} paths | {self.weight_numel} weights)"
        )

    @torch.jit.unused
    def _prep_weights_python(self, weight: Tensor | list[Tensor] | None) -> Tensor | None:
        if isinstance(weight, list):  # e3nn also takes one tensor per weighted instruction
            shapes = [i.path_shape for i in self.instructions if i.has_weight]
            lead = (-1,) if not self.shared_weights else ()
            return torch.cat([w.reshape(*lead, prod(s)) for w, s in zip(weight, shapes)], dim=-1)
        return weight

    def _get_weights(self, weight: Tensor | None) -> Tensor | None:
        """The weights to use, checked like e3nn; None when the product has no weights."""
        if weight is None:
            if self.weight_numel > 0 and not self.internal_weights:
                raise RuntimeError(
                    "Weights must be provided when the TensorProduct does not have internal_weights"
                )
            weight = self.weight
        elif self.shared_weights:
            if weight.dim() != 1 or weight.shape[0] != self.weight_numel:
                raise ValueError(f"weight must have shape [{self.weight_numel}] (shared weights)")
        elif weight.dim() < 2 or weight.shape[-1] != self.weight_numel:
            raise ValueError(f"weight must have shape [..., {self.weight_numel}] (per sample)")
        if self.weight_numel == 0:
            return None
        return weight

    def forward(self, x: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
        """``x[..., irreps_in1.dim] ⊗ y[..., irreps_in2.dim] -> [..., irreps_out.dim]``."""
        if not torch.jit.is_scripting():
            weight = self._prep_weights_python(weight)
        return tensor_product(x, y, self._get_weights(weight), self.tables())

    def tables(self) -> TPTables:
        """The op's tables: the buffers (they follow ``.to()``) and the sizes."""
        return TPTables(self._paths, self._cg_index, self._cg_value, self._in1_dim,
                        self._in2_dim, self._out_dim, self.weight_numel)  # fmt: skip

    @torch.jit.export
    def right(self, y: Tensor, weight: Tensor | None = None) -> Tensor:
        """The operator ``x -> forward(x, y, weight)``: ``[..., irreps_in1.dim, irreps_out.dim]``.

        ``forward(x, y, w) == einsum("...i,...ik->...k", x, right(y, w))``. Built as the product
        of the identity (one row per input component) with ``y``: the op is linear in x.
        """
        if not torch.jit.is_scripting():
            weight = self._prep_weights_python(weight)
        w = self._get_weights(weight)
        if w is not None and not self.shared_weights:
            w = w.unsqueeze(-2)  # batch dims of y and w, then one row per x1 component
        eye = torch.eye(self._in1_dim, dtype=y.dtype, device=y.device)
        return tensor_product(eye, y.unsqueeze(-2), w, self.tables())

    @torch.jit.unused
    def weight_view_for_instruction(self, instruction: int, weight: Tensor | None = None) -> Tensor:
        """View of the weights of one instruction, shaped ``batch + path_shape`` (as e3nn)."""
        ins = self.instructions[instruction]
        if not ins.has_weight:
            raise ValueError(f"Instruction {instruction} has no weights.")
        offset = sum(prod(i.path_shape) for i in self.instructions[:instruction] if i.has_weight)
        w = self._weights_python(weight)
        return w.narrow(-1, offset, prod(ins.path_shape)).view(w.shape[:-1] + ins.path_shape)

    @torch.jit.unused
    def weight_views(
        self, weight: Tensor | None = None, yield_instruction: bool = False
    ) -> Iterator:
        """Iterate over the weight view of each weighted instruction (as e3nn)."""
        w = self._weights_python(weight)
        offset = 0
        for i, ins in enumerate(self.instructions):
            if ins.has_weight:
                n = prod(ins.path_shape)
                view = w.narrow(-1, offset, n).view(w.shape[:-1] + ins.path_shape)
                offset += n
                yield (i, ins, view) if yield_instruction else view

    def _weights_python(self, weight: Tensor | None) -> Tensor:
        weight = self._prep_weights_python(weight)
        w = self._get_weights(weight)
        return self.weight if w is None else w


def _optimization_flags(specialized: bool | None, optimize: bool | None) -> tuple[bool, bool]:
    """e3nn's ``_specialized_code`` / ``_optimize_einsums`` (its defaults where None)."""
    try:
        from e3nn import get_optimization_defaults

        defaults = get_optimization_defaults()
    except ImportError:  # e3nn before 0.4 had no such defaults
        defaults = {"specialized_code": True, "optimize_einsums": True}
    specialized = defaults["specialized_code"] if specialized is None else specialized
    optimize = defaults["optimize_einsums"] if optimize is None else optimize
    return bool(specialized), bool(optimize)


def _output_mask(irreps_out: Any, instructions: list[Instruction]) -> Tensor:
    """1 on output components some non-empty, non-zero path writes to (e3nn's output_mask)."""
    if irreps_out.dim == 0:
        return torch.ones(0)
    blocks = []
    for i_out, (mul, ir) in enumerate(irreps_out):
        hit = any(
            i.i_out == i_out and i.path_weight != 0 and 0 not in i.path_shape for i in instructions
        )
        blocks.append(torch.ones(mul * ir.dim) if hit else torch.zeros(mul * ir.dim))
    return torch.cat(blocks)


class FullyConnectedTensorProduct(TensorProduct):
    """``e3nn.o3.FullyConnectedTensorProduct``: every allowed path, mode uvw, with weights.

    >>> FullyConnectedTensorProduct("2x0e+1x1o", "1x1o", "3x1o").weight_numel
    6
    """

    def __init__(
        self,
        irreps_in1: Any,
        irreps_in2: Any,
        irreps_out: Any,
        irrep_normalization: str | None = None,
        path_normalization: str | None = None,
        **kwargs: Any,
    ) -> None:
        ir1, ir2, iro = to_irreps(irreps_in1), to_irreps(irreps_in2), to_irreps(irreps_out)
        instructions = [
            (i1, i2, io, "uvw", True, 1.0)
            for i1, (_, a) in enumerate(ir1)
            for i2, (_, b) in enumerate(ir2)
            for io, (_, c) in enumerate(iro)
            if c in a * b
        ]
        super().__init__(
            ir1, ir2, iro, instructions, irrep_normalization=irrep_normalization,
            path_normalization=path_normalization, **kwargs,
        )  # fmt: skip


class ElementwiseTensorProduct(TensorProduct):
    """``e3nn.o3.ElementwiseTensorProduct``: :math:`z_u = x_u \\otimes y_u`, no weights.

    >>> ElementwiseTensorProduct("5x1o + 5x1e", "10x1e", ["0e", "0o"]).irreps_out
    5x0o+5x0e
    """

    def __init__(
        self,
        irreps_in1: Any,
        irreps_in2: Any,
        filter_ir_out: Any = None,
        irrep_normalization: str | None = None,
        **kwargs: Any,
    ) -> None:
        ir1, ir2 = to_irreps(irreps_in1).simplify(), to_irreps(irreps_in2).simplify()
        if filter_ir_out is not None:
            filter_ir_out = [o3().Irrep(ir) for ir in filter_ir_out]
        if ir1.num_irreps != ir2.num_irreps:
            raise InvalidSpecification(f"{ir1} and {ir2} do not have the same number of irreps")
        a, b = _split_to_match(list(ir1), list(ir2))
        out, instructions = [], []
        for i, ((mul, ir_1), (_, ir_2)) in enumerate(zip(a, b)):
            for ir in ir_1 * ir_2:
                if filter_ir_out is None or ir in filter_ir_out:
                    instructions.append((i, i, len(out), "uuu", False))
                    out.append((mul, ir))
        super().__init__(a, b, out, instructions, irrep_normalization=irrep_normalization, **kwargs)


def _split_to_match(a: list, b: list) -> tuple[list, list]:
    """Split blocks so that block i of ``a`` and ``b`` have the same multiplicity (as e3nn)."""
    i = 0
    while i < len(a):
        (m1, ir1), (m2, ir2) = a[i], b[i]
        if m1 < m2:
            b[i] = (m1, ir2)
            b.insert(i + 1, (m2 - m1, ir2))
        if m2 < m1:
            a[i] = (m2, ir1)
            a.insert(i + 1, (m1 - m2, ir1))
        i += 1
    return a, b
