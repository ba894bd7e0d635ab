"""NequIP 0.19: the ``enable_FastCG`` model modifier, and :func:`fastcg.convert` on NequIP models.

Each NequIP interaction's ``TensorProductScatter`` (``scatter(tp(x[edge_src], edge_attr,
edge_weight), edge_dst)``) becomes :class:`FastCGTensorProductScatter`, one fused fastcg conv
that never forms the per-edge messages. Where the interaction's edge MLP ends in a plain linear
layer (NequIP's own builders: ``Linear -> SiLU -> ... -> Linear``, no bias), that layer moves
into the conv (:func:`fastcg.ops.conv_radial`): the ``[E, weight_numel]`` per-edge weights are
never formed either, and the edge MLP returns its last hidden layer.

Like nequip's OpenEquivariance and cuEquivariance modifiers, the new module keeps the old
e3nn ``tp`` (unused, for its state_dict entries) and the edge MLP keeps its layers, so the
state_dict keys are those of the unmodified model and checkpoints load strictly either way.

``import nequip`` imports this module through fastcg's ``nequip.extension`` entry point
(``init_always``), which attaches ``enable_FastCG`` to nequip's ``TensorProductScatter``: it is
then a model modifier like nequip's own, for ``nequip.model.modify_utils.modify``,
``nequip-compile --modifiers enable_FastCG`` and every client of packaged models. It runs on
CPU and CUDA, in eager mode, TorchScript and AOTInductor (the ``.pt2`` imports ``fastcg`` on
load: ``_nequip_custom_ops_libs``).
"""

from typing import Optional

import torch
from nequip.nn._tp_scatter_base import TensorProductScatter
from nequip.nn.interaction_block import InteractionBlock
from nequip.nn.mlp import ScalarLinearLayer, ScalarMLPFunction
from nequip.nn.model_modifier_utils import model_modifier, replace_submodules
from torch import Tensor

from fastcg.descriptors import TPTables
from fastcg.nn import TensorProductConv
from fastcg.nn.tensor_product import Float64Tables
from fastcg.ops import conv, conv_radial


class FastCGTensorProductScatter(TensorProductScatter, Float64Tables):
    """nequip's ``TensorProductScatter`` on the fused fastcg conv (same call, same numbers).

    ``self.tp`` is the original e3nn product, kept unused for its state_dict entries; the CG
    tables live in non-persistent buffers. After :meth:`fuse_radial`, ``edge_weight`` is the
    edge MLP's last hidden layer and the conv applies the MLP's last linear layer itself.
    """

    _nequip_custom_ops_libs = ("fastcg",)  # what a compiled .pt2 imports before loading
    _float64_tables = ("_cg_value",)
    # class defaults: TorchScript reads these annotations
    _radial_weight: Optional[Tensor] = None  # noqa: UP045
    _radial_alpha: float = 1.0

    def __init__(self, old: TensorProductScatter) -> None:
        torch.nn.Module.__init__(self)
        self.feature_irreps_in = old.feature_irreps_in
        self.irreps_edge_attr = old.irreps_edge_attr
        self.irreps_mid = old.irreps_mid
        self.instructions = old.instructions
        self.model_dtype = old.model_dtype
        self.tp = old.tp
        conv = TensorProductConv.from_e3nn(old.tp)
        for name in ("_paths", "_cg_index", "_cg_value"):
            self.register_buffer(name, getattr(conv, name), persistent=False)
        self.dims = (conv._in1_dim, conv._in2_dim, conv._out_dim, conv.weight_numel)

    def fuse_radial(self, layer: ScalarLinearLayer) -> None:
        """Apply ``layer`` (the edge MLP's last, linear layer) inside the conv from now on."""
        # The layer is held as a plain attribute, not registered: its weight keeps its one name
        # in the edge MLP (same state_dict) and deepcopy keeps the sharing. Eager forward reads
        # the weight through the layer, so whatever replaces it there (torch.func.functional_call
        # in nequip's train-time compile, .to() with overwritten parameters) is what the conv
        # uses; TorchScript, which cannot hold an unregistered module, gets the tensor itself.
        # alpha is a constant (nequip keeps it in a buffer only for constant folding).
        object.__setattr__(self, "_radial_layer", layer)
        object.__setattr__(self, "_radial_weight", layer.weight)
        self._radial_alpha = float(layer.alpha)

    @torch.jit.unused
    def _live_radial_weight(self) -> Tensor:
        return self._radial_layer.weight

    def forward(
        self, x: Tensor, edge_attr: Tensor, edge_weight: Tensor, edge_dst: Tensor,
        edge_src: Tensor,
    ) -> Tensor:  # fmt: skip
        """``scatter(tp(x[edge_src], edge_attr, edge_weight), edge_dst, dim_size=len(x))``."""
        d1, d2, do, numel = self.dims
        tables = TPTables(self._paths, self._cg_index, self._cg_value, d1, d2, do, numel)
        w = self._radial_weight
        if w is not None:
            if not torch.jit.is_scripting():
                w = self._live_radial_weight()
            return conv_radial(
                x, edge_attr, edge_weight, w * self._radial_alpha, edge_src, edge_dst, x.shape[0],
                tables,
            )  # fmt: skip
        return conv(x, edge_attr, edge_weight, edge_src, edge_dst, x.shape[0], tables)


