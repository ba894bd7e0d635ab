"""SchNet (Schütt et al. 2018): Gaussian radial basis, continuous-filter convolutions.

The cfconv ``sum_j x_j * W(r_ij)`` is the l = 0 case of the fused convolution: features
``F x 0e`` times a constant edge attribute ``1x0e``, mode uvu, with the filter as per-edge weights.
"""

import torch
from torch import Tensor

from .base import FASTCG_LAYERS, AtomisticModel, Layers, edge_vectors
from .radial import MLP, CosineCutoff, GaussianBasis


class SchNetInteraction(torch.nn.Module):
    """``h + f2out(cfconv(in2f(h), W(r)))`` with ``W = filter(rbf) * cutoff(r)``."""

    def __init__(self, num_features: int, num_gaussians: int, layers: Layers) -> None:
        super().__init__()
        f = num_features
        self.filter = MLP([num_gaussians, f, f], act="ssp")
        self.in2f = torch.nn.Linear(f, f, bias=False)
        self.conv = layers.TensorProductConv(f"{f}x0e", "1x0e", f"{f}x0e", [(0, 0, 0, "uvu", True)])
        self.f2out = MLP([f, f, f], act="ssp")

    def forward(
        self, h: Tensor, rbf: Tensor, envelope: Tensor, ones: Tensor, src: Tensor, dst: Tensor
    ) -> Tensor:
        w = self.filter(rbf) * envelope
        m = self.conv(self.in2f(h), ones, w, src, dst, h.shape[0])
        return h + self.f2out(m)


class SchNet(AtomisticModel):
    """SchNet energy model; see :mod:`fastcg.models` for the call interface.

    >>> model = SchNet([1, 8], num_features=8, num_interactions=1)
    >>> pos = torch.tensor([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    >>> src, dst = torch.tensor([0, 1, 0, 2]), torch.tensor([1, 0, 2, 0])
    >>> model(pos, torch.tensor([8, 1, 1]), src, dst, torch.zeros(4, 3), torch.zeros(3, 3)).shape
    torch.Size([])
    """

    calls_ghost_exchange = True

    def __init__(
        self,
        atomic_numbers: list[int],
        num_features: int = 64,
        num_interactions: int = 3,
        num_gaussians: int = 50,
        cutoff: float = 5.0,
        layers: Layers = FASTCG_LAYERS,
    ) -> None:
        super().__init__(atomic_numbers)
        self.config.update(num_features=num_features, num_interactions=num_interactions,
                           num_gaussians=num_gaussians, cutoff=cutoff)  # fmt: skip
        self.embedding = torch.nn.Embedding(self.num_species, num_features)
        self.rbf = GaussianBasis(cutoff, num_gaussians)
        self.envelope = CosineCutoff(cutoff)
        self.interactions = torch.nn.ModuleList(
            [
                SchNetInteraction(num_features, num_gaussians, layers)
                for _ in range(num_interactions)
            ]
        )
        self.readout = MLP([num_features, max(1, num_features // 2), 1], act="ssp")

    def node_energies(
        self, positions: Tensor, numbers: Tensor, src: Tensor, dst: Tensor, shifts: Tensor
    ) -> Tensor:
        r = edge_vectors(positions, src, dst, shifts).pow(2).sum(-1, keepdim=True).sqrt()
        rbf, env = self.rbf(r), self.envelope(r)
        ones = r.new_ones(r.shape[0], 1)
        h = self.embedding(self.species(numbers))
        for i, interaction in enumerate(self.interactions):
            h = h if i == 0 else self.ghost_exchange(h)
            h = interaction(h, rbf, env, ones, src, dst)
        return self.readout(h).squeeze(-1)
