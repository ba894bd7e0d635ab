"""``e3nn.o3.SphericalHarmonics`` on the fastcg spherical-harmonics op."""

from typing import Any

import torch
from torch import Tensor

from ..irreps import o3
from ..ops import spherical_harmonics


class SphericalHarmonics(torch.nn.Module):
    """Spherical harmonics of vectors, with e3nn's arguments (note e3nn's default normalization
    here is ``"integral"``).

    ``irreps_out`` is an int, a list of l, or irreps such as ``"1x0e+1x2e"``; the parity follows
    ``irreps_in`` (``"1o"`` vectors, ``"1e"`` pseudovectors) exactly as in e3nn.

    >>> SphericalHarmonics([0, 2], normalize=True)(torch.randn(4, 3)).shape
    torch.Size([4, 6])
    """

    normalize: bool
    normalization: str
    _lmax: int
    _is_range_lmax: bool
    __e3nn_compile_mode__ = "script"  # e3nn.util.jit.compile scripts us

    def __init__(
        self,
        irreps_out: Any,
        normalize: bool,
        normalization: str = "integral",
        irreps_in: Any = None,
    ) -> None:
        super().__init__()
        irreps_cls = o3().Irreps
        if normalization not in ("integral", "component", "norm"):
            raise ValueError(
                f"normalization must be integral, component or norm: {normalization!r}"
            )
        self.normalize, self.normalization = bool(normalize), normalization
        if isinstance(irreps_out, str):
            irreps_out = irreps_cls(irreps_out)
        if isinstance(irreps_out, irreps_cls) and irreps_in is None:
            # e3nn: an odd l with even parity asks for pseudovector input
            if any(deg % 2 == 1 and p == 1 for _, (deg, p) in irreps_out):
                irreps_in = irreps_cls("1e")
        irreps_in = irreps_cls("1o" if irreps_in is None else irreps_in)
        if irreps_in not in (irreps_cls("1x1o"), irreps_cls("1x1e")):
            raise ValueError(f"irreps_in must be 1x1o or 1x1e, not {irreps_in}")
        p_in = irreps_in[0].ir.p
        if isinstance(irreps_out, irreps_cls):
            ls = []
            for mul, (deg, p) in irreps_out:
                if p != p_in**deg:
                    raise ValueError(
                        f"irreps_out {irreps_out}: l={deg} must have parity {p_in**deg}"
                    )
                ls.extend([deg] * mul)
        elif isinstance(irreps_out, int):
            ls = [irreps_out]
        else:
            ls = [int(deg) for deg in irreps_out]
        self.irreps_in = irreps_in
        self.irreps_out = irreps_cls([(1, (deg, p_in**deg)) for deg in ls]).simplify()
        self._ls_list = ls
        self._lmax = max(ls)
        self._is_range_lmax = ls == list(range(self._lmax + 1))
        index = [i for deg in ls for i in range(deg * deg, (deg + 1) ** 2)]
        self.register_buffer("_index", torch.tensor(index, dtype=torch.long), persistent=False)

    @classmethod
    def from_e3nn(cls, module: torch.nn.Module) -> "SphericalHarmonics":
        """The fastcg twin of an ``e3nn.o3.SphericalHarmonics``."""
        twin = cls(list(module._ls_list), module.normalize, module.normalization, module.irreps_in)
        twin.load_state_dict(module.state_dict(), strict=True)
        return twin

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self._ls_list}, normalize={self.normalize}, "
                f"normalization={self.normalization!r})")  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """``x[..., 3] -> [..., irreps_out.dim]``; zero vectors give finite values."""
        sh = spherical_harmonics(x, self._lmax, self.normalize, self.normalization)
        if not self._is_range_lmax:
            sh = sh.index_select(-1, self._index)
        return sh
