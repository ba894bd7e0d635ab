"""SchNet, NequIP and MACE-style models built only from ``fastcg.nn`` (plus plain torch MLPs).

The model interface (what ``fastcg.calculator.FastCGCalculator`` and ``fastcg md`` call)::

    energy = model(positions, numbers, src, dst, shifts, cell)

- ``positions`` ``[N, 3]`` float, ``numbers`` ``[N]`` int64 atomic numbers;
- ``src``, ``dst`` ``[E]`` int64: edge e carries a message from atom ``src[e]`` (sender j) to
  atom ``dst[e]`` (receiver i); the neighbour list is *full* (both directions are edges);
- ``shifts`` ``[E, 3]`` Cartesian periodic shifts, so the edge vector is
  ``r_ij = positions[src] - positions[dst] + shifts`` (e3nn / NequIP convention);
- ``cell`` ``[3, 3]`` (rows are lattice vectors; zeros when not periodic). The models here do not
  read it: the shifts already carry the cell. It is part of the interface for models that do;
- returns the total energy, a 0-d tensor. Forces are ``-d energy / d positions``; the stress
  comes from a strain applied to both positions and shifts (see the calculator).

Every model has ``node_energies(positions, numbers, src, dst, shifts)`` (``[N]``) and a
``config`` dict, so ``fastcg.models._reference.reference_twin(model)`` can build the same model
from e3nn layers with the same weights (what the tests compare against).
"""

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import fastcg.nn as fnn


@dataclass(frozen=True)
class Layers:
    """The equivariant layer classes a model is built from (fastcg's here; e3nn's for the twins).

    ``TensorProductConv(...)(x, edge_attr, weight, src, dst, num_nodes)`` is the fused
    gather + tensor product + scatter.
    """

    SphericalHarmonics: Any
    Linear: Any
    TensorProduct: Any
    FullyConnectedTensorProduct: Any
    TensorProductConv: Any
    Gate: Any
    SymmetricContraction: Any  # (irreps_in, irreps_out, correlation, num_elements=)(x, one_hot)


FASTCG_LAYERS = Layers(
    fnn.SphericalHarmonics, fnn.Linear, fnn.TensorProduct, fnn.FullyConnectedTensorProduct,
    fnn.TensorProductConv, fnn.Gate, fnn.SymmetricContraction,
)  # fmt: skip


def edge_vectors(positions: Tensor, src: Tensor, dst: Tensor, shifts: Tensor) -> Tensor:
    """``r_ij = positions[src] - positions[dst] + shifts``: from receiver i to sender j."""
    return positions.index_select(0, src) - positions.index_select(0, dst) + shifts


def check_atomic_numbers(atomic_numbers: Any) -> None:
    """Raise ValueError unless ``atomic_numbers`` are one or more distinct elements, Z = 1..118
    (a repeat would leave a species without atoms, a Z outside would index past the table)."""
    zs = list(atomic_numbers)

    def is_element(z: Any) -> bool:
        try:
            return not isinstance(z, bool) and int(z) == z and 1 <= int(z) <= 118
        except (TypeError, ValueError):
            return False

    if not zs or not all(is_element(z) for z in zs):
        raise ValueError(f"atomic_numbers must be one or more integers in [1, 118], got {zs!r}")
    repeated = sorted({int(z) for z in zs if zs.count(z) > 1})
    if repeated:
        raise ValueError(f"atomic_numbers must be distinct; {repeated} appear more than once")


class AtomisticModel(torch.nn.Module):
    """Base of the models: atomic numbers -> species index, energy = sum of node energies."""

    num_species: int

    def __init__(self, atomic_numbers: list[int]) -> None:
        super().__init__()
        check_atomic_numbers(atomic_numbers)
        index = torch.full((119,), -1, dtype=torch.long)
        for i, z in enumerate(atomic_numbers):
            index[int(z)] = i
        self.register_buffer("species_index", index, persistent=False)
        self.num_species = len(atomic_numbers)
        self.config: dict[str, Any] = {"atomic_numbers": [int(z) for z in atomic_numbers]}

    def species(self, numbers: Tensor) -> Tensor:
        """Species index (0..num_species-1) of each atom; -1 for elements the model lacks."""
        return self.species_index.index_select(0, numbers)

    def one_hot(self, species: Tensor, like: Tensor) -> Tensor:
        """``[N, num_species]`` one-hot node attributes in ``like``'s dtype."""
        return torch.nn.functional.one_hot(species, self.num_species).to(like.dtype)

    def node_energies(
        self, positions: Tensor, numbers: Tensor, src: Tensor, dst: Tensor, shifts: Tensor
    ) -> Tensor:
        """``[N]`` per-atom energies (overridden by each model)."""
        raise NotImplementedError

    def forward(
        self, positions: Tensor, numbers: Tensor, src: Tensor, dst: Tensor, shifts: Tensor,
        cell: Tensor,
    ) -> Tensor:  # fmt: skip
        """Total energy (0-d) of one structure; see the module docstring for the arguments."""
        return self.node_energies(positions, numbers, src, dst, shifts).sum()


def natural_irreps(mul: int, lmax: int) -> str:
    """``mul x 0e + mul x 1o + mul x 2e + ...`` up to ``lmax`` (parity (-1)^l, as the SH)."""
    return "+".join(f"{mul}x{l}{'eo'[l % 2]}" for l in range(lmax + 1))


def conv_instructions(irreps_in: Any, irreps_sh: Any, keep: Any) -> tuple[str, list[tuple]]:
    """uvu paths of node features x spherical harmonics into every allowed irrep in ``keep``.

    Returns the output irreps (one block per path, e3nn's "irreps_mid") and the instructions.
    """
    from fastcg.irreps import irreps

    ir_in, ir_sh, keep = irreps(irreps_in), irreps(irreps_sh), {ir for _, ir in irreps(keep)}
    out, ins = [], []
    for i, (mul, a) in enumerate(ir_in):
        for j, (_, b) in enumerate(ir_sh):
            for c in a * b:
                if c in keep:
                    ins.append((i, j, len(out), "uvu", True))
                    out.append(f"{mul}x{c}")
    return "+".join(out), ins


from .mace import MACE  # noqa: E402  (the models import the helpers above)
from .nequip import NequIP  # noqa: E402
from .schnet import SchNet  # noqa: E402

MODELS = {"schnet": SchNet, "nequip": NequIP, "mace": MACE}

__all__ = [
    "FASTCG_LAYERS",
    "MACE",
    "MODELS",
    "AtomisticModel",
    "Layers",
    "NequIP",
    "SchNet",
    "edge_vectors",
]
