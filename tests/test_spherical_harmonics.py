"""fastcg.spherical_harmonics against e3nn.o3.spherical_harmonics (l = 0..8)."""

from __future__ import annotations

import pytest
import torch
from conftest import D, assert_close, rotation
from e3nn import o3

import fastcg

F64 = torch.float64
NORMALIZATIONS = ["component", "norm", "integral"]
LMAX = 8


def e3nn_sh(vectors, lmax, normalize, normalization):
    """e3nn in float64, whatever dtype the vectors have."""
    return o3.spherical_harmonics(list(range(lmax + 1)), vectors.to(F64), normalize, normalization)


def sh_irreps(lmax: int) -> str:
    return str(o3.Irreps.spherical_harmonics(lmax))  # 0e + 1o + 2e + ... (parity (-1)^l)


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("lmax", range(LMAX + 1))
def test_matches_e3nn(lmax, normalization, normalize, dtype, backend):
    vectors = torch.randn(33, 3, dtype=dtype)
    if not normalize:  # keep |r|^l moderate so float32 compares at its relative precision
        vectors = (
            vectors / vectors.norm(dim=-1, keepdim=True) * torch.rand(33, 1, dtype=dtype).add(0.5)
        )
    out = fastcg.spherical_harmonics(vectors, lmax, normalize, normalization)
    assert out.shape == (33, (lmax + 1) ** 2) and out.dtype == dtype
    assert_close(out, e3nn_sh(vectors, lmax, normalize, normalization))


def test_default_arguments(backend):
    """Defaults are normalize=True, normalization="integral": e3nn's default (issue 13)."""
    vectors = torch.randn(5, 3, dtype=F64)
    assert_close(fastcg.spherical_harmonics(vectors, 3), e3nn_sh(vectors, 3, True, "integral"))


def test_batch_dims(backend):
    vectors = torch.randn(2, 4, 3, dtype=F64)
    out = fastcg.spherical_harmonics(vectors, 4, True, "norm")
    assert out.shape == (2, 4, 25)
    assert_close(out, e3nn_sh(vectors, 4, True, "norm"))


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_zero_size(normalize, backend):
    vectors = torch.zeros(0, 3, dtype=F64, requires_grad=True)
    out = fastcg.spherical_harmonics(vectors, 5, normalize, "component")
    assert out.shape == (0, 36)
    (grad,) = torch.autograd.grad(out.sum(), vectors)
    assert grad.shape == (0, 3)
    empty = torch.zeros(2, 0, 3, dtype=F64)
    assert fastcg.spherical_harmonics(empty, 2, True, "component").shape == (2, 0, 9)


def test_non_contiguous(dtype, backend):
    vectors = torch.randn(3, 20, dtype=dtype).T  # transposed view
    strided = torch.randn(20, 6, dtype=dtype)[:, ::2]  # every other column
    for v in (vectors, strided):
        assert not v.is_contiguous()
        assert_close(
            fastcg.spherical_harmonics(v, 6, True, "integral"), e3nn_sh(v, 6, True, "integral")
        )


def test_non_contiguous_gradient(backend):
    v = torch.randn(3, 10, dtype=F64).T.detach().requires_grad_()
    g = torch.randn(25, 10, dtype=F64).T
    (ours,) = torch.autograd.grad(fastcg.spherical_harmonics(v, 4, True, "component"), v, g)
    (theirs,) = torch.autograd.grad(e3nn_sh(v, 4, True, "component"), v, g)
    assert_close(ours, theirs)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("lmax", [0, 1, 3, 8])
def test_zero_vectors(lmax, normalization, backend):
    """Zero-length vectors give finite values and zero first and second derivatives."""
    vectors = torch.zeros(3, 3, dtype=F64)
    vectors[1] = torch.tensor([0.3, -0.2, 0.9])
    vectors.requires_grad_()
    out = fastcg.spherical_harmonics(vectors, lmax, True, normalization)
    assert torch.isfinite(out).all()
    # e3nn with normalize=True maps a zero vector to zero (torch.nn.functional.normalize)
    assert_close(out, e3nn_sh(vectors.detach(), lmax, True, normalization))
    grad = _grad(out, vectors, torch.randn_like(out), create_graph=True)
    assert torch.isfinite(grad).all()
    assert grad[0].abs().max() == 0 and grad[2].abs().max() == 0
    second = _grad(grad, vectors, torch.randn_like(grad))
    assert torch.isfinite(second).all()
    assert second[0].abs().max() == 0 and second[2].abs().max() == 0


