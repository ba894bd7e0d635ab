"""What every model here shares: the layer set, the base class, edge vectors, irreps helpers."""

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


class GhostExchange(torch.nn.Module):
    """The identity on node features ``[N, ...]``, called before each message-passing layer but
    the first (the first reads only species, which ghost atoms have).

    Where the nodes are an engine's local atoms followed by ghost atoms (copies of atoms that
    other domains own, or periodic images), the engine swaps in a module that overwrites the
    ghost rows with their owners' features (and sums the ghosts' gradients back to the owners):
    a ghost receives no messages, so its own rows are wrong after the first layer.
    """

    def forward(self, h: Tensor) -> Tensor:
        return h


class AtomisticModel(torch.nn.Module):
    """Base of the models: atomic numbers -> species index, energy = sum of node energies."""

    num_species: int
    # True in the models whose node_energies calls ghost_exchange before each layer but the first
    # (what fastcg.integrations.lammps checks before trusting features of ghost atoms)
    calls_ghost_exchange = False

    def __init__(self, atomic_numbers: list[int]) -> None:
        super().__init__()
        check_atomic_numbers(atomic_numbers)
        index = torch.full((119,), -1, dtype=torch.long)
        for i, z in enumerate(atomic_numbers):
            index[int(z)] = i
        self.register_buffer("species_index", index, persistent=False)
        self.num_species = len(atomic_numbers)
        self.ghost_exchange = GhostExchange()
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
