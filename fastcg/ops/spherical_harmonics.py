"""spherical_harmonics: boundary, fake kernels, value -> gradient -> hessian autograd chain."""

import functools
import math
import warnings

import torch
from torch import Tensor

from .. import reference
from ..backend import namespace
from ._checks import check_float, check_last_dim, fake_dtype, fake_same_device

NORMALIZATIONS = ("integral", "component", "norm")
LMAX = 8  # highest l of the kernels (csrc/core/sh.h, fastcg/triton/_sh_generated.py)


def spherical_harmonics(
    vectors: Tensor, lmax: int, normalize: bool = True, normalization: str = "integral"
) -> Tensor:
    """Real spherical harmonics l = 0..lmax of ``vectors[..., 3]`` in e3nn's basis.

    Equals ``e3nn.o3.spherical_harmonics(list(range(lmax + 1)), vectors, normalize,
    normalization)``, with e3nn's default normalization ("integral"; it was "component" before
    issue 13). Zero vectors give finite values and zero gradients; NaN and inf give NaN where
    e3nn does (a NaN component: every l >= 1). l <= 8 runs the fused kernels; above, a PyTorch
    recursion continues them (differentiable twice; warns once; under TorchScript use
    fastcg.nn.SphericalHarmonics, which carries the recursion's tables).

    >>> spherical_harmonics(torch.tensor([[0.0, 0.0, 1.0]]), 1).shape
    torch.Size([1, 4])
    """
    _check(vectors, lmax, normalization)
    if lmax > 8:  # LMAX, spelled out for TorchScript
        if torch.jit.is_scripting():
            raise ValueError(
                "lmax > 8 is not available to TorchScript through spherical_harmonics(): "
                "script fastcg.nn.SphericalHarmonics, which carries the recursion tables"
            )
        return _high_l_eager(vectors, lmax, normalize, normalization)
    return _kernel(vectors, lmax, normalize, normalization)


def _check(vectors: Tensor, lmax: int, normalization: str) -> None:
    check_float(vectors, "vectors")
    check_last_dim(vectors, 3, "vectors")
    if not isinstance(lmax, int) or isinstance(lmax, bool):
        raise TypeError(f"lmax must be an int, got {type(lmax).__name__}")
    if lmax < 0:
        raise ValueError(f"lmax must be >= 0, got {lmax}")
    if normalization not in ["integral", "component", "norm"]:  # NORMALIZATIONS
        raise ValueError(
            f"normalization must be 'integral', 'component' or 'norm', got '{normalization}'"
        )


def _kernel(vectors: Tensor, lmax: int, normalize: bool, normalization: str) -> Tensor:
    """The registered op (or the forced backend) for lmax <= 8, any leading shape."""
    shape = list(vectors.shape[:-1]) + [(lmax + 1) * (lmax + 1)]
    if not torch.jit.is_scripting():
        ns = namespace(vectors.is_cuda, "spherical_harmonics")
        if ns != "fastcg":
            return _other(ns, vectors, lmax, normalize, normalization).reshape(shape)
    flat = vectors.reshape(-1, 3).contiguous()
    out = torch.ops.fastcg.spherical_harmonics(flat, lmax, normalize, normalization)
    return out.reshape(shape)


@torch.jit.unused
def _other(ns: str, vectors: Tensor, lmax: int, normalize: bool, normalization: str) -> Tensor:
    if ns == "reference":
        return reference.spherical_harmonics(vectors, lmax, normalize, normalization)
    flat = vectors.reshape(-1, 3).contiguous()
    return getattr(torch.ops, ns).spherical_harmonics(flat, lmax, normalize, normalization)


# ----------------------------------------------------------------------------- l > 8


def recursion_tables(lmax: int) -> tuple[Tensor, Tensor, list[int]]:
    """Terms of e3nn's recursion Y_{l+1}[m] += c Y_l[i] r_j for l < lmax: (i, j, m) int64 [T, 3],
    c float64 [T], and offsets (step l is rows offsets[l]:offsets[l + 1]); see reference.py."""
    index: list[tuple[int, int, int]] = []
    coeff: list[float] = []
    offsets = [0]
    for l in range(lmax):
        for i, j, m, c in reference.sh_recursion_terms(l):
            index.append((i, j, m))
            coeff.append(c)
        offsets.append(len(coeff))
    index_t = torch.tensor(index, dtype=torch.long).reshape(-1, 3)
    return index_t, torch.tensor(coeff, dtype=torch.float64), offsets


_cached_tables = functools.cache(recursion_tables)


def unit_vectors(vectors: Tensor) -> Tensor:
    """``vectors / |vectors|``; zero vectors give zero with zero gradients, NaN and inf give NaN
    (``sq == 0``, not ``sq > 0``, so a NaN norm is not masked)."""
    sq = vectors.pow(2).sum(dim=-1, keepdim=True)
    zero = sq == 0
    norm = torch.where(zero, torch.ones_like(sq), sq).sqrt()
    return torch.where(zero, torch.zeros_like(vectors), vectors / norm)


