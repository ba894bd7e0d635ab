"""mace-torch's ``SymmetricContraction`` (MACE product basis) on the fastcg op."""

from typing import Any

import torch
from torch import Tensor

from ..irreps import irreps as to_irreps
from ..ops.symmetric_contraction import (
    SymmetricContractionDescriptor,
    SymmetricContractionTables,
    channel_irreps,
    descriptor_from_coupling,
    symmetric_contraction,
    symmetric_contraction_descriptor,
)
from .tensor_product import Float64Tables, copy_persistent_buffers


class SymmetricContraction(Float64Tables):
    """MACE's product basis with mace-torch's constructor arguments and call.

    ``forward(x, y)``: x ``[N, num_channels, irreps_in dim per channel]`` (MACE's layout), y the
    one-hot node attributes ``[N, num_elements]`` (or species indices ``[N]``); returns
    ``[N, num_channels * irreps_out dim per channel]`` in mul_ir, as mace-torch. Constructed
    here, the weights are one parameter ``weight [num_elements, weight_numel, num_channels]``;
    ``from_mace`` keeps mace-torch's parameters and buffers under mace-torch's names instead
    (``contractions.{i}.weights_max``, ``contractions.{i}.weights.{j}``, ``U_matrix_*``), so a
    converted model loads mace checkpoints and trains the same tensors. y must be one-hot (its
    argmax is the species; anything else raises, since the op would silently differ).

    >>> sc = SymmetricContraction("8x0e+8x1o", "8x0e", correlation=2, num_elements=3)
    >>> sc(torch.randn(5, 8, 4), torch.eye(3)[[0, 1, 2, 0, 1]]).shape
    torch.Size([5, 8])
    """

    _float64_tables = ("_coeff",)
    __e3nn_compile_mode__ = "script"
    _dim_in: int
    weight_numel: int

    def __init__(
        self,
        irreps_in: Any,
        irreps_out: Any,
        correlation: int | dict,
        irrep_normalization: str = "component",
        path_normalization: str = "element",
        use_reduced_cg: bool = False,
        internal_weights: bool | None = None,
        shared_weights: bool | None = None,
        num_elements: int | None = None,
    ) -> None:
        super().__init__()
        if irrep_normalization not in (None, "component", "norm", "none"):
            raise ValueError(f"irrep_normalization={irrep_normalization!r} is not mace's")
        if path_normalization not in (None, "element", "path", "none"):
            raise ValueError(f"path_normalization={path_normalization!r} is not mace's")
        if use_reduced_cg:
            raise NotImplementedError("use_reduced_cg (cuequivariance's basis): use from_mace")
        if internal_weights is False:
            raise NotImplementedError("external weights are not supported")
        if num_elements is None or num_elements < 1:
            raise ValueError("num_elements must be a positive int")
        ir_out = to_irreps(irreps_out)
        if isinstance(correlation, dict):  # mace keys a dict by the output (mul, ir)
            correlation = [int(correlation[mul_ir]) for mul_ir in ir_out]
        desc = symmetric_contraction_descriptor(irreps_in, ir_out, correlation)
        self._setup(irreps_in, irreps_out, desc, num_elements)
        with torch.no_grad():  # mace: randn / num_params per (output irrep, order)
            rows = [k for ks in desc.num_params for k in ks]
            scale = torch.cat([torch.full((k,), 1.0 / k) for k in rows])
            self.weight.mul_(scale[None, :, None])

    def _setup(
        self, irreps_in: Any, irreps_out: Any, desc: SymmetricContractionDescriptor,
        num_elements: int, dense_weight: bool = True,
    ) -> None:  # fmt: skip
        self.irreps_in, self.irreps_out = to_irreps(irreps_in), to_irreps(irreps_out)
        self.descriptor = desc
        self.num_features = self.irreps_in.count((0, 1))  # mace's channel count
        self.num_elements = int(num_elements)
        self.correlation = desc.correlation
        self.weight_numel, self._dim_in = desc.weight_numel, desc.dim_in
        if dense_weight:
            self.weight = torch.nn.Parameter(
                torch.randn(self.num_elements, desc.weight_numel, self.num_features)
            )
        names = ("_monomials", "_pairs", "_entries", "_coeff", "_out_cols")
        for name, table in zip(names, desc.tensors()):
            self.register_buffer(name, table, persistent=False)

    @classmethod
    def from_mace(cls, module: torch.nn.Module) -> "SymmetricContraction":
        """The twin of a mace-torch ``SymmetricContraction``: its coupling (U) tensors, and its
        parameters and persistent buffers (copies, same names, device and dtype)."""
        return MaceSymmetricContraction(module)

    def __repr__(self) -> str:
        ins, outs = channel_irreps(self.irreps_in), channel_irreps(self.irreps_out)
        return (f"{self.__class__.__name__}({self.num_features}x({ins}) -> ({outs}) | "
                f"correlation {list(self.correlation)}, {self.num_elements} elements)")  # fmt: skip

    def weights(self) -> Tensor:
        """``[num_elements, weight_numel, num_channels]``, orders 1..correlation per output."""
        return self.weight

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x ``[N, C, D]``, y one-hot ``[N, num_elements]`` or species ``[N]``."""
        species = one_hot_species(y)
        tables = SymmetricContractionTables(
            self._monomials, self._pairs, self._entries, self._coeff, self._out_cols,
            self._dim_in, self.weight_numel,
        )  # fmt: skip
        return symmetric_contraction(x, species, self.weights(), tables)


def one_hot_species(y: Tensor) -> Tensor:
    """Species indices of one-hot node attributes (integer ``y`` is returned as it is).

    The fastcg ops select one weight set per node, which equals mace-torch's contraction with
    ``y`` only when each row of ``y`` is one-hot; the check is asynchronous on GPUs.
    """
    if not y.is_floating_point():
        return y
    if y.dim() != 2:
        raise ValueError(f"node attributes must be [N, num_elements], got {list(y.shape)}")
    ones, zeros = (y == 1).sum(dim=-1), (y == 0).sum(dim=-1)
    one_hot = ((ones == 1) & (zeros == y.shape[1] - 1)).all()
    torch._assert_async(one_hot, "fastcg: node attributes must be one-hot rows (one 1, the rest 0)")
    return y.argmax(dim=-1)


class _MaceWeights(torch.nn.Module):
    """A copy of one mace-torch ``Contraction``'s parameters and persistent buffers, same names."""

    def __init__(self, contraction: torch.nn.Module) -> None:
        super().__init__()

        def copy(p: Tensor) -> torch.nn.Parameter:
            return torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)

        # mace: weights_max is order `correlation`, weights[i] order correlation - 1 - i
        self.weights = torch.nn.ParameterList([copy(p) for p in contraction.weights])
        self.weights_max = copy(contraction.weights_max)
        copy_persistent_buffers(self, contraction)  # U_matrix_*, weights_*_zeroed

    def ordered(self) -> Tensor:
        """``[num_elements, params of orders 1..correlation, channels]``."""
        ws: list[Tensor] = [self.weights_max]
        for w in self.weights:
            ws.insert(0, w)
        return torch.cat(ws, dim=1)


class MaceSymmetricContraction(SymmetricContraction):
    """``SymmetricContraction.from_mace``: mace-torch's parameters and state_dict layout."""

    def __init__(self, module: torch.nn.Module) -> None:
        Float64Tables.__init__(self)
        couplings = [[c.U_tensors(nu) for nu in range(1, int(c.correlation) + 1)]
                     for c in module.contractions]  # fmt: skip
        desc = descriptor_from_coupling(module.irreps_in, module.irreps_out, couplings)
        first = module.contractions[0].weights_max
        self._setup(module.irreps_in, module.irreps_out, desc, first.shape[0], dense_weight=False)
        self.contractions = torch.nn.ModuleList([_MaceWeights(c) for c in module.contractions])
        shape = tuple(self.weights().shape)
        if shape != (self.num_elements, desc.weight_numel, self.num_features):
            raise ValueError(f"mace weights {shape} do not fit this descriptor "
                             f"({desc.weight_numel} weights per element and channel)")  # fmt: skip
        self.to(device=first.device, dtype=first.dtype)

    def weights(self) -> Tensor:
        """mace-torch's weights, concatenated in the op's order (a differentiable view)."""
        return torch.cat([c.ordered() for c in self.contractions], dim=1)
