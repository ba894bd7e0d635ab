"""SO3Net (SchNetPack's ``SO3net``): an SO(3)-equivariant SchNet.

Each interaction is SchNetPack's: an SO3 convolution of neighbour features with the spherical
harmonics of the edge, weighted by a radial filter per (l of the harmonic, channel); a linear
mix; the channel-wise (uuu) Clebsch-Gordan product of the convolution with its mix, added to it;
a second mix, a gate ``sigmoid(Linear(scalars))`` per (l, channel), a third mix, and a residual.

Conventions. SchNetPack uses its own real spherical harmonics (standard real forms, m = -l..l)
and real Clebsch-Gordan coefficients built from the complex ones. Per l they are an orthogonal
change of basis away from e3nn's, and in e3nn's basis SchNetPack's coefficients of the path
``l1 x l2 -> l3`` (only even ``l1 + l2 + l3``, ``l3 <= lmax``) are

    ``(-1)^((l1 + l2 - l3) / 2) * sqrt(2 l3 + 1) * wigner_3j(l1, l2, l3)``

(checked against SchNetPack in tests/with_schnetpack). The features here live in e3nn's basis,
``F x 0e + F x 1o + F x 2e + ...`` in e3nn's ``mul_ir`` layout; scalars, energies and forces
are the same as SchNetPack's. ``sqrt(2 l3 + 1)`` is each path's e3nn ``path_weight`` (squared,
as e3nn takes it) and the sign goes into the path's weights, since e3nn's path weights are
positive.
"""

import math
from typing import Any

import torch
from torch import Tensor

from .base import FASTCG_LAYERS, AtomisticModel, Layers, edge_vectors, natural_irreps
from .radial import MLP, CosineCutoff


