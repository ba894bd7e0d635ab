"""SevenNet (sevenn 0.13): :func:`fastcg.convert` fuses each convolution, :class:`FastCGConvolution`
is a ``convolution_cls`` for sevenn's own build-time patching, and the calculator runs sevenn
models through :class:`SevenNetModel`.

Each ``IrrepsConvolution`` (``TP(x[edge_src], filter, weight_nn(embedding))`` scattered into
``edge_dst`` by ``scatter_reduce``) becomes sevenn's ``IrrepsScatterGatterFusedConvolution`` (the
module its cuEquivariance / FlashTP / OpenEquivariance patches use) with a
:class:`FastCGConvolution` as its ``convolution``: one fused fastcg conv, no per-edge messages.
The last, linear layer of the weight MLP (``weight_nn``: ``[E, 960]`` per-edge weights per
SevenNet-0 interaction) then moves into that conv (:func:`fastcg.ops.conv_radial`), and the MLP
returns its last hidden layer. Parameter and buffer names stay sevenn's, so a sevenn checkpoint's
state_dict loads strictly into the converted model.

Usage::

    calc = SevenNetCalculator("7net-0")
    calc.model = fastcg.convert(calc.model)
"""

from collections import OrderedDict

import torch
from torch import Tensor

import fastcg.nn as fnn


class FastCGConvolution(fnn.RadialFusedConv):
    """SevenNet's fused-convolution interface on the fastcg conv op.

    Built from an ``IrrepsConvolution``'s ``convolution_kwargs`` (e3nn ``TensorProduct``
    arguments), called as ``forward(x, filter, weight, edge_src, edge_dst)`` (int32 or int64
    indices): ``zeros(len(x), dim_out).index_add_(0, edge_dst, TP(x[edge_src], filter, weight))``.
    After :meth:`fuse_radial`, ``weight`` is the weight MLP's last hidden layer and the conv
    applies the MLP's last linear layer itself (:func:`fastcg.ops.conv_radial`).
    """

    def forward(  # type: ignore[override]
        self, x: Tensor, filter: Tensor, weight: Tensor, edge_src: Tensor, edge_dst: Tensor
    ) -> Tensor:
        return self._forward_fused(x, filter, weight, edge_src, edge_dst, x.shape[0])


def patch_convolution(module: torch.nn.Module) -> torch.nn.Module:
    """sevenn's build-time patch, as its ``flash_helper`` / ``oeq_helper`` do it: an
    uninstantiated ``IrrepsConvolution`` becomes an ``IrrepsScatterGatterFusedConvolution`` whose
    ``convolution_cls`` is :class:`FastCGConvolution` (instantiated by ``AtomGraphSequential``)."""
    from sevenn.nn.convolution import IrrepsScatterGatterFusedConvolution

    if module.layer_instantiated:
        raise ValueError("patch_convolution needs an uninstantiated IrrepsConvolution")
    out = IrrepsScatterGatterFusedConvolution.from_irreps_convolution(module)
    out.convolution_cls = FastCGConvolution
    return out


def patch_layers(layers: OrderedDict) -> OrderedDict:
    """Every ``IrrepsConvolution`` in sevenn's layer dict (before ``AtomGraphSequential``)
    patched by :func:`patch_convolution`; for ``sevenn.model_build.patch_modules``' output."""
    from sevenn.nn.convolution import IrrepsConvolution

    for key, module in list(layers.items()):
        if type(module) is IrrepsConvolution:
            layers[key] = patch_convolution(module)
    return layers


def _fused(module: torch.nn.Module) -> torch.nn.Module:
    """An instantiated ``IrrepsConvolution`` as sevenn's fused module on a fastcg conv."""
    from sevenn.nn.convolution import IrrepsScatterGatterFusedConvolution

    # the twin first: from_irreps_convolution deep-copies the module, e3nn's code included
    module.convolution = FastCGConvolution.from_e3nn(module.convolution)
    out = IrrepsScatterGatterFusedConvolution.from_irreps_convolution(module)
    out.convolution_cls = FastCGConvolution
    return out


