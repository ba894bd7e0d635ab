"""mace-torch's ``SymmetricContraction`` (MACE product basis) on the fastcg op."""

from typing import Any

import torch
from torch import Tensor

from ..irreps import irreps as to_irreps
from ..ops.symmetric_contraction import (
    SymmetricContractionDescriptor,
    channel_irreps,
    descriptor_from_coupling,
    symmetric_contraction_descriptor,
    symmetric_contraction_tables,
)
from .tensor_product import Float64Tables


class SymmetricContraction(Float64Tables):
    """MACE's product basis with mace-torch's constructor arguments and call.

    ``forward(x, y)``: x ``[N, num_channels, irreps_in dim per channel]`` (MACE's layout), y the
    one-hot node attributes ``[N, num_elements]`` (or species indices ``[N]``); returns
    ``[N, num_channels * irreps_out dim per channel]`` in mul_ir, as mace-torch. The weights are
    one parameter ``weight [num_elements, weight_numel, num_channels]`` (mace-torch keeps one
    per output irrep and correlation order: ``from_mace`` concatenates them, so state_dict keys
    differ). y must be one-hot: the species is its argmax.

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
        num_elements: int,
    ) -> None:  # fmt: skip
        self.irreps_in, self.irreps_out = to_irreps(irreps_in), to_irreps(irreps_out)
        self.descriptor = desc
        self.num_features = self.irreps_in.count((0, 1))  # mace's channel count
        self.num_elements = int(num_elements)
        self.correlation = desc.correlation
        self.weight_numel, self._dim_in = desc.weight_numel, desc.dim_in
        self.weight = torch.nn.Parameter(
            torch.randn(self.num_elements, desc.weight_numel, self.num_features)
        )
        names = ("_monomials", "_pairs", "_entries", "_coeff", "_out_cols")
        for name, table in zip(names, desc.tensors()):
            self.register_buffer(name, table, persistent=False)

    @classmethod
    def from_mace(cls, module: torch.nn.Module) -> "SymmetricContraction":
        """The twin of a mace-torch ``SymmetricContraction``: its coupling (U) tensors and
        weights, its device and dtype."""
        couplings, weights = [], []
        for c in module.contractions:
            corr = int(c.correlation)
            couplings.append([c.U_tensors(nu) for nu in range(1, corr + 1)])
            # mace: weights_max is order `corr`, weights[i] order corr - 1 - i
            weights += [c.weights[corr - 1 - nu] for nu in range(1, corr)] + [c.weights_max]
        desc = descriptor_from_coupling(module.irreps_in, module.irreps_out, couplings)
        ref = weights[0]
        twin = cls.__new__(cls)
        Float64Tables.__init__(twin)
        twin._setup(module.irreps_in, module.irreps_out, desc, ref.shape[0])
        w = torch.cat([t.detach() for t in weights], dim=1)
        if tuple(w.shape) != tuple(twin.weight.shape):
            raise ValueError(f"mace weights {tuple(w.shape)} do not fit {tuple(twin.weight.shape)}")
        twin = twin.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            twin.weight.copy_(w)
        return twin

    def __repr__(self) -> str:
        ins, outs = channel_irreps(self.irreps_in), channel_irreps(self.irreps_out)
        return (f"{self.__class__.__name__}({self.num_features}x({ins}) -> ({outs}) | "
                f"correlation {list(self.correlation)}, {self.num_elements} elements)")  # fmt: skip

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x ``[N, C, D]``, y one-hot ``[N, num_elements]`` or species ``[N]``."""
        species = y.argmax(dim=-1) if y.is_floating_point() else y
        return symmetric_contraction_tables(
            x, species, self.weight, self._monomials, self._pairs, self._entries, self._coeff,
            self._out_cols, self._dim_in, self.weight_numel,
        )  # fmt: skip