def so3_paths(lmax: int) -> list[tuple[int, int, int, float]]:
    """``(l1, l2, l3, sign)`` of SchNetPack's Clebsch-Gordan product up to ``lmax``."""
    out = []
    for l1 in range(lmax + 1):
        for l2 in range(lmax + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, lmax) + 1):
                if (l1 + l2 + l3) % 2 == 0:
                    out.append((l1, l2, l3, float((-1) ** ((l1 + l2 - l3) // 2))))
    return out


class _Float64Buffers(torch.nn.Module):
    """Keeps float64 constants float64 through ``.float()`` / ``.double()`` (so a float64 model
    has exact constants however it was built); forwards cast them to the input's dtype."""

    _float64 = ()

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        keep = {name: getattr(self, name) for name in self._float64}
        out = super()._apply(fn, recurse)
        for name, t in keep.items():
            setattr(self, name, t.to(getattr(self, name).device))
        return out


class GaussianRBF(_Float64Buffers):
    """SchNetPack's ``GaussianRBF``: ``exp(-0.5 (r - mu_k)^2 / width^2)``, centres on
    ``[start, cutoff]``, width the spacing."""

    _float64 = ("offsets",)
    coeff: float

    def __init__(self, num_basis: int, cutoff: float, start: float = 0.0) -> None:
        super().__init__()
        offsets = torch.linspace(start, cutoff, num_basis, dtype=torch.float64)
        self.register_buffer("offsets", offsets, persistent=False)
        self.coeff = -0.5 / abs(float(offsets[1] - offsets[0])) ** 2

    def forward(self, r: Tensor) -> Tensor:
        return torch.exp(self.coeff * (r - self.offsets.to(r.dtype)) ** 2)


class BesselRBF(_Float64Buffers):
    """SchNetPack's ``BesselRBF``: ``sin(n pi r / cutoff) / r``, n = 1..num_basis."""

    _float64 = ("freqs",)

    def __init__(self, num_basis: int, cutoff: float) -> None:
        super().__init__()
        freqs = torch.arange(1, num_basis + 1, dtype=torch.float64) * math.pi / cutoff
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, r: Tensor) -> Tensor:
        return torch.sin(r * self.freqs.to(r.dtype)) / r


RADIAL = {"gaussian": GaussianRBF, "bessel": BesselRBF}


def _shared_linear(layers: Layers, irreps: str) -> Any:
    # one [F, F] matrix for every l (SchNetPack's nn.Linear on [N, (lmax+1)^2, F]): e3nn's
    # Linear with external weights, the matrix repeated per l
    return layers.Linear(irreps, irreps, internal_weights=False, shared_weights=True)


class SO3Interaction(torch.nn.Module):
    """One SO3net interaction: SchNetPack's ``so3convs[i].filternet`` (``filter``),
    ``mixings1..3[i]`` (``mixing1..3``) and ``gatings[i].scaling`` (``gating``)."""

    num_features: int
    lmax: int
    scalar_input: bool

    def __init__(
        self, num_features: int, lmax: int, num_basis: int, layers: Layers,
        scalar_input: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        f, irreps = num_features, natural_irreps(num_features, lmax)
        self.num_features, self.lmax, self.scalar_input = f, lmax, scalar_input
        paths = so3_paths(lmax)
        # conv: x (l2) first, the harmonic (l1) second, as the fused conv takes them. The first
        # interaction's input is scalars only (SchNetPack pads it with zeros): only l2 = 0 paths
        conv_paths = [p for p in paths if p[1] == 0] if scalar_input else paths
        conv_ins = [(l2, l1, l3, "uvu", True, 2.0 * l3 + 1) for l1, l2, l3, _ in conv_paths]
        self.conv = layers.TensorProductConv(
            f"{f}x0e" if scalar_input else irreps, natural_irreps(1, lmax), irreps, conv_ins,
            irrep_normalization="none", path_normalization="none",
        )  # fmt: skip
        self.filter = torch.nn.Linear(num_basis, f * (lmax + 1))
        # conv weight k = path p, channel u: filter column l1(p) * F + u, times the path's sign
        cols = torch.tensor([l1 * f + u for l1, _, _, _ in conv_paths for u in range(f)])
        conv_signs = torch.tensor([s for *_, s in conv_paths for _ in range(f)])
        signs = torch.tensor([s for *_, s in paths for _ in range(f)], dtype=torch.float64)
        self.register_buffer("filter_columns", cols, persistent=False)
        self.register_buffer("conv_signs", conv_signs.to(torch.get_default_dtype()), False)
        prod_ins = [(l1, l2, l3, "uuu", True, 2.0 * l3 + 1) for l1, l2, l3, _ in paths]
        self.product = layers.TensorProduct(
            irreps, irreps, irreps, prod_ins, irrep_normalization="none",
            path_normalization="none", internal_weights=False, shared_weights=True,
        )  # fmt: skip
        self.register_buffer("product_signs", signs.to(torch.get_default_dtype()), False)
        self.mixing1 = torch.nn.Linear(f, f, bias=False)
        self.mixing2 = torch.nn.Linear(f, f, bias=False)
        self.mixing3 = torch.nn.Linear(f, f, bias=False)
        self.mix = _shared_linear(layers, irreps)
        self.gating = torch.nn.Linear(f, f * (lmax + 1))
        gate = [l * f + u for l in range(lmax + 1) for u in range(f) for _ in range(2 * l + 1)]
        self.register_buffer("gate_columns", torch.tensor(gate), persistent=False)

    def _mix(self, weight: Tensor, x: Tensor) -> Tensor:
        # e3nn's Linear divides by sqrt(fan-in); its weight is [in, out] per l
        w = (weight.t() * math.sqrt(self.num_features)).reshape(-1)
        return self.mix(x, w.repeat(self.lmax + 1))

    def forward(self, x: Tensor, sh: Tensor, radial: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        """``x + dx`` for node features ``x`` ``[N, dim]`` (``[N, F]`` scalars with
        ``scalar_input``); ``radial`` is the radial basis times the cutoff with a column of the
        cutoff appended (the filter's bias)."""
        matrix = torch.cat([self.filter.weight.t(), self.filter.bias.unsqueeze(0)], dim=0)
        matrix = matrix.index_select(1, self.filter_columns) * self.conv_signs
        dx = self.conv.forward_radial(x, sh, radial, matrix, src, dst, x.shape[0])
        dx = dx + self.product(dx, self._mix(self.mixing1.weight, dx), self.product_signs)
        dx = self._mix(self.mixing2.weight, dx)
        gate = torch.sigmoid(self.gating(dx[:, : self.num_features]))
        dx = self._mix(self.mixing3.weight, dx * gate.index_select(1, self.gate_columns))
        if self.scalar_input:
            f = self.num_features
            return torch.cat([dx[:, :f] + x, dx[:, f:]], dim=1)
        return x + dx


class SO3Net(AtomisticModel):
    """SchNetPack's SO3net with an Atomwise energy readout; see :mod:`fastcg.models` for the
    call interface. ``SO3Net.from_schnetpack(nnp)`` converts a SchNetPack model.

    >>> model = SO3Net([1, 8], num_features=4, num_interactions=1, lmax=1, num_basis=4)
    >>> pos = torch.tensor([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    >>> src, dst = torch.tensor([0, 1, 0, 2]), torch.tensor([1, 0, 2, 0])
    >>> model(pos, torch.tensor([8, 1, 1]), src, dst, torch.zeros(4, 3), torch.zeros(3, 3)).shape
    torch.Size([])
    """

    num_features: int
    dim: int
    pad_input: bool

    def __init__(
        self,
        atomic_numbers: list[int],
        num_features: int = 64,
        num_interactions: int = 3,
        lmax: int = 2,
        num_basis: int = 20,
        cutoff: float = 5.0,
        radial_basis: str = "gaussian",
        radial_start: float = 0.0,
        radial_end: float | None = None,
        readout_sizes: tuple[int, ...] | None = None,
        shared_interactions: bool = False,
        layers: Layers = FASTCG_LAYERS,
    ) -> None:
        super().__init__(atomic_numbers)
        if radial_basis not in RADIAL:
            raise ValueError(f"radial_basis must be one of {sorted(RADIAL)}, got {radial_basis!r}")
        if lmax < 0 or num_features < 1 or num_interactions < 0:
            raise ValueError("lmax >= 0, num_features >= 1 and num_interactions >= 0 needed")
        f = num_features
        if readout_sizes is None:  # SchNetPack's Atomwise default: a two-layer pyramid
            readout_sizes = (f, max(1, f // 2), 1)
        self.config.update(num_features=f, num_interactions=num_interactions, lmax=lmax,
                           num_basis=num_basis, cutoff=cutoff, radial_basis=radial_basis,
                           radial_start=radial_start, radial_end=radial_end,
                           readout_sizes=tuple(readout_sizes),
                           shared_interactions=shared_interactions)  # fmt: skip
        self.num_features, self.dim = f, f * (lmax + 1) ** 2
        self.embedding = torch.nn.Embedding(self.num_species, f)
        self.sh = layers.SphericalHarmonics(list(range(lmax + 1)), True, "integral")
        end = cutoff if radial_end is None else radial_end
        if radial_basis == "gaussian":
            self.radial = GaussianRBF(num_basis, end, radial_start)
        else:
            self.radial = BesselRBF(num_basis, end)
        self.cutoff = CosineCutoff(cutoff)
        if shared_interactions:
            block = SO3Interaction(f, lmax, num_basis, layers)
            blocks = [block] * num_interactions
        else:
            blocks = [SO3Interaction(f, lmax, num_basis, layers, scalar_input=i == 0)
                      for i in range(num_interactions)]  # fmt: skip
        self.interactions = torch.nn.ModuleList(blocks)
        self.pad_input = shared_interactions or num_interactions == 0
        self.readout = MLP(list(readout_sizes), act="silu")
        self.register_buffer("atomic_energies", torch.zeros(self.num_species))

    def node_energies(
        self, positions: Tensor, numbers: Tensor, src: Tensor, dst: Tensor, shifts: Tensor
    ) -> Tensor:
        vec = edge_vectors(positions, src, dst, shifts)
        r = vec.pow(2).sum(-1, keepdim=True).sqrt()
        sh = self.sh(vec)
        cut = self.cutoff(r)
        radial = torch.cat([self.radial(r), torch.ones_like(r)], dim=1) * cut
        species = self.species(numbers)
        x = self.embedding(species)
        if self.pad_input:
            x = torch.cat([x, x.new_zeros(x.shape[0], self.dim - self.num_features)], dim=1)
        for i, interaction in enumerate(self.interactions):
            x = x if i == 0 else self.ghost_exchange(x)
            x = interaction(x, sh, radial, src, dst)
        e = self.readout(x[:, : self.num_features]).squeeze(-1)
        return e + self.atomic_energies.index_select(0, species)

    @classmethod
    def from_schnetpack(
        cls, nnp: torch.nn.Module, atomic_numbers: list[int] | None = None
    ) -> "SO3Net":
        """fastcg's SO3Net with the weights of a SchNetPack ``NeuralNetworkPotential`` whose
        representation is ``SO3net`` (output: ``Atomwise`` energy, ``Forces``); see
        :func:`fastcg.integrations.schnetpack.from_schnetpack`."""
        from fastcg.integrations.schnetpack import from_schnetpack

        return from_schnetpack(nnp, atomic_numbers)
