"""``e3nn.o3.SphericalHarmonics`` and ``e3nn.o3.spherical_harmonics`` on the fastcg op."""

import operator
from typing import Any

import torch
from torch import Tensor

from ..descriptors import InvalidSpecification
from ..irreps import o3
from ..ops import spherical_harmonics as _op
from ..ops.spherical_harmonics import high_l, recursion_tables, warn_high_l


def _parse(irreps: Any, name: str) -> Any:
    try:
        return o3().Irreps(irreps)
    except (ValueError, AssertionError, TypeError) as err:
        raise InvalidSpecification(f"{name}: {err}") from err


def _degrees(irreps_out: Any, irreps_in: Any) -> tuple[list[int], Any]:
    """e3nn's reading of ``irreps_out`` (int, list of l, str or Irreps) and ``irreps_in``:
    the list of l in output order and the input irreps ("1o" vector or "1e" pseudovector).

    Invalid ones raise InvalidSpecification: a ValueError where e3nn raises one, and an
    AssertionError where e3nn asserts."""
    irreps_cls = o3().Irreps
    if isinstance(irreps_out, str):
        irreps_out = _parse(irreps_out, "irreps_out")
    if isinstance(irreps_out, irreps_cls) and irreps_in is None:
        # e3nn: an odd l with even parity asks for pseudovector input
        if any(deg % 2 == 1 and p == 1 for _, (deg, p) in irreps_out):
            irreps_in = irreps_cls("1e")
    irreps_in = _parse("1o" if irreps_in is None else irreps_in, "irreps_in")
    if irreps_in not in (irreps_cls("1x1o"), irreps_cls("1x1e")):
        raise InvalidSpecification(
            f"irreps_in for SphericalHarmonics must be a vector (1x1o) or a pseudovector (1x1e), "
            f"not {irreps_in}"
        )
    p_in = irreps_in[0].ir.p
    if isinstance(irreps_out, irreps_cls):
        ls = []
        for mul, (deg, p) in irreps_out:
            if p != p_in**deg:
                raise InvalidSpecification(
                    f"irreps_out {irreps_out}: l={deg} must have parity {p_in**deg} "
                    f"for input parity {p_in}"
                )
            ls.extend([deg] * mul)
    elif isinstance(irreps_out, int):
        ls = [irreps_out]
    else:
        try:
            ls = [operator.index(deg) for deg in irreps_out]
        except TypeError as err:
            raise InvalidSpecification(
                f"irreps_out must be l, a list of l or irreps, not {irreps_out!r}"
            ) from err
    if not ls:
        raise InvalidSpecification("irreps_out of SphericalHarmonics is empty")
    if min(ls) < 0:
        raise InvalidSpecification(f"irreps_out: each l must be >= 0, got {ls}")
    return ls, irreps_in


def _check_normalization(normalization: str) -> None:
    if normalization not in ("integral", "component", "norm"):
        raise InvalidSpecification(
            f"normalization must be 'integral', 'component' or 'norm', got {normalization!r}"
        )


def spherical_harmonics(  # noqa: E741 (e3nn's argument name l)
    l: Any, x: Tensor, normalize: bool, normalization: str = "integral"
) -> Tensor:
    """``e3nn.o3.spherical_harmonics``: the same arguments, defaults and values.

    ``l`` is an int, a list of l (any order, repeats allowed), or irreps as a string or
    ``Irreps`` (parities checked as e3nn does). Any l; l > 8 warns once (see
    ``fastcg.spherical_harmonics``).

    >>> spherical_harmonics([0, 2], torch.randn(4, 3), True).shape
    torch.Size([4, 6])
    """
    _check_normalization(normalization)
    ls, _ = _degrees(l, None)
    lmax = max(ls)
    sh = _op(x, lmax, bool(normalize), normalization)
    if ls != list(range(lmax + 1)):
        sh = torch.cat([sh[..., deg * deg : (deg + 1) * (deg + 1)] for deg in ls], dim=-1)
    return sh


class SphericalHarmonics(torch.nn.Module):
    """Spherical harmonics of vectors, with e3nn's arguments (note e3nn's default normalization
    here is ``"integral"``).

    ``irreps_out`` is an int, a list of l, or irreps such as ``"1x0e+1x2e"``; the parity follows
    ``irreps_in`` (``"1o"`` vectors, ``"1e"`` pseudovectors) exactly as in e3nn. Any l: above
    l = 8 the module carries the recursion tables (non-persistent buffers), so it also scripts.

    >>> SphericalHarmonics([0, 2], normalize=True)(torch.randn(4, 3)).shape
    torch.Size([4, 6])
    """

    normalize: bool
    normalization: str
    _lmax: int
    _is_range_lmax: bool
    _rec_offsets: list[int]
    __e3nn_compile_mode__ = "script"  # e3nn.util.jit.compile scripts us

    def __init__(
        self,
        irreps_out: Any,
        normalize: bool,
        normalization: str = "integral",
        irreps_in: Any = None,
    ) -> None:
        super().__init__()
        _check_normalization(normalization)
        self.normalize, self.normalization = bool(normalize), normalization
        ls, irreps_in = _degrees(irreps_out, irreps_in)
        p_in = irreps_in[0].ir.p
        self.irreps_in = irreps_in
        self.irreps_out = o3().Irreps([(1, (deg, p_in**deg)) for deg in ls]).simplify()
        self._ls_list = ls
        self._lmax = max(ls)
        self._is_range_lmax = ls == list(range(self._lmax + 1))
        index = [i for deg in ls for i in range(deg * deg, (deg + 1) ** 2)]
        self.register_buffer("_index", torch.tensor(index, dtype=torch.long), persistent=False)
        # l > 8: the recursion's terms; empty otherwise (TorchScript needs the attributes)
        rec_index, rec_coeff, offsets = recursion_tables(self._lmax if self._lmax > 8 else 0)
        if self._lmax > 8:
            warn_high_l(self._lmax, stacklevel=2)
        self.register_buffer("_rec_index", rec_index.clone(), persistent=False)
        self.register_buffer("_rec_coeff", rec_coeff.clone(), persistent=False)
        self._rec_offsets = list(offsets)

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
        if self._lmax > 8:
            sh = high_l(
                x, self._lmax, self.normalize, self.normalization,
                self._rec_index, self._rec_coeff, self._rec_offsets,
            )  # fmt: skip
        else:
            sh = _op(x, self._lmax, self.normalize, self.normalization)
        if not self._is_range_lmax:
            sh = sh.index_select(-1, self._index)
        return sh