def convert_modules(model: torch.nn.Module) -> int:
    """In place: every instantiated ``IrrepsConvolution`` becomes sevenn's fused convolution on
    :class:`FastCGConvolution`; count them."""
    from sevenn.nn.convolution import IrrepsConvolution

    if type(model) is IrrepsConvolution:
        raise ValueError("convert a model holding the IrrepsConvolution, not the module itself")
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is IrrepsConvolution and child.layer_instantiated:
                setattr(parent, name, _fused(child))
                count += 1
    return count


def finish(model: torch.nn.Module) -> int:
    """Fold each fused convolution's weight-MLP last layer into its conv (the per-edge weights
    are then never formed); count them."""
    from sevenn.nn.convolution import IrrepsScatterGatterFusedConvolution

    count = 0
    for module in model.modules():
        conv, net = getattr(module, "convolution", None), getattr(module, "weight_nn", None)
        if isinstance(module, IrrepsScatterGatterFusedConvolution) and (
            type(conv) is FastCGConvolution
        ):
            count += conv.try_fuse_radial(net)
    return count


class SevenNetModel(torch.nn.Module):
    """The fastcg model interface (see :mod:`fastcg.models`) around a sevenn
    ``AtomGraphSequential`` (converted or not).

    ``forward(positions, numbers, src, dst, shifts, cell) -> energy``. sevenn's edge vector is
    ``pos[edge_idx[1]] - pos[edge_idx[0]] + shift`` with messages from ``edge_idx[1]`` to
    ``edge_idx[0]``, so it gets ``edge_idx = [dst, src]`` and fastcg's ``r_ij``. Its own
    force / stress module is skipped: the calculator differentiates the energy.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        if model.type_map is None:
            raise ValueError("the sevenn model has no type_map")
        if model.eval_modal_map:
            raise ValueError("a multi-fidelity sevenn model: pick its modal first with "
                             "model.prepare_modal_deploy(modal)")  # fmt: skip
        from sevenn.nn.node_embedding import OnehotEmbedding

        model.set_is_batch_data(False)
        self.model = model
        # sevenn's one-hot embedding is always float32 (``.float()``): cast its outputs to the
        # positions' dtype, so the model also runs in float64
        self._onehot_keys = {
            name: [k for k in (m.key_output, m.key_additional_output) if k is not None]
            for name, m in model._modules.items() if isinstance(m, OnehotEmbedding)
        }  # fmt: skip
        self.config = {"cutoff": float(model.cutoff),
                       "atomic_numbers": sorted(int(z) for z in model.type_map)}  # fmt: skip

    def forward(
        self, positions: Tensor, numbers: Tensor, src: Tensor, dst: Tensor, shifts: Tensor,
        cell: Tensor,
    ) -> Tensor:  # fmt: skip
        """Total energy (0-d)."""
        import sevenn._keys as KEY

        n = positions.shape[0]
        vec = positions.index_select(0, src) - positions.index_select(0, dst) + shifts
        volume = torch.linalg.det(cell.reshape(3, 3)).abs() if cell.numel() == 9 else None
        data = {
            KEY.NODE_FEATURE: numbers,
            KEY.ATOMIC_NUMBERS: numbers,
            KEY.POS: positions,
            KEY.EDGE_IDX: torch.stack([dst, src]),
            KEY.EDGE_VEC: vec,
            KEY.NUM_ATOMS: torch.tensor(n, device=positions.device),
            KEY.CELL_VOLUME: volume if volume is not None else positions.new_zeros(()),
        }
        model = self.model
        data = model._preprocess(data)
        for name, module in model._modules.items():
            if name == "force_output":  # sevenn's forces and stress: autograd.grad on edges
                continue
            data = module(data)
            for key in self._onehot_keys.get(name, ()):
                data[key] = data[key].to(positions.dtype)
        return data[KEY.PRED_TOTAL_ENERGY].sum()


def as_model(model: torch.nn.Module) -> torch.nn.Module | None:
    """A sevenn ``AtomGraphSequential`` wrapped in :class:`SevenNetModel`, else None."""
    from sevenn.nn.sequential import AtomGraphSequential

    return SevenNetModel(model) if isinstance(model, AtomGraphSequential) else None


def load_sevennet_0() -> torch.nn.Module:
    """The trained SevenNet-0 (``7net-0``, shipped in sevenn's wheel), as sevenn builds it."""
    import sevenn.util

    model = sevenn.util.load_checkpoint("7net-0").build_model()
    model.set_is_batch_data(False)
    return model.eval()
