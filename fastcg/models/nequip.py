"""NequIP (Batzner et al. 2022): Bessel radial basis with a polynomial cutoff, uvu convolution of
node features with spherical harmonics, gated nonlinearity and a species self-connection.
"""

import torch
from torch import Tensor

from fastcg.irreps import irreps as to_irreps

from .base import (
    FASTCG_LAYERS,
    AtomisticModel,
    Layers,
    conv_instructions,
    edge_vectors,
    natural_irreps,
)
from .radial import MLP, BesselBasis, PolynomialCutoff


def gate_irreps(mul: int, lmax: int) -> tuple[str, str, str]:
    """(scalars, gates, gated) of a Gate whose output is ``natural_irreps(mul, lmax)``."""
    gated = natural_irreps(mul, lmax).split("+")[1:]
    gates = f"{mul * len(gated)}x0e" if gated else ""
    return f"{mul}x0e", gates, "+".join(gated)


class NequIPLayer(torch.nn.Module):
    """``h <- Gate(Linear(conv(Linear(h), Y, R(r)) / avg) + SelfConnection(h, species))``."""

    avg_num_neighbors: float

    def __init__(
        self, irreps_in: str, num_features: int, lmax: int, irreps_sh: str, num_basis: int,
        radial_hidden: list[int], num_species: int, avg_num_neighbors: float, layers: Layers,
    ) -> None:  # fmt: skip
        super().__init__()
        self.avg_num_neighbors = float(avg_num_neighbors)
        scalars, gates, gated = gate_irreps(num_features, lmax)
        act = torch.nn.functional.silu
        self.gate = layers.Gate(scalars, [act], gates, [torch.sigmoid] if gates else [], gated)
        gate_in = str(self.gate.irreps_in)
        self.linear_1 = layers.Linear(irreps_in, irreps_in)
        mid, ins = conv_instructions(irreps_in, irreps_sh, gate_in)
        self.conv = layers.TensorProductConv(irreps_in, irreps_sh, mid, ins)
        self.radial = MLP([num_basis, *radial_hidden, self.conv.weight_numel])
        self.linear_2 = layers.Linear(mid, gate_in)
        self.self_connection = layers.FullyConnectedTensorProduct(
            irreps_in, f"{num_species}x0e", gate_in
        )
        self.irreps_out = str(to_irreps(self.gate.irreps_out))

    def forward(
        self, h: Tensor, attrs: Tensor, sh: Tensor, radial: Tensor, envelope: Tensor, src: Tensor,
        dst: Tensor,
    ) -> Tensor:  # fmt: skip
        # weights radial(r) * envelope (zero at the cutoff: smooth energy), never formed whole
        r, w = self.radial.split(radial, envelope)
        m = self.conv.forward_radial(self.linear_1(h), sh, r, w, src, dst, h.shape[0])
        x = self.linear_2(m) / self.avg_num_neighbors + self.self_connection(h, attrs)
        return self.gate(x)


class NequIP(AtomisticModel):
    """NequIP-style energy model (even-parity features ``F x 0e + F x 1o + ...`` up to ``lmax``).

    >>> model = NequIP([1, 8], num_features=4, lmax=1, num_layers=1)
    >>> pos = torch.tensor([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    >>> src, dst = torch.tensor([0, 1, 0, 2]), torch.tensor([1, 0, 2, 0])
    >>> model(pos, torch.tensor([8, 1, 1]), src, dst, torch.zeros(4, 3), torch.zeros(3, 3)).shape
    torch.Size([])
    """

    calls_ghost_exchange = True

    def __init__(
        self,
        atomic_numbers: list[int],
        num_features: int = 16,
        lmax: int = 2,
        num_layers: int = 3,
        num_basis: int = 8,
        cutoff: float = 4.0,
        radial_hidden: tuple[int, ...] = (32,),
        avg_num_neighbors: float = 10.0,
        layers: Layers = FASTCG_LAYERS,
    ) -> None:
        super().__init__(atomic_numbers)
        self.config.update(num_features=num_features, lmax=lmax, num_layers=num_layers,
                           num_basis=num_basis, cutoff=cutoff, radial_hidden=tuple(radial_hidden),
                           avg_num_neighbors=avg_num_neighbors)  # fmt: skip
        s, f = self.num_species, num_features
        irreps_sh = natural_irreps(1, lmax)
        self.embedding = layers.Linear(f"{s}x0e", f"{f}x0e")
        self.sh = layers.SphericalHarmonics(list(range(lmax + 1)), True, "component")
        self.bessel = BesselBasis(cutoff, num_basis)
        self.envelope = PolynomialCutoff(cutoff, 6)
        blocks, irreps_in = [], f"{f}x0e"
        for _ in range(num_layers):
            layer = NequIPLayer(irreps_in, f, lmax, irreps_sh, num_basis, list(radial_hidden), s,
                                avg_num_neighbors, layers)  # fmt: skip
            blocks.append(layer)
            irreps_in = blocks[-1].irreps_out
        self.layers = torch.nn.ModuleList(blocks)
        self.readout_1 = layers.Linear(irreps_in, f"{max(1, f // 2)}x0e")
        self.readout_2 = layers.Linear(f"{max(1, f // 2)}x0e", "1x0e")
        self.register_buffer("atomic_energies", torch.zeros(s))

    def node_energies(
        self, positions: Tensor, numbers: Tensor, src: Tensor, dst: Tensor, shifts: Tensor
    ) -> Tensor:
        vec = edge_vectors(positions, src, dst, shifts)
        r = vec.pow(2).sum(-1, keepdim=True).sqrt()
        sh = self.sh(vec)
        envelope = self.envelope(r)
        radial = self.bessel(r) * envelope
        species = self.species(numbers)
        attrs = self.one_hot(species, positions)
        h = self.embedding(attrs)
        for i, layer in enumerate(self.layers):
            h = h if i == 0 else self.ghost_exchange(h)
            h = layer(h, attrs, sh, radial, envelope, src, dst)
        e = self.readout_2(self.readout_1(h)).squeeze(-1)
        return e + self.atomic_energies.index_select(0, species)
