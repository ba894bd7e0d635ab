"""A MACE-style model (Batatia et al. 2022) built from ``fastcg.nn``, without mace-torch.

Same skeleton as mace-torch's ``MACE`` with ``RealAgnosticResidualInteractionBlock``: one-hot
species embedding, Bessel x polynomial-cutoff radial features into a radial MLP giving per-edge
weights of a uvu convolution with the spherical harmonics (``linear_up -> conv -> linear / avg``),
a species skip tensor product, MACE's product basis (``fastcg.nn.SymmetricContraction``: the
symmetric contraction with per-species weights, mace-torch's coupling tensors), a linear, and
per-layer readouts (the last one nonlinear on scalars). The e3nn twin computes the product basis
with the dense coupling tensors (``fastcg.reference.symmetric_contraction_dense``).
"""

import torch
from torch import Tensor

from fastcg.irreps import irreps as to_irreps
from fastcg.ops.symmetric_contraction import to_channels

from .base import (
    FASTCG_LAYERS,
    AtomisticModel,
    Layers,
    conv_instructions,
    edge_vectors,
    natural_irreps,
)
from .radial import MLP, BesselBasis, PolynomialCutoff


class MACEInteraction(torch.nn.Module):
    """One residual interaction plus its product basis: ``h -> Linear(B(A)) + skip(h, species)``."""

    avg_num_neighbors: float
    num_channels: int

    def __init__(
        self, irreps_in: str, irreps_sh: str, irreps_a: str, irreps_out: str, num_bessel: int,
        radial_mlp: list[int], num_species: int, avg_num_neighbors: float, correlation: int,
        layers: Layers,
    ) -> None:  # fmt: skip
        super().__init__()
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.linear_up = layers.Linear(irreps_in, irreps_in)
        mid, ins = conv_instructions(irreps_in, irreps_sh, irreps_a)
        self.conv = layers.TensorProductConv(irreps_in, irreps_sh, mid, ins)
        self.radial = MLP([num_bessel, *radial_mlp, self.conv.weight_numel])
        self.linear = layers.Linear(mid, irreps_a)
        self.skip_tp = layers.FullyConnectedTensorProduct(
            irreps_in, f"{num_species}x0e", irreps_out
        )
        self.num_channels = to_irreps(irreps_a).count((0, 1))
        # mul_ir [N, C * D] -> MACE's [N, C, D] (each channel's irreps together), scriptable
        index = to_channels(torch.arange(to_irreps(irreps_a).dim)[None], irreps_a,
                            self.num_channels)  # fmt: skip
        self.register_buffer("_channel_major", index.reshape(-1), persistent=False)
        self.product = layers.SymmetricContraction(irreps_a, irreps_out, correlation,
                                                   num_elements=num_species)  # fmt: skip
        self.linear_out = layers.Linear(irreps_out, irreps_out)

    def forward(
        self, h: Tensor, attrs: Tensor, sh: Tensor, radial: Tensor, envelope: Tensor, src: Tensor,
        dst: Tensor,
    ) -> Tensor:  # fmt: skip
        sc = self.skip_tp(h, attrs)
        # weights radial(r) * envelope (zero at the cutoff: smooth energy), never formed whole
        r, w = self.radial.split(radial, envelope)
        m = self.conv.forward_radial(self.linear_up(h), sh, r, w, src, dst, h.shape[0])
        a = self.linear(m) / self.avg_num_neighbors
        x = a.index_select(1, self._channel_major).view(a.shape[0], self.num_channels, -1)
        b = self.product(x, attrs)
        return self.linear_out(b) + sc


class NonLinearReadout(torch.nn.Module):
    """``Linear -> silu -> Linear`` on scalars (MACE's last readout)."""

    def __init__(self, irreps_in: str, hidden: int, layers: Layers) -> None:
        super().__init__()
        self.linear_1 = layers.Linear(irreps_in, f"{hidden}x0e")
        self.linear_2 = layers.Linear(f"{hidden}x0e", "1x0e")

    def forward(self, h: Tensor) -> Tensor:
        return self.linear_2(torch.nn.functional.silu(self.linear_1(h)))


class MACE(AtomisticModel):
    """MACE-style energy model; the hidden features are ``C x 0e + C x 1o + ...`` to ``hidden_lmax``
    and the last layer keeps scalars only (as mace-torch). See the module docstring.

    >>> model = MACE([1, 8], num_channels=4, max_ell=1, hidden_lmax=1, correlation=2)
    >>> pos = torch.tensor([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    >>> src, dst = torch.tensor([0, 1, 0, 2]), torch.tensor([1, 0, 2, 0])
    >>> model(pos, torch.tensor([8, 1, 1]), src, dst, torch.zeros(4, 3), torch.zeros(3, 3)).shape
    torch.Size([])
    """

    calls_ghost_exchange = True

    def __init__(
        self,
        atomic_numbers: list[int],
        num_channels: int = 32,
        max_ell: int = 2,
        hidden_lmax: int = 1,
        correlation: int = 3,
        num_interactions: int = 2,
        num_bessel: int = 8,
        cutoff: float = 5.0,
        radial_mlp: tuple[int, ...] = (32, 32),
        avg_num_neighbors: float = 10.0,
        readout_hidden: int = 16,
        layers: Layers = FASTCG_LAYERS,
    ) -> None:
        super().__init__(atomic_numbers)
        self.config.update(num_channels=num_channels, max_ell=max_ell, hidden_lmax=hidden_lmax,
                           correlation=correlation, num_interactions=num_interactions,
                           num_bessel=num_bessel, cutoff=cutoff, radial_mlp=tuple(radial_mlp),
                           avg_num_neighbors=avg_num_neighbors,
                           readout_hidden=readout_hidden)  # fmt: skip
        c, s = num_channels, self.num_species
        irreps_sh, irreps_a = natural_irreps(1, max_ell), natural_irreps(c, max_ell)
        self.node_embedding = layers.Linear(f"{s}x0e", f"{c}x0e")
        self.sh = layers.SphericalHarmonics(list(range(max_ell + 1)), True, "component")
        self.bessel = BesselBasis(cutoff, num_bessel)
        self.envelope = PolynomialCutoff(cutoff, 5)
        blocks, readouts, irreps_in = [], [], f"{c}x0e"
        for i in range(num_interactions):
            last = i == num_interactions - 1
            irreps_out = f"{c}x0e" if last else natural_irreps(c, hidden_lmax)
            blocks.append(MACEInteraction(irreps_in, irreps_sh, irreps_a, irreps_out, num_bessel,
                                          list(radial_mlp), s, avg_num_neighbors, correlation,
                                          layers))  # fmt: skip
            readouts.append(NonLinearReadout(irreps_out, readout_hidden, layers) if last
                            else layers.Linear(irreps_out, "1x0e"))  # fmt: skip
            irreps_in = irreps_out
        self.interactions = torch.nn.ModuleList(blocks)
        self.readouts = torch.nn.ModuleList(readouts)
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
        h = self.node_embedding(attrs)
        e = self.atomic_energies.index_select(0, species)
        for i, (interaction, readout) in enumerate(zip(self.interactions, self.readouts)):
            h = h if i == 0 else self.ghost_exchange(h)
            h = interaction(h, attrs, sh, radial, envelope, src, dst)
            e = e + readout(h).squeeze(-1)
        return e
