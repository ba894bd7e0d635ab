"""``convert(model)``: a copy of a model with its e3nn hot paths on fastcg kernels.

Every ``e3nn.o3.TensorProduct`` (and subclass), ``o3.Linear``, ``o3.SphericalHarmonics``,
``e3nn.nn.Gate`` / ``Activation`` becomes its ``fastcg.nn`` twin (``from_e3nn``: same weights,
same state_dict). When mace-torch is installed, each MACE interaction's
``conv_tp(node_feats[sender], ...)`` + ``scatter_sum(..., receiver)`` becomes one fused
``fastcg`` conv: the block's ``conv_tp`` is replaced by :class:`MaceConv` and the block is marked
with ``conv_fusion = "fastcg"``, which routes mace-torch's own forward through
``conv_tp(node_feats, edge_attrs, tp_weights, edge_index)`` (the hook mace-torch has for
cuequivariance / OpenEquivariance fusion), and the last, linear layer of its radial MLP
(``conv_tp_weights``) moves into that conv (:func:`fastcg.ops.conv_radial`: the ``[E, 1280]``
per-edge weights of a 128-channel MACE are never formed; ``conv_tp_weights`` then returns its
last hidden layer, which mace-torch's cutoff factor scales just as well). Its linears are
converted too; its skip tensor product with the one-hot species becomes
:class:`fastcg.nn.SpeciesLinear` (one weight set per species: the same numbers, a factor
num_species fewer operations), and every mace-torch
``SymmetricContraction`` (the product basis) becomes :class:`fastcg.nn.SymmetricContraction`.
Both keep mace-torch's parameter and buffer names, so state_dicts are interchangeable.
"""

import copy
import warnings
from typing import Optional

import torch
from torch import Tensor

import fastcg.nn as fnn


class MaceConv(fnn.TensorProductConv):
    """mace-torch's fused-conv call, ``conv_tp(node_feats, edge_attrs, tp_weights, edge_index)``
    with ``edge_index = [sender, receiver]``, on the fastcg conv op.

    After :meth:`fuse_radial`, ``tp_weights`` is the radial MLP's last hidden layer and the
    conv applies the MLP's last linear layer itself (:func:`fastcg.ops.conv_radial`).
    """

    # class defaults: from_e3nn builds instances without __init__
    _radial_weight: Optional[Tensor] = None  # noqa: UP045 (TorchScript reads this annotation)
    _radial_scale: float = 1.0

    def fuse_radial(self, net: fnn.FullyConnectedNet) -> None:
        """Take over ``net``'s last layer (``net`` then returns its last hidden layer)."""
        layer = net.defer_last()
        # The same Parameter object, held as a plain attribute rather than registered: it keeps
        # its one name in the net (mace-torch state_dicts load unchanged), .to() / .double() /
        # optimizers update it in place, deepcopy and pickling keep the sharing, and TorchScript
        # sees a Tensor attribute.
        object.__setattr__(self, "_radial_weight", layer.weight)
        self._radial_scale = layer.scale

    def forward(  # type: ignore[override]
        self, node_feats: Tensor, edge_attrs: Tensor, tp_weights: Tensor, edge_index: Tensor
    ) -> Tensor:
        n = node_feats.shape[0]
        w = self._radial_weight
        if w is not None:
            return self.forward_radial(
                node_feats, edge_attrs, tp_weights, w * self._radial_scale, edge_index[0],
                edge_index[1], n,
            )  # fmt: skip
        return self._forward(node_feats, edge_attrs, tp_weights, edge_index[0], edge_index[1], n)


def _mace_interaction_class() -> type | None:
    try:
        from mace.modules.blocks import InteractionBlock
    except ImportError:
        return None
    return InteractionBlock


def _convert_mace_interactions(model: torch.nn.Module) -> int:
    """In every mace-torch interaction block, in place: ``conv_tp`` becomes one fused fastcg conv
    and ``skip_tp(h, node_attrs)`` (a fully connected product with the one-hot species) a
    species-indexed linear (a product it cannot express stays e3nn); count the blocks."""
    block_cls = _mace_interaction_class()
    if block_cls is None:
        return 0
    from fastcg.irreps import o3

    count = 0
    for module in model.modules():
        if not isinstance(module, block_cls):
            continue
        conv = getattr(module, "conv_tp", None)
        if isinstance(conv, o3().TensorProduct) and not hasattr(module, "conv_fusion"):
            module.conv_tp = MaceConv.from_e3nn(conv)
            module.conv_fusion = "fastcg"
            count += 1
        tp = getattr(module, "skip_tp", None)
        if isinstance(tp, o3().FullyConnectedTensorProduct):
            try:
                module.skip_tp = fnn.SpeciesLinear.from_skip_tp(tp)
            except (NotImplementedError, ValueError):
                pass
    return count