def high_l(
    vectors: Tensor, lmax: int, normalize: bool, normalization: str,
    index: Tensor, coeff: Tensor, offsets: list[int],
) -> Tensor:  # fmt: skip
    """Harmonics l = 0..lmax > 8: the kernels up to l = 8, then the recursion (scriptable).

    ``index``, ``coeff``, ``offsets`` are ``recursion_tables(lmax)`` (on the vectors' device)."""
    _check(vectors, lmax, normalization)
    shape = list(vectors.shape[:-1]) + [(lmax + 1) * (lmax + 1)]
    r = vectors.reshape(-1, 3)
    if normalize:
        r = unit_vectors(r)
    head = _kernel(r, 8, False, normalization)  # r is already unit: the raw polynomials
    y = [head]
    last = head[:, 64:] * (1.0 / _scale(normalization, 8))  # Y_8 in "component" again
    coeff = coeff.to(r.dtype)
    for l in range(8, lmax):
        a, b = offsets[l], offsets[l + 1]
        terms = last.index_select(1, index[a:b, 0]) * r.index_select(1, index[a:b, 1])
        last = r.new_zeros(r.shape[0], 2 * l + 3).index_add(1, index[a:b, 2], terms * coeff[a:b])
        y.append(last * _scale(normalization, l + 1))
    return torch.cat(y, dim=1).reshape(shape)


def _scale(normalization: str, l: int) -> float:
    """e3nn's scale of degree l relative to "component" (a Python float: TorchScript's
    torch.tensor(list of floats) rounds through float32)."""
    if normalization == "norm":
        return 1.0 / math.sqrt(2 * l + 1)
    if normalization == "integral":
        return 1.0 / math.sqrt(4 * math.pi)
    return 1.0


_warned = [False]


def warn_high_l(lmax: int, stacklevel: int = 2) -> None:
    """Warn once per process that l > 8 leaves the fused kernels (``stacklevel`` counts from the
    caller, as ``warnings.warn``'s does)."""
    if not _warned[0] and not torch.compiler.is_compiling():  # warnings.warn breaks graphs
        _warned[0] = True
        warnings.warn(
            f"fastcg: spherical harmonics of l > {LMAX} (here lmax={lmax}) run a PyTorch "
            f"recursion after the l <= {LMAX} kernels: correct, but slower",
            stacklevel=stacklevel + 1,
        )


@torch.jit.unused
def _high_l_eager(vectors: Tensor, lmax: int, normalize: bool, normalization: str) -> Tensor:
    warn_high_l(lmax, stacklevel=3)  # the caller of spherical_harmonics
    # torch.compile traces the tables into constants (it would trace through the cache anyway)
    tables = recursion_tables if torch.compiler.is_compiling() else _cached_tables
    index, coeff, offsets = tables(lmax)
    index, coeff = index.to(vectors.device), coeff.to(vectors.device)
    return high_l(vectors, lmax, normalize, normalization, index, coeff, offsets)


def register(ns: str) -> None:
    """Fake kernels and autograd for ``{ns}::spherical_harmonics`` and its two derivatives."""
    ops = getattr(torch.ops, ns)

    @torch.library.register_fake(f"{ns}::spherical_harmonics")
    def _(vectors, lmax, normalize, normalization):
        return vectors.new_empty(vectors.shape[0], (lmax + 1) ** 2)

    @torch.library.register_fake(f"{ns}::spherical_harmonics_backward")
    def _(grad_sh, vectors, lmax, normalize, normalization):
        op = f"{ns}::spherical_harmonics_backward"
        fake_same_device(op, vectors=vectors, grad_sh=grad_sh)  # metadata only, as the kernels
        fake_dtype(op, vectors.dtype, grad_sh=grad_sh)
        return torch.empty_like(vectors)

    @torch.library.register_fake(f"{ns}::spherical_harmonics_double_backward")
    def _(grad_grad_vectors, grad_sh, vectors, lmax, normalize, normalization):
        op, gg = f"{ns}::spherical_harmonics_double_backward", grad_grad_vectors
        fake_same_device(op, vectors=vectors, grad_sh=grad_sh, grad_grad_vectors=gg)
        fake_dtype(op, vectors.dtype, grad_sh=grad_sh, grad_grad_vectors=gg)
        return torch.empty_like(grad_sh), torch.empty_like(vectors)

    def setup_backward(ctx, inputs, output):
        grad_sh, vectors, *ctx.args = inputs
        ctx.save_for_backward(grad_sh, vectors)

    def backward_backward(ctx, grad):
        grad_sh, vectors = ctx.saved_tensors
        op = ops.spherical_harmonics_double_backward
        g_sh, g_vec = op(grad.contiguous(), grad_sh, vectors, *ctx.args)
        return g_sh, g_vec, None, None, None

    def no_third_derivative(ctx, *grads):
        raise NotImplementedError(
            "fastcg: third derivatives of spherical_harmonics are not implemented"
        )

    torch.library.register_autograd(
        f"{ns}::spherical_harmonics_double_backward", no_third_derivative
    )
    torch.library.register_autograd(
        f"{ns}::spherical_harmonics_backward", backward_backward, setup_context=setup_backward
    )


register("fastcg")