class HiddenScalarMLPFunction(ScalarMLPFunction):
    """nequip's ``ScalarMLPFunction`` without its last layer: returns the last hidden layer.

    Holds the same ``mlp`` (same layers, same state_dict keys); the last layer is applied by the
    :class:`FastCGTensorProductScatter` that consumes this MLP's output.
    """

    def __init__(self, old: ScalarMLPFunction) -> None:
        torch.nn.Module.__init__(self)
        self.bias, self.dims = old.bias, old.dims
        self.num_layers, self.is_nonlinear = old.num_layers, old.is_nonlinear
        self.mlp = old.mlp
        self.num_hidden = len(old.mlp) - 1

    def forward(self, x: Tensor) -> Tensor:
        """The MLP's output before its last (linear) layer."""
        for i, layer in enumerate(self.mlp):
            if i < self.num_hidden:
                x = layer(x)
        return x


def _last_linear(mlp: torch.nn.Module) -> ScalarLinearLayer | None:
    """The last layer of a nequip edge MLP when it is a plain, bias-free linear layer."""
    if type(mlp) is not ScalarMLPFunction or not isinstance(mlp.mlp, torch.nn.Sequential):
        return None
    layer = mlp.mlp[len(mlp.mlp) - 1]
    plain = type(layer) is ScalarLinearLayer and layer.bias is None
    if not plain or torch.nn.utils.parametrize.is_parametrized(layer):
        return None
    return layer


def _fuse_radial(block: torch.nn.Module) -> bool:
    """Move an interaction's edge-MLP last layer into its fused conv, in place; whether done."""
    conv, mlp = getattr(block, "tp_scatter", None), getattr(block, "edge_mlp", None)
    # only nequip's own forward, where the edge MLP's output feeds tp_scatter and nothing else
    if (
        not isinstance(block, InteractionBlock)
        or type(block).forward is not InteractionBlock.forward
    ):
        return False
    if not isinstance(conv, FastCGTensorProductScatter) or conv._radial_weight is not None:
        return False
    layer = _last_linear(mlp)
    if layer is None:
        return False
    conv.fuse_radial(layer)
    block.edge_mlp = HiddenScalarMLPFunction(mlp)
    return True


def apply(model: torch.nn.Module) -> int:
    """In place: every ``TensorProductScatter`` in ``model`` becomes a fused fastcg conv, with its
    edge MLP's last layer inside where it can; returns how many convs were swapped."""
    count = 0

    def factory(old: TensorProductScatter) -> TensorProductScatter:
        nonlocal count
        if isinstance(old, FastCGTensorProductScatter):
            return old
        count += 1
        return FastCGTensorProductScatter(old)

    replace_submodules(model, TensorProductScatter, factory)
    for module in list(model.modules()):
        _fuse_radial(module)
    return count


def _enable_fastcg(cls, model: torch.nn.Module) -> torch.nn.Module:
    """Enable fastcg's fused convolution (gather, tensor product and scatter in one op, with the
    edge MLP's last layer inside) for NequIP inference and training, on CPU and GPU."""
    apply(model)
    return model


def register() -> None:
    """Attach ``enable_FastCG`` to nequip's ``TensorProductScatter`` (idempotent)."""
    if hasattr(TensorProductScatter, "enable_FastCG"):
        return
    modifier = model_modifier(
        persistent=False,
        private=False,
        unsupported_devices=[],
        supported_compile_modes=["torchscript", "aotinductor"],
    )(classmethod(_enable_fastcg))
    TensorProductScatter.enable_FastCG = modifier


def convert_modules(model: torch.nn.Module) -> int:
    """:func:`fastcg.convert`'s hook: the ``enable_FastCG`` swap on a NequIP model (in place)."""
    return apply(model)


register()
