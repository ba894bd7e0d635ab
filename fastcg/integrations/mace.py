"""mace-torch: :func:`fastcg.convert` fuses each MACE interaction's conv, and the calculator runs
mace-torch models through :class:`MaceTorchModel`.

Each MACE interaction's ``conv_tp(node_feats[sender], ...)`` + ``scatter_sum(..., receiver)``
becomes one fused ``fastcg`` conv: the block's ``conv_tp`` is replaced by :class:`MaceConv` and
the block is marked with ``conv_fusion = "fastcg"``, which routes mace-torch's own forward
through ``conv_tp(node_feats, edge_attrs, tp_weights, edge_index)`` (the hook mace-torch has for
cuequivariance / OpenEquivariance fusion), and the last, linear layer of its radial MLP
(``conv_tp_weights``) moves into that conv (:func:`fastcg.ops.conv_radial`: the ``[E, 1280]``
per-edge weights of a 128-channel MACE are never formed; ``conv_tp_weights`` then returns its
last hidden layer, which mace-torch's cutoff factor scales just as well). Its skip tensor
product with the one-hot species becomes :class:`fastcg.nn.SpeciesLinear` (one weight set per
species: the same numbers, a factor num_species fewer operations), and every mace-torch
``SymmetricContraction`` (the product basis) becomes :class:`fastcg.nn.SymmetricContraction`.
Both keep mace-torch's parameter and buffer names, so state_dicts are interchangeable.
"""

import copy
from typing import Optional

import numpy as np
import torch
from torch import Tensor

import fastcg.nn as fnn
from fastcg.irreps import o3


class MaceConv(fnn.RadialFusedConv):
    """mace-torch's fused-conv call, ``conv_tp(node_feats, edge_attrs, tp_weights, edge_index)``
    with ``edge_index = [sender, receiver]``, on the fastcg conv op.

    After :meth:`fuse_radial`, ``tp_weights`` is the radial MLP's last hidden layer and the
    conv applies the MLP's last linear layer itself (:func:`fastcg.ops.conv_radial`).
    """

    def forward(  # type: ignore[override]
        self, node_feats: Tensor, edge_attrs: Tensor, tp_weights: Tensor, edge_index: Tensor
    ) -> Tensor:
        return self._forward_fused(
            node_feats, edge_attrs, tp_weights, edge_index[0], edge_index[1], node_feats.shape[0]
        )


def convert_modules(model: torch.nn.Module) -> int:
    """In place: the interactions' convs and skip products, and the product bases; count them."""
    return _convert_interactions(model) + _convert_symmetric_contractions(model)


def _convert_interactions(model: torch.nn.Module) -> int:
    """In every mace-torch interaction block, in place: ``conv_tp`` becomes one fused fastcg conv
    and ``skip_tp(h, node_attrs)`` (a fully connected product with the one-hot species) a
    species-indexed linear (a product it cannot express stays e3nn); count the blocks."""
    from mace.modules.blocks import InteractionBlock

    count = 0
    for module in model.modules():
        if not isinstance(module, InteractionBlock):
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
    from mace.modules.symmetric_contraction import SymmetricContraction

    count = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, SymmetricContraction):
                setattr(module, name, fnn.SymmetricContraction.from_mace(child))
                count += 1
    return count


def finish(model: torch.nn.Module) -> int:
    """Fold each converted MACE interaction's radial MLP's last layer into its conv (the
    per-edge weights, MACE's largest tensors, are then never formed); count the blocks."""
    from mace.modules.blocks import InteractionBlock

    count = 0
    for module in model.modules():
        conv, net = getattr(module, "conv_tp", None), getattr(module, "conv_tp_weights", None)
        if isinstance(module, InteractionBlock) and type(conv) is MaceConv:
            count += conv.try_fuse_radial(net)
    return count


# Interaction blocks whose forward reads edge_feats only as conv_tp_weights(edge_feats) (*
# cutoff): a table of r can stand in for that product. The density blocks read edge_feats again.
TABULATABLE = ("RealAgnosticInteractionBlock", "RealAgnosticResidualInteractionBlock")


class EdgeLengths(torch.nn.Module):
    """A tabulated MACE's radial embedding: the edge lengths themselves, for its convs' tables
    (:func:`tabulate`; the interactions' ``conv_tp_weights`` are then identities)."""

    def forward(
        self, edge_lengths: Tensor, node_attrs: Tensor, edge_index: Tensor,
        atomic_numbers: Tensor,
    ) -> tuple[Tensor, Optional[Tensor]]:  # noqa: UP045  # fmt: skip
        return edge_lengths, None