def _convert_symmetric_contractions(model: torch.nn.Module) -> int:
    """Swap every mace-torch ``SymmetricContraction`` for ``fastcg.nn.SymmetricContraction``."""
    try:
        from mace.modules.symmetric_contraction import SymmetricContraction
    except ImportError:
        return 0
    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, SymmetricContraction):
                setattr(module, name, fnn.SymmetricContraction.from_mace(child))
                count += 1
    return count


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every supported e3nn module (and mace-torch conv) on fastcg.

    Same parameters (values, names, dtype, device); the original is left untouched.

    >>> from e3nn import o3
    >>> lin = o3.Linear("2x0e+1x1o", "1x0e")
    >>> type(convert(torch.nn.Sequential(lin))[0]).__module__
    'fastcg.nn.linear'
    """
    with warnings.catch_warnings():
        # e3nn 0.4.4 pickles its generated code through torch.jit (deprecation warnings)
        warnings.simplefilter("ignore")
        out = copy.deepcopy(model)
    _convert_mace_interactions(out)
    _convert_symmetric_contractions(out)
    out = fnn.convert(out)
    _fuse_mace_radial(out)
    return out


def _fuse_mace_radial(model: torch.nn.Module) -> int:
    """Fold each converted MACE interaction's radial MLP's last layer into its conv (the
    per-edge weights, MACE's largest tensors, are then never formed); count the blocks."""
    block_cls = _mace_interaction_class()
    count = 0
    for module in model.modules() if block_cls is not None else ():
        conv, net = getattr(module, "conv_tp", None), getattr(module, "conv_tp_weights", None)
        if (
            isinstance(module, block_cls)
            and type(conv) is MaceConv
            and isinstance(net, fnn.FullyConnectedNet)
            and not conv.shared_weights
            and conv._radial_weight is None
        ):
            try:
                conv.fuse_radial(net)
            except ValueError:  # an activated last layer: the weights stay whole
                continue
            count += 1
    return count


class MaceTorchModel(torch.nn.Module):
    """The fastcg model interface (see :mod:`fastcg.models`) around a mace-torch model.

    ``forward(positions, numbers, src, dst, shifts, cell) -> energy``; mace-torch's edge vector is
    ``pos[receiver] - pos[sender] + shifts``, so it gets ``edge_index = [src, dst]`` and
    ``-shifts`` (the same geometry as fastcg's ``r_ij = pos[src] - pos[dst] + shifts``).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        index = torch.full((119,), -1, dtype=torch.long)
        for i, z in enumerate(model.atomic_numbers.tolist()):
            index[int(z)] = i
        self.register_buffer("species_index", index, persistent=False)
        self.num_species = int(model.atomic_numbers.numel())

    def forward(
        self, positions: Tensor, numbers: Tensor, src: Tensor, dst: Tensor, shifts: Tensor,
        cell: Tensor,
    ) -> Tensor:  # fmt: skip
        """Total energy (0-d)."""
        n = positions.shape[0]
        species = self.species_index.index_select(0, numbers)
        data = {
            "positions": positions,
            "node_attrs": torch.nn.functional.one_hot(species, self.num_species).to(positions),
            "edge_index": torch.stack([src, dst]),
            "shifts": -shifts,
            "unit_shifts": torch.zeros_like(shifts),
            "cell": cell.reshape(-1, 3, 3) if cell.numel() else cell.new_zeros(1, 3, 3),
            "batch": torch.zeros(n, dtype=torch.long, device=positions.device),
            "ptr": torch.tensor([0, n], dtype=torch.long, device=positions.device),
        }
        energy = self.model(data, training=self.training, compute_force=False)["energy"]
        assert energy is not None  # mace-torch types its outputs Optional (TorchScript)
        return energy.sum()
