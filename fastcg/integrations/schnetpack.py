"""SchNetPack: its ``NeuralNetworkPotential`` with an ``SO3net`` representation as fastcg's SO3Net.

``from_schnetpack(nnp)`` (also ``fastcg.models.SO3Net.from_schnetpack``) builds fastcg's
:class:`~fastcg.models.SO3Net` with the same weights; ``as_model`` (the calculator's hook) does
it for any SchNetPack SO3net potential. ``fastcg.convert`` has nothing to swap in SchNetPack's
modules (no e3nn) and warns that the model stays SchNetPack's.

Supported: ``PairwiseDistances`` input, ``SO3net`` with an ``nn.Embedding`` nuclear embedding, no
electronic embeddings, ``GaussianRBF`` (fixed) or ``BesselRBF`` and ``CosineCutoff``, shared or
separate interactions; one ``Atomwise`` output summed over atoms (a SiLU MLP, SchNetPack's
default) and ``Forces``; ``CastTo32`` / ``CastTo64`` and extensive ``AddOffsets``
postprocessors. Anything else raises ``ValueError`` naming it.

SchNetPack keeps its radial-basis centres and cutoff as float32 buffers even in a float64
model; fastcg reads the values they were made from (the shortest decimal that rounds to the
float32) and keeps them in float64.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from fastcg.models._reference import default_dtype
from fastcg.models.so3net import SO3Net


def _decimal(value: float) -> float:
    """The float64 of the shortest decimal that rounds to ``value`` in float32: ``4.7``, not
    ``4.699999809``, for a cutoff of 4.7 kept in a float32 buffer."""
    return float(str(np.float32(value)))


def _name(m: object) -> str:
    return type(m).__name__


def _radial(rep: torch.nn.Module, cutoff: float) -> tuple[str, int, float, float]:
    """``(kind, num_basis, start, end)`` of SchNetPack's radial basis, checked."""
    rbf = rep.radial_basis
    n = int(rbf.n_rbf)
    if _name(rbf) == "GaussianRBF":
        if isinstance(rbf.offsets, torch.nn.Parameter):
            raise ValueError("trainable GaussianRBF is not supported (fastcg's centres are fixed)")
        off = rbf.offsets.detach().double()
        start, end = _decimal(off[0]), _decimal(off[-1])
        expect = torch.linspace(start, end, n, dtype=torch.float64)
        widths = torch.full_like(expect, abs(float(expect[1] - expect[0])))
        if not (torch.allclose(off, expect, atol=1e-5) and
                torch.allclose(rbf.widths.detach().double(), widths, atol=1e-5)):  # fmt: skip
            raise ValueError("GaussianRBF centres / widths are not SchNetPack's evenly spaced ones")
        return "gaussian", n, start, end
    if _name(rbf) == "BesselRBF":
        expect = torch.arange(1, n + 1, dtype=torch.float64) * math.pi / cutoff
        if not torch.allclose(rbf.freqs.detach().double(), expect, rtol=1e-6):
            raise ValueError("BesselRBF's cutoff differs from the cutoff function's")
        return "bessel", n, 0.0, cutoff
    raise ValueError(f"radial basis {_name(rbf)} is not supported (GaussianRBF, BesselRBF)")


def _check_inputs(nnp: torch.nn.Module) -> None:
    for m in nnp.input_modules:
        if _name(m) != "PairwiseDistances":
            raise ValueError(f"input module {_name(m)} is not supported (PairwiseDistances)")


def _readout(nnp: torch.nn.Module) -> tuple[torch.nn.Module, list[torch.nn.Linear]]:
    """The Atomwise module and its dense layers (SiLU between them, none after the last)."""
    atomwise = [m for m in nnp.output_modules if _name(m) == "Atomwise"]
    others = [m for m in nnp.output_modules if _name(m) not in ("Atomwise", "Forces")]
    if len(atomwise) != 1 or others:
        raise ValueError("need exactly one Atomwise output (plus Forces), got "
                         f"{[_name(m) for m in nnp.output_modules]}")  # fmt: skip
    out = atomwise[0]
    if out.aggregation_mode != "sum" or out.n_out != 1:
        raise ValueError("Atomwise must sum one value per atom (aggregation_mode='sum', n_out=1)")
    dense = list(out.outnet)
    for i, d in enumerate(dense):
        act = d.activation
        last = i == len(dense) - 1
        ok = isinstance(act, torch.nn.Identity) if last else (
            act is torch.nn.functional.silu or isinstance(act, torch.nn.SiLU))  # fmt: skip
        if not ok or d.bias is None:
            raise ValueError("Atomwise's MLP must be SiLU dense layers with biases")
    return out, dense