def tabulate(model: torch.nn.Module, step: float) -> list:
    """In place, on a converted mace-torch model: each interaction's per-edge weights
    ``conv_tp_weights(radial_embedding(r)) * cutoff(r)`` (with the fused last layer) become a
    table of r (:func:`fastcg.nn.radial_table`, knots every ``step``), read by its conv; the
    model's radial embedding then passes the edge lengths through. Returns the tables."""
    from mace.modules.blocks import InteractionBlock

    emb = getattr(model, "radial_embedding", None)
    blocks = [m for m in model.modules() if isinstance(m, InteractionBlock)]
    if emb is None or not blocks:
        return []
    if hasattr(emb, "distance_transform"):
        raise NotImplementedError(
            "radial='tabulated': this MACE's radial embedding depends on the species "
            "(distance_transform), not on r alone"
        )
    for b in blocks:
        if type(b).__name__ not in TABULATABLE or type(b.conv_tp) is not MaceConv:
            raise NotImplementedError(
                f"radial='tabulated': {type(b).__name__} reads its radial features beyond "
                "conv_tp_weights, or its conv is not fastcg's"
            )
    r_max = float(model.r_max)
    emb64 = copy.deepcopy(emb).double()
    none = torch.zeros(0, dtype=torch.long)
    tables = []
    for b in blocks:
        conv, net64 = b.conv_tp, copy.deepcopy(b.conv_tp_weights).double()
        last = None if conv._radial_weight is None else conv._radial_weight.double()

        def fn(r: Tensor, net=net64, last=last, scale=conv._radial_scale) -> Tensor:
            feats, cutoff = emb64(r[:, None], none, none, none)
            w = net(feats)
            if cutoff is not None:
                w = w * cutoff
            return w if last is None else w @ (last * scale)

        dtype = next(b.conv_tp_weights.parameters()).dtype
        table = fnn.radial_table(fn, r_max, step, dtype)
        conv.tabulate(table)
        b.conv_tp_weights = torch.nn.Identity()
        tables.append(table)
    model.radial_embedding = EdgeLengths()
    return tables


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
        data = self._inputs(positions, numbers, src, dst, shifts, cell)
        energy = self.model(data, training=self.training, compute_force=False)["energy"]
        assert energy is not None  # mace-torch types its outputs Optional (TorchScript)
        return energy.sum()

    def node_energies(
        self, positions: Tensor, numbers: Tensor, src: Tensor, dst: Tensor, shifts: Tensor
    ) -> Tensor:
        """``[N]`` per-atom energies (mace-torch's ``node_energy``, in ``positions``' dtype).

        An atom's energy reads only its own edges, so one call serves several structures at once
        (``fastcg.integrations.torchsim`` sums them per structure)."""
        data = self._inputs(positions, numbers, src, dst, shifts, positions.new_zeros(0))
        energy = self.model(data, training=self.training, compute_force=False)["node_energy"]
        assert energy is not None
        return energy.to(positions.dtype)

    def _inputs(
        self, positions: Tensor, numbers: Tensor, src: Tensor, dst: Tensor, shifts: Tensor,
        cell: Tensor,
    ) -> dict[str, Tensor]:  # fmt: skip
        n = positions.shape[0]
        species = self.species_index.index_select(0, numbers)
        return {
            "positions": positions,
            "node_attrs": torch.nn.functional.one_hot(species, self.num_species).to(positions),
            "edge_index": torch.stack([src, dst]),
            "shifts": -shifts,
            "unit_shifts": torch.zeros_like(shifts),
            "cell": cell.reshape(-1, 3, 3) if cell.numel() else cell.new_zeros(1, 3, 3),
            "batch": torch.zeros(n, dtype=torch.long, device=positions.device),
            "ptr": torch.tensor([0, n], dtype=torch.long, device=positions.device),
        }


def as_model(model: torch.nn.Module) -> torch.nn.Module | None:
    """A mace-torch model (converted or not) wrapped in :class:`MaceTorchModel`, else None."""
    return MaceTorchModel(model) if type(model).__module__.startswith("mace.") else None


def random_model(
    atomic_numbers: list[int], channels: int = 128, max_ell: int = 3, seed: int = 0,
    scale_shift: bool = False,
) -> torch.nn.Module:  # fmt: skip
    """A mace-torch ``MACE`` with seeded random weights (built in the default dtype).

    The defaults are the issue's benchmark model: hidden 128x0e+128x1o, max_ell 3, correlation
    3, 2 interactions, radial MLP [64, 64, 64], 10 Bessel functions, r_max 5. Below 32
    channels the radial MLP is [16, 16] and there are 6 Bessel functions (quick runs).
    ``scale_shift`` builds a ``ScaleShiftMACE`` (scale 1, shift 0: the same energies; the class
    trained MACE checkpoints have, which tools such as Symmetrix-XL's extractor require).
    """
    e3nn_o3 = o3()  # before mace: e3nn 0.4.4 needs a flag to import on torch >= 2.6
    from mace.modules import MACE, RealAgnosticResidualInteractionBlock, ScaleShiftMACE

    torch.manual_seed(seed)
    c, small = channels, channels < 32
    cls, extra = MACE, {}
    if scale_shift:
        cls, extra = ScaleShiftMACE, {"atomic_inter_scale": 1.0, "atomic_inter_shift": 0.0}
    return cls(
        **extra,
        r_max=5.0, num_bessel=6 if small else 10, num_polynomial_cutoff=5, max_ell=max_ell,
        interaction_cls=RealAgnosticResidualInteractionBlock,
        interaction_cls_first=RealAgnosticResidualInteractionBlock, num_interactions=2,
        num_elements=len(atomic_numbers), hidden_irreps=e3nn_o3.Irreps(f"{c}x0e+{c}x1o"),
        MLP_irreps=e3nn_o3.Irreps("16x0e"), atomic_energies=np.zeros(len(atomic_numbers)),
        avg_num_neighbors=40.0, atomic_numbers=atomic_numbers, correlation=3,
        gate=torch.nn.functional.silu, radial_MLP=[16, 16] if small else [64, 64, 64],
    )  # fmt: skip
