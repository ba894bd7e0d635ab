"""Radial bases and cutoffs of SchNet, NequIP and MACE (plain torch, scriptable).

All take edge lengths ``r`` of shape ``[E, 1]`` and return ``[E, num_basis]`` (bases) or
``[E, 1]`` (cutoffs). Lengths are assumed positive: neighbour lists never contain i == j with a
zero shift.
"""

import math

import torch
from torch import Tensor


class GaussianBasis(torch.nn.Module):
    """SchNet's Gaussians ``exp(-gamma (r - mu_k)^2)`` with centres on ``[start, cutoff]``.

    >>> GaussianBasis(5.0, 8)(torch.ones(3, 1)).shape
    torch.Size([3, 8])
    """

    gamma: float

    def __init__(self, cutoff: float, num_basis: int = 50, start: float = 0.0) -> None:
        super().__init__()
        centres = torch.linspace(start, cutoff, num_basis, dtype=torch.float64)
        self.gamma = 0.5 / float(centres[1] - centres[0]) ** 2
        self.register_buffer("centres", centres.to(torch.get_default_dtype()))

    def forward(self, r: Tensor) -> Tensor:
        return torch.exp(-self.gamma * (r - self.centres) ** 2)


class BesselBasis(torch.nn.Module):
    """NequIP / MACE's ``sqrt(2 / cutoff) sin(n pi r / cutoff) / r`` for n = 1..num_basis.

    The frequencies are a buffer (MACE makes them trainable; here they are fixed).
    """

    prefactor: float

    def __init__(self, cutoff: float, num_basis: int = 8) -> None:
        super().__init__()
        freq = torch.arange(1, num_basis + 1, dtype=torch.float64) * math.pi / cutoff
        self.register_buffer("frequencies", freq.to(torch.get_default_dtype()))
        self.prefactor = math.sqrt(2.0 / cutoff)

    def forward(self, r: Tensor) -> Tensor:
        return self.prefactor * torch.sin(self.frequencies * r) / r


class PolynomialCutoff(torch.nn.Module):
    """NequIP's polynomial envelope of order ``p``: smooth (C^p) and exactly 0 beyond ``cutoff``."""

    cutoff: float
    p: float

    def __init__(self, cutoff: float, p: int = 6) -> None:
        super().__init__()
        self.cutoff, self.p = float(cutoff), float(p)

    def forward(self, r: Tensor) -> Tensor:
        x, p = r / self.cutoff, self.p
        env = (
            1.0
            - (p + 1.0) * (p + 2.0) / 2.0 * x.pow(p)
            + p * (p + 2.0) * x.pow(p + 1.0)
            - p * (p + 1.0) / 2.0 * x.pow(p + 2.0)
        )
        return env * (x < 1.0).to(r.dtype)


class CosineCutoff(torch.nn.Module):
    """SchNet's ``0.5 (cos(pi r / cutoff) + 1)`` inside the cutoff, 0 outside."""

    cutoff: float

    def __init__(self, cutoff: float) -> None:
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, r: Tensor) -> Tensor:
        return 0.5 * (torch.cos(r * (math.pi / self.cutoff)) + 1.0) * (r < self.cutoff).to(r.dtype)


class ShiftedSoftplus(torch.nn.Module):
    """SchNet's ``softplus(x) - log 2`` (zero at zero)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.softplus(x) - math.log(2.0)


class MLP(torch.nn.Sequential):
    """Dense layers with ``act`` between them (none after the last); a radial network."""

    def __init__(self, sizes: list[int], act: str = "silu", bias: bool = True) -> None:
        layers: list[torch.nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(torch.nn.Linear(a, b, bias=bias))
            if i < len(sizes) - 2:
                layers.append(ShiftedSoftplus() if act == "ssp" else torch.nn.SiLU())
        super().__init__(*layers)

    def split(self, x: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        """``(radial, matrix)`` with ``radial @ matrix == self(x) * scale`` (``scale`` [E, 1]):
        the last hidden layer with a column of ones for the bias, times ``scale``, and the last
        layer's ``[W^T; b]``, for :func:`fastcg.ops.conv_radial` (the output is never formed)."""
        n = len(self)
        for i, layer in enumerate(self):
            if i < n - 1:
                x = layer(x)
        last = self[-1]
        matrix = last.weight.t()
        bias = last.bias
        if bias is not None:
            x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
            matrix = torch.cat([matrix, bias.unsqueeze(0)], dim=0)
        return x * scale, matrix