def _grad(out, vectors, cotangent, create_graph=False):
    """d<cotangent, out>/d vectors; zeros when out is constant (l = 0, or raw l <= 1 gradients)."""
    if not out.requires_grad:
        return torch.zeros_like(vectors)
    (d,) = torch.autograd.grad(
        out, vectors, cotangent, create_graph=create_graph, materialize_grads=True
    )
    return d


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("lmax", range(LMAX + 1))
def test_derivatives_match_e3nn(lmax, normalization, normalize, backend):
    """First and second derivatives equal those of e3nn's autograd, float64."""
    vectors = torch.randn(6, 3, dtype=F64, requires_grad=True)
    g = torch.randn(6, (lmax + 1) ** 2, dtype=F64)
    h = torch.randn(6, 3, dtype=F64)

    def derivatives(fn):
        first = _grad(fn(vectors), vectors, g, create_graph=True)
        return first, _grad(first, vectors, h)

    ours = derivatives(lambda v: fastcg.spherical_harmonics(v, lmax, normalize, normalization))
    theirs = derivatives(lambda v: e3nn_sh(v, lmax, normalize, normalization))
    for a, b in zip(ours, theirs):
        assert_close(a, b)


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("lmax", range(LMAX + 1))
def test_gradcheck(lmax, normalization, normalize, backend):
    vectors = torch.randn(2 if lmax > 5 else 4, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v: fastcg.spherical_harmonics(v, lmax, normalize, normalization), (vectors,)
    )


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("lmax", [1, 2, 3, 4, 8])  # l = 0 is constant: nothing to check
def test_gradgradcheck(lmax, normalization, normalize, backend):
    vectors = torch.randn(1 if lmax > 4 else 3, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda v: fastcg.spherical_harmonics(v, lmax, normalize, normalization), (vectors,)
    )


@pytest.mark.parametrize("parity", [False, True], ids=["rotation", "inversion"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_equivariance(normalize, parity, backend):
    """Y(R r) = D(R) Y(r); with -I the odd l flip sign (irreps 0e + 1o + 2e + ...)."""
    r = rotation(parity)
    vectors = torch.randn(10, 3, dtype=F64)
    d = D(sh_irreps(LMAX), r)
    rotated = fastcg.spherical_harmonics(vectors @ r.T, LMAX, normalize, "component")
    assert_close(rotated, fastcg.spherical_harmonics(vectors, LMAX, normalize, "component") @ d.T)


def test_unit_norm_per_l(backend):
    """Property independent of e3nn: with "norm", each l block of Y(r/|r|) has unit norm."""
    out = fastcg.spherical_harmonics(torch.randn(8, 3, dtype=F64), LMAX, True, "norm")
    norms = torch.stack([out[:, k * k : (k + 1) ** 2].norm(dim=1) for k in range(LMAX + 1)], 1)
    assert_close(norms, torch.ones_like(norms))


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize(
    ("lmax", "normalization"), [(0, "component"), (3, "norm"), (8, "integral")]
)
def test_opcheck(lmax, normalization, normalize):
    v = torch.randn(5, 3, dtype=F64, requires_grad=True)
    g = torch.randn(5, (lmax + 1) ** 2, dtype=F64, requires_grad=True)
    gg = torch.randn(5, 3, dtype=F64, requires_grad=True)
    args = (lmax, normalize, normalization)
    ops = torch.ops.fastcg
    torch.library.opcheck(ops.spherical_harmonics.default, (v, *args))
    torch.library.opcheck(ops.spherical_harmonics_backward.default, (g, v, *args))
    # the double backward is the last order: checked without autograd (third order raises)
    plain = (gg.detach(), g.detach(), v.detach())
    torch.library.opcheck(ops.spherical_harmonics_double_backward.default, (*plain, *args))


def test_third_derivative_raises_clearly():
    v = torch.randn(4, 3, dtype=F64, requires_grad=True)
    y = fastcg.spherical_harmonics(v, 2, True, "component")
    (g,) = torch.autograd.grad(y.pow(2).sum(), v, create_graph=True)
    (h,) = torch.autograd.grad(g.pow(2).sum(), v, create_graph=True)
    with pytest.raises(NotImplementedError, match="third derivatives"):
        torch.autograd.grad(h.sum(), v)


def test_opcheck_float32_and_zero_size():
    ops = torch.ops.fastcg
    for n in (0, 4):
        v = torch.randn(n, 3, requires_grad=True)
        g = torch.randn(n, 9, requires_grad=True)
        torch.library.opcheck(ops.spherical_harmonics.default, (v, 2, True, "component"))
        torch.library.opcheck(ops.spherical_harmonics_backward.default, (g, v, 2, True, "norm"))


def test_registered_op_matches_e3nn():
    v = torch.randn(7, 3, dtype=F64)
    out = torch.ops.fastcg.spherical_harmonics(v, LMAX, True, "integral")
    assert_close(out, e3nn_sh(v, LMAX, True, "integral"))
