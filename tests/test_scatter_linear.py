"""fastcg.scatter_sum == index_add_; fastcg.linear == e3nn.o3.Linear (shared / per-species)."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import D, assert_close, default_dtype, rotation
from e3nn import o3

import fastcg

F64 = torch.float64

# ------------------------------------------------------------------------------- scatter_sum


def index_add(src, index, dim_size):
    return torch.zeros(dim_size, *src.shape[1:], dtype=F64).index_add_(0, index, src.to(F64))


@pytest.mark.parametrize("shape", [(50,), (50, 7), (50, 2, 3)], ids=str)
def test_scatter_matches_index_add(shape, dtype, backend):
    src = torch.randn(*shape, dtype=dtype)
    index = torch.randint(0, 9, (shape[0],))
    out = fastcg.scatter_sum(src, index, 12)  # rows 9..11 receive nothing
    assert out.shape == (12, *shape[1:]) and out.dtype == dtype
    assert_close(out, index_add(src, index, 12))


def test_scatter_int32_index(backend):
    src = torch.randn(20, 4, dtype=F64)
    index = torch.randint(0, 5, (20,), dtype=torch.int32)
    assert_close(fastcg.scatter_sum(src, index, 5), index_add(src, index.long(), 5))


@pytest.mark.parametrize(("num", "features", "dim_size"), [(0, 4, 0), (0, 4, 3), (5, 0, 2)])
def test_scatter_zero_size(num, features, dim_size, backend):
    src = torch.randn(num, features, dtype=F64, requires_grad=True)
    index = torch.randint(0, max(dim_size, 1), (num,))
    out = fastcg.scatter_sum(src, index, dim_size)
    assert out.shape == (dim_size, features)
    assert_close(out, index_add(src.detach(), index, dim_size))
    (grad,) = torch.autograd.grad(out.sum(), src, allow_unused=True, materialize_grads=True)
    assert grad.shape == src.shape


def test_scatter_non_contiguous(dtype, backend):
    src = torch.randn(6, 30, dtype=dtype).T
    index = torch.randint(0, 4, (60,))[::2]
    assert not (src.is_contiguous() or index.is_contiguous())
    assert_close(fastcg.scatter_sum(src, index, 4), index_add(src, index, 4))


def test_scatter_gradients(backend):
    src = torch.randn(7, 3, dtype=F64, requires_grad=True)
    index = torch.tensor([0, 2, 2, 1, 0, 2, 4])

    def fn(s):
        return fastcg.scatter_sum(s, index, 5)

    g = torch.randn(5, 3, dtype=F64)
    (grad,) = torch.autograd.grad(fn(src), src, g)
    assert_close(grad, g[index])  # the transpose of a scatter is a gather
    assert torch.autograd.gradcheck(fn, (src,))
    assert torch.autograd.gradgradcheck(fn, (src,))


def test_scatter_is_deterministic():
    """The C++ scatter gives bitwise the same sums at every thread count."""
    src = torch.randn(5000, 8)
    index = torch.randint(0, 13, (5000,))
    with fastcg.use_backend("cpu"):
        first = fastcg.scatter_sum(src, index, 13)
        threads = torch.get_num_threads()
        try:
            for n in (1, 2, 3):
                torch.set_num_threads(n)
                assert torch.equal(fastcg.scatter_sum(src, index, 13), first)
        finally:
            torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype_", [torch.float32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("num", [0, 9])
def test_opcheck_scatter_sum(num, dtype_):
    src = torch.randn(num, 4, dtype=dtype_, requires_grad=True)
    index = torch.randint(0, 3, (num,))
    torch.library.opcheck(torch.ops.fastcg.scatter_sum.default, (src, index, 3))


# ------------------------------------------------------------------------------------ linear

LINEAR_CASES = {
    "simple": ("4x0e+2x1o+1x2e", "3x0e+2x1o+2x2e", None, "element"),
    "mixed_parity": ("2x0e+1x0o+3x1o+2x1e+1x2o", "1x0e+2x0o+2x1o+1x1e+3x2o", None, "path"),
    # repeated irreps, an output with no input (stays zero), an explicit instruction subset
    "repeated": ("2x0e+1x1o+3x0e", "1x0e+2x1o+2x0e+1x1e", [(0, 0), (2, 0), (1, 1), (2, 2)],
                 "element"),
    "repeated_path": ("2x0e+1x1o+3x0e", "1x0e+2x1o+2x0e+1x1e", [(0, 0), (2, 0), (1, 1), (0, 2)],
                      "path"),
}  # fmt: skip


@functools.cache
def e3nn_linear(case: str, shared: bool = True):
    """float64 e3nn Linear; shared=False takes per-row weights in forward (no bias)."""
    ir_in, ir_out, ins, path_norm = LINEAR_CASES[case]
    with default_dtype(F64):
        return o3.Linear(
            ir_in, ir_out, instructions=ins, path_normalization=path_norm,
            internal_weights=shared, shared_weights=shared,
        )  # fmt: skip


def linear_desc(case: str):
    ir_in, ir_out, ins, path_norm = LINEAR_CASES[case]
    return fastcg.linear_descriptor(ir_in, ir_out, ins, path_norm)


@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_linear_matches_e3nn(case, dtype, backend):
    lin = e3nn_linear(case)
    desc = linear_desc(case)
    assert desc.weight_numel == lin.weight_numel
    x = torch.randn(11, desc.dim_in, dtype=dtype)
    w = lin.weight.detach().to(dtype)  # the e3nn module's own (random) weights
    out = fastcg.linear(x, w, desc)
    assert out.dtype == dtype
    with torch.no_grad():
        assert_close(out, lin(x.to(F64)))


def test_linear_batch_dims(backend):
    lin, desc = e3nn_linear("mixed_parity"), linear_desc("mixed_parity")
    x = torch.randn(2, 3, desc.dim_in, dtype=F64)
    out = fastcg.linear(x, lin.weight.detach(), desc)
    assert out.shape == (2, 3, desc.dim_out)
    with torch.no_grad():
        assert_close(out, lin(x))


@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_linear_species_matches_per_row_weights(case, dtype, backend):
    """species selects a weight row per sample == e3nn Linear with per-sample weights W[species]."""
    desc = linear_desc(case)
    weights = torch.randn(4, desc.weight_numel, dtype=dtype)
    species = torch.randint(0, 4, (13,))
    x = torch.randn(13, desc.dim_in, dtype=dtype)
    out = fastcg.linear(x, weights, desc, species=species)
    with torch.no_grad():
        expected = e3nn_linear(case, shared=False)(x.to(F64), weights.to(F64)[species])
    assert_close(out, expected)


def test_linear_species_int32_and_unused_species(backend):
    desc = linear_desc("simple")
    weights = torch.randn(5, desc.weight_numel, dtype=F64)
    species = torch.tensor([3, 3, 0, 3], dtype=torch.int32)  # species 1, 2, 4 unused
    x = torch.randn(4, desc.dim_in, dtype=F64)
    out = fastcg.linear(x, weights, desc, species=species)
    with torch.no_grad():
        expected = e3nn_linear("simple", shared=False)(x, weights[species.long()])
    assert_close(out, expected)


@pytest.mark.parametrize("species", [False, True], ids=["shared", "species"])
def test_linear_zero_batch(species, backend):
    desc = linear_desc("simple")
    x = torch.randn(0, desc.dim_in, dtype=F64, requires_grad=True)
    w = torch.randn(*((3,) if species else ()), desc.weight_numel, dtype=F64, requires_grad=True)
    sp = torch.zeros(0, dtype=torch.long) if species else None
    out = fastcg.linear(x, w, desc, species=sp)
    assert out.shape == (0, desc.dim_out)
    gx, gw = torch.autograd.grad(out.sum(), (x, w), allow_unused=True, materialize_grads=True)
    assert gx.shape == x.shape and gw.shape == w.shape and gw.abs().sum() == 0


@pytest.mark.parametrize("species", [False, True], ids=["shared", "species"])
def test_linear_non_contiguous(species, dtype, backend):
    desc = linear_desc("mixed_parity")
    x = torch.randn(desc.dim_in, 6, dtype=dtype).T
    if species:
        w = torch.randn(desc.weight_numel, 3, dtype=dtype).T
        sp = torch.randint(0, 3, (12,))[::2]
        expected = e3nn_linear("mixed_parity", shared=False)(x.to(F64), w.to(F64)[sp])
    else:
        w = torch.randn(2 * desc.weight_numel, dtype=dtype)[::2]
        sp = None
        expected = e3nn_linear("mixed_parity", shared=False)(x.to(F64), w.to(F64).expand(6, -1))
    assert not (x.is_contiguous() or w.is_contiguous())
    assert_close(fastcg.linear(x, w, desc, species=sp), expected.detach())


@pytest.mark.parametrize("species", [False, True], ids=["shared", "species"])
@pytest.mark.parametrize("case", ["simple", "repeated_path"])
def test_linear_derivatives_match_e3nn(case, species, backend):
    """First derivatives (x, weights) and second derivatives equal e3nn's autograd."""
    desc = linear_desc(case)
    x = torch.randn(6, desc.dim_in, dtype=F64, requires_grad=True)
    sp = torch.tensor([0, 2, 1, 2, 2, 0]) if species else None
    w = torch.randn(*((3,) if species else ()), desc.weight_numel, dtype=F64, requires_grad=True)
    g = torch.randn(6, desc.dim_out, dtype=F64)
    h = (torch.randn_like(x), torch.randn_like(w))
    lin = e3nn_linear(case, shared=False)

    def theirs(a, b):
        return lin(a, b[sp] if species else b.expand(6, -1))

    def derivatives(fn):
        first = torch.autograd.grad((fn(x, w) * g).sum(), (x, w), create_graph=True)
        total = sum((a * b).sum() for a, b in zip(first, h))
        return first + torch.autograd.grad(total, (x, w), allow_unused=True, materialize_grads=True)

    ours = derivatives(lambda a, b: fastcg.linear(a, b, desc, species=sp))
    for a, b in zip(ours, derivatives(theirs)):
        assert_close(a, b)


