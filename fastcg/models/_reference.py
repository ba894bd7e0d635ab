"""e3nn twins of the fastcg models: the same model classes built from e3nn layers.

``reference_twin(model)`` builds the twin with the same configuration and copies every parameter
and buffer, so the two compute the same function (what tests and ``fastcg md`` compare).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastcg.descriptors.symmetric_contraction import (
    coupling_tensors,
    symmetric_contraction_descriptor,
)
from fastcg.irreps import channel_irreps, o3
from fastcg.reference import symmetric_contraction_dense
from fastcg.testing import default_dtype  # re-exported: callers import it from here too

from . import MODELS, AtomisticModel, Layers


def _e3nn_conv_class() -> type:
    class E3nnConv(o3().TensorProduct):
        """``zeros(N, ·).index_add_(0, dst, TensorProduct(x[src], edge_attr, weight))`` (e3nn)."""

        def __init__(self, irreps_in1, irreps_in2, irreps_out, instructions, **kwargs) -> None:
            kwargs.setdefault("shared_weights", False)
            kwargs.setdefault("internal_weights", False)
            super().__init__(irreps_in1, irreps_in2, irreps_out, instructions, **kwargs)

        def forward(  # type: ignore[override]
            self, x: Tensor, edge_attr: Tensor, weight: Tensor, src: Tensor, dst: Tensor,
            num_nodes: int,
        ) -> Tensor:  # fmt: skip
            msg = super().forward(x[src], edge_attr, weight)
            return msg.new_zeros(num_nodes, msg.shape[-1]).index_add(0, dst, msg)

        def forward_radial(
            self, x: Tensor, edge_attr: Tensor, radial: Tensor, radial_weight: Tensor,
            src: Tensor, dst: Tensor, num_nodes: int,
        ) -> Tensor:  # fmt: skip
            return self.forward(x, edge_attr, radial @ radial_weight, src, dst, num_nodes)

    return E3nnConv


class DenseSymmetricContraction(torch.nn.Module):
    """``fastcg.nn.SymmetricContraction``'s twin: the dense coupling tensors U (mace-torch's
    ``U_matrix_real``, from e3nn's Wigner 3j) contracted with einsum; same ``weight``."""

    def __init__(
        self, irreps_in: str, irreps_out: str, correlation: int, num_elements: int
    ) -> None:
        super().__init__()
        desc = symmetric_contraction_descriptor(irreps_in, irreps_out, correlation)
        outs = channel_irreps(irreps_out)
        self.couplings = [coupling_tensors(irreps_in, ir, correlation) for _, ir in outs]
        self.offsets = [[desc.weight_offset(o, nu) for nu in range(1, correlation + 1)]
                        for o in range(len(outs))]  # fmt: skip
        channels = o3().Irreps(irreps_in).count((0, 1))
        self.weight = torch.nn.Parameter(torch.randn(num_elements, desc.weight_numel, channels))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        species = y.argmax(dim=-1)
        return symmetric_contraction_dense(x, species, self.weight, self.couplings, self.offsets)


def e3nn_layers() -> Layers:
    """The :class:`~fastcg.models.Layers` of e3nn (imports e3nn)."""
    m = o3()
    from e3nn import nn as e3nn_nn

    return Layers(m.SphericalHarmonics, m.Linear, m.TensorProduct, m.FullyConnectedTensorProduct,
                  _e3nn_conv_class(), e3nn_nn.Gate, DenseSymmetricContraction)  # fmt: skip


def copy_weights(target: torch.nn.Module, source: torch.nn.Module) -> None:
    """Copy every parameter and buffer of ``source`` that ``target`` has under the same name
    (e3nn's extra generated-code constants stay); every parameter must be matched."""
    src = source.state_dict()
    params = {n for n, _ in target.named_parameters()}
    missing = params - set(src)
    if missing or set(n for n, _ in source.named_parameters()) != params:
        raise ValueError(f"parameters do not match: {sorted(missing)[:5]}")
    with torch.no_grad():
        for name, t in target.state_dict().items():
            if name in src and src[name].shape == t.shape:
                t.copy_(src[name])


def reference_twin(model: AtomisticModel) -> AtomisticModel:
    """The same model (class, configuration, weights, dtype) built from e3nn layers."""
    p = next(model.parameters())
    cls = MODELS[type(model).__name__.lower()]
    with default_dtype(p.dtype):
        twin = cls(**model.config, layers=e3nn_layers())
    twin = twin.to(device=p.device)
    copy_weights(twin, model)
    return twin