def _offsets(nnp: torch.nn.Module, key: str, zs: list[int]) -> torch.Tensor:
    """Per-species energies that SchNetPack's postprocessors add (extensive AddOffsets)."""
    e = torch.zeros(len(zs), dtype=torch.float64)
    for pp in nnp.postprocessors if nnp.do_postprocessing else []:
        if _name(pp) in ("CastTo32", "CastTo64"):
            continue
        if _name(pp) != "AddOffsets" or pp._property != key or not pp.is_extensive:
            raise ValueError(
                f"postprocessor {_name(pp)} is not supported "
                "(CastTo32, CastTo64, extensive AddOffsets of the energy)"
            )
        if pp.add_mean:
            e += float(pp.mean.reshape(-1)[0])
        if pp.add_atomrefs:
            e += pp.atomref.detach().double()[torch.tensor(zs)]
    return e


def _representation(nnp: torch.nn.Module) -> torch.nn.Module:
    rep = getattr(nnp, "representation", None)
    if _name(rep) != "SO3net":
        raise ValueError(f"need a NeuralNetworkPotential with an SO3net representation, got "
                         f"{_name(nnp)} with {_name(rep)}")  # fmt: skip
    if len(rep.electronic_embeddings) > 0:
        raise ValueError("SO3net's electronic embeddings are not supported")
    if not isinstance(rep.embedding, torch.nn.Embedding):
        raise ValueError(f"nuclear embedding {_name(rep.embedding)} is not supported")
    if _name(rep.cutoff_fn) != "CosineCutoff":
        raise ValueError(f"cutoff function {_name(rep.cutoff_fn)} is not supported")
    return rep


def from_schnetpack(nnp: torch.nn.Module, atomic_numbers: list[int] | None = None) -> SO3Net:
    """fastcg's SO3Net with the weights (dtype, device) of a SchNetPack NeuralNetworkPotential.

    ``atomic_numbers``: the elements to keep (default: every row of SchNetPack's embedding
    table, Z = 1..99). Energies and forces equal SchNetPack's; the parameters are copies.
    """
    rep = _representation(nnp)
    _check_inputs(nnp)
    out, dense = _readout(nnp)
    num_z = rep.embedding.num_embeddings
    zs = list(range(1, num_z)) if atomic_numbers is None else [int(z) for z in atomic_numbers]
    if any(z >= num_z for z in zs):
        raise ValueError(f"SchNetPack's embedding has atomic numbers below {num_z}, got {zs}")
    cutoff = _decimal(float(rep.cutoff_fn.cutoff.reshape(-1)[0]))
    kind, n_rbf, start, end = _radial(rep, cutoff)
    convs = list(rep.so3convs)
    shared = len(convs) > 1 and convs[0] is convs[1]
    sizes = (dense[0].in_features, *[d.out_features for d in dense])
    p = rep.embedding.weight
    with default_dtype(p.dtype):
        model = SO3Net(zs, num_features=rep.n_atom_basis, num_interactions=rep.n_interactions,
                       lmax=int(rep.lmax), num_basis=n_rbf, cutoff=cutoff, radial_basis=kind,
                       radial_start=start, radial_end=end, readout_sizes=sizes,
                       shared_interactions=shared)  # fmt: skip
    model = model.to(device=p.device, dtype=p.dtype)
    with torch.no_grad():
        model.embedding.weight.copy_(rep.embedding.weight[torch.tensor(zs, device=p.device)])
        for i, block in enumerate(model.interactions):
            block.filter.load_state_dict(
                {"weight": convs[i].filternet.weight, "bias": convs[i].filternet.bias}
            )
            block.mixing1.weight.copy_(rep.mixings1[i].weight)
            block.mixing2.weight.copy_(rep.mixings2[i].weight)
            block.mixing3.weight.copy_(rep.mixings3[i].weight)
            block.gating.load_state_dict(rep.gatings[i].scaling.state_dict())
        linears = [m for m in model.readout if isinstance(m, torch.nn.Linear)]
        for mine, theirs in zip(linears, dense):
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
        model.atomic_energies.copy_(_offsets(nnp, out.output_key, zs))
    return model


def convert_modules(model: torch.nn.Module) -> int:
    """SchNetPack's SO3net has no e3nn modules, so ``fastcg.convert`` leaves it SchNetPack's;
    say so, and where fastcg's version is (``as_model`` / ``SO3Net.from_schnetpack``)."""
    if any(_name(m) == "SO3net" for m in model.modules()):
        warnings.warn(
            "fastcg.convert leaves SchNetPack's SO3net as it is (it has no e3nn modules); "
            "fastcg.models.SO3Net.from_schnetpack(model) is fastcg's, and FastCGCalculator(model) "
            "uses it",
            stacklevel=3,
        )
    return 0


def as_model(model: torch.nn.Module) -> torch.nn.Module | None:
    """fastcg's SO3Net for a SchNetPack NeuralNetworkPotential with an SO3net; else None."""
    if _name(getattr(model, "representation", None)) == "SO3net":
        return from_schnetpack(model)
    return None