@pytest.mark.parametrize("species", [False, True], ids=["shared", "species"])
def test_linear_gradcheck(species, backend):
    desc = fastcg.linear_descriptor("2x0e+1x1o", "1x0e+2x1o+1x0e")
    x = torch.randn(3, desc.dim_in, dtype=F64, requires_grad=True)
    w = torch.randn(*((2,) if species else ()), desc.weight_numel, dtype=F64, requires_grad=True)
    sp = torch.tensor([1, 0, 1]) if species else None

    def fn(a, b):
        return fastcg.linear(a, b, desc, species=sp)

    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))


@pytest.mark.parametrize("parity", [False, True], ids=["rotation", "inversion"])
def test_linear_equivariance(parity, backend):
    desc = linear_desc("mixed_parity")
    r = rotation(parity)
    x = torch.randn(5, desc.dim_in, dtype=F64)
    w = torch.randn(desc.weight_numel, dtype=F64)
    d_in, d_out = D(desc.irreps_in, r), D(desc.irreps_out, r)
    assert_close(fastcg.linear(x @ d_in.T, w, desc), fastcg.linear(x, w, desc) @ d_out.T)


@pytest.mark.parametrize("species", [False, True], ids=["shared", "species"])
def test_opcheck_linear(species):
    desc = linear_desc("repeated")
    x = torch.randn(5, desc.dim_in, dtype=F64, requires_grad=True)
    w = torch.randn(*((3,) if species else ()), desc.weight_numel, dtype=F64, requires_grad=True)
    sp = torch.tensor([2, 0, 1, 1, 0]) if species else None
    paths, coeff = desc.tensors()
    g = torch.randn(5, desc.dim_out, dtype=F64, requires_grad=True)
    ops = torch.ops.fastcg
    torch.library.opcheck(ops.linear.default, (x, w, sp, paths, coeff, desc.dim_out))
    for mask in ([True, True], [False, True], [True, False]):
        torch.library.opcheck(ops.linear_backward.default, (g, x, w, sp, paths, coeff, mask))
