"""fastcg.conv == zeros(N, dim_out).index_add_(0, dst, e3nn TP(x[src], edge_attr, w))."""

from __future__ import annotations

import pytest
import torch
from conftest import D, assert_close, descriptor, e3nn_tp, rotation, run_e3nn

import fastcg

F64 = torch.float64


def make_graph(case, num_nodes, num_edges, dtype, weights="per_edge", requires_grad=False):
    """Random features, edge attributes, weights and (unsorted) edges of a case."""
    desc = descriptor(case)
    x = torch.randn(num_nodes, desc.dim1, dtype=dtype)
    y = torch.randn(num_edges, desc.dim2, dtype=dtype)
    w = None
    if desc.weight_numel and weights == "per_edge":
        w = torch.randn(num_edges, desc.weight_numel, dtype=dtype)
    elif desc.weight_numel:
        w = torch.randn(desc.weight_numel, dtype=dtype)
    for t in (x, y, w):
        if t is not None:
            t.requires_grad_(requires_grad)
    high = max(num_nodes, 1)
    src = torch.randint(0, high, (num_edges,))
    dst = torch.randint(0, high, (num_edges,))
    return desc, x, y, w, src, dst


def expected(case, x, y, w, src, dst, num_nodes, shared=False):
    """The definition, with e3nn's TensorProduct for the messages (float64)."""
    msg = run_e3nn(e3nn_tp(case, shared=shared), x[src], y, w)
    return torch.zeros(num_nodes, msg.shape[-1], dtype=F64).index_add_(0, dst, msg)


@pytest.mark.parametrize("weights", ["per_edge", "shared"])
@pytest.mark.parametrize("case", ["uvu", "uvw", "mixed", "uuu", "random52"])
def test_matches_index_add_of_e3nn(case, weights, dtype, backend):
    desc, x, y, w, src, dst = make_graph(case, 6, 20, dtype, weights)
    out = fastcg.conv(x, y, w, src, dst, 6, desc)
    assert out.dtype == dtype
    assert_close(out, expected(case, x, y, w, src, dst, 6, shared=weights == "shared"))


def test_unweighted(dtype, backend):
    desc, x, y, w, src, dst = make_graph("unweighted", 5, 16, dtype)
    assert w is None
    out = fastcg.conv(x, y, None, src, dst, 5, desc)
    assert_close(out, expected("unweighted", x, y, w, src, dst, 5))


def test_sort_edges_is_stable_sort_by_dst():
    src = torch.randint(0, 7, (40,))
    dst = torch.randint(0, 7, (40,))
    s, d, perm = fastcg.sort_edges(src, dst)
    order = sorted(range(40), key=lambda e: int(dst[e]))  # Python's sort is stable
    assert perm.tolist() == order
    assert torch.equal(s, src[order]) and torch.equal(d, dst[order])


def test_sorted_and_unsorted_edges_agree(backend):
    desc, x, y, w, src, dst = make_graph("uvu", 8, 40, F64)
    ref = expected("uvu", x, y, w, src, dst, 8)
    s, d, perm = fastcg.sort_edges(src, dst)
    assert_close(fastcg.conv(x, y, w, src, dst, 8, desc), ref)
    assert_close(fastcg.conv(x, y[perm], w[perm], s, d, 8, desc), ref)


def test_sorted_edges_are_deterministic():
    """With dst-sorted edges the C++ result is bitwise reproducible, whatever the thread count.

    (Only the C++ backend promises this; torch's own index_add_ does not.)
    """
    desc, x, y, w, src, dst = make_graph("uvw", 10, 300, torch.float32)
    src, dst, perm = fastcg.sort_edges(src, dst)
    y, w = y[perm], w[perm]
    with fastcg.use_backend("cpu"):
        first = fastcg.conv(x, y, w, src, dst, 10, desc)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            with fastcg.use_backend("cpu"):
                assert torch.equal(fastcg.conv(x, y, w, src, dst, 10, desc), first)
    finally:
        torch.set_num_threads(threads)


def test_backward_is_deterministic():
    """The C++ backward (per-edge rows summed per source node in edge order) is bitwise
    reproducible whatever the thread count, with unsorted edges and high-degree nodes."""
    desc, x, y, w, src, dst = make_graph("mixed", 6, 3000, torch.float64, requires_grad=True)
    g = torch.randn(6, desc.dim_out, dtype=torch.float64)

    def grads():
        with fastcg.use_backend("cpu"):
            return torch.autograd.grad(fastcg.conv(x, y, w, src, dst, 6, desc), (x, y, w), g)

    first = grads()
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            assert all(torch.equal(a, b) for a, b in zip(grads(), first))
    finally:
        torch.set_num_threads(threads)


def test_int32_indices(backend):
    desc, x, y, w, src, dst = make_graph("uvu", 4, 10, F64)
    out = fastcg.conv(x, y, w, src.int(), dst.int(), 4, desc)
    assert_close(out, expected("uvu", x, y, w, src, dst, 4))


@pytest.mark.parametrize(
    ("num_nodes", "num_edges", "out_nodes"), [(0, 0, 0), (5, 0, 5), (0, 0, 3), (4, 6, 9)]
)
def test_zero_size_and_isolated_nodes(num_nodes, num_edges, out_nodes, backend):
    """No edges (E=0), no nodes (N=0) and output nodes that receive nothing stay zero."""
    desc, x, y, w, src, dst = make_graph("uvu", num_nodes, num_edges, F64, requires_grad=True)
    out = fastcg.conv(x, y, w, src, dst, out_nodes, desc)
    assert out.shape == (out_nodes, desc.dim_out)
    assert_close(out, expected("uvu", x, y, w, src, dst, out_nodes))
    gx, gy, gw = torch.autograd.grad(
        out.sum(), (x, y, w), allow_unused=True, materialize_grads=True
    )
    assert gx.shape == x.shape and gy.shape == y.shape and gw.shape == w.shape
    if num_edges == 0:
        assert gx.abs().sum() == 0


def test_non_contiguous(dtype, backend):
    desc = descriptor("mixed")
    x = torch.randn(desc.dim1, 5, dtype=dtype).T
    y = torch.randn(12, 2 * desc.dim2, dtype=dtype)[:, ::2]
    w = torch.randn(desc.weight_numel, 12, dtype=dtype).T
    src = torch.randint(0, 5, (24,))[::2]
    dst = torch.randint(0, 5, (12, 2)).T[0]
    assert not any(t.is_contiguous() for t in (x, y, w, src, dst))
    out = fastcg.conv(x, y, w, src, dst, 5, desc)
    assert_close(out, expected("mixed", x, y, w, src, dst, 5))


@pytest.mark.parametrize("weights", ["per_edge", "shared"])
@pytest.mark.parametrize("case", ["uvu", "mixed", "random50"])
def test_derivatives_match_e3nn(case, weights, backend):
    """First and second derivatives w.r.t. x, edge_attr and weights equal e3nn's (float64)."""
    desc, x, y, w, src, dst = make_graph(case, 5, 14, F64, weights, requires_grad=True)
    inputs = (x, y, w)
    g = torch.randn(5, desc.dim_out, dtype=F64)
    h = [torch.randn_like(t) for t in inputs]

    def grads(fn):
        first = torch.autograd.grad((fn(*inputs) * g).sum(), inputs, create_graph=True)
        total = sum((a * b).sum() for a, b in zip(first, h))
        second = torch.autograd.grad(total, inputs, allow_unused=True, materialize_grads=True)
        return first + second

    tp = e3nn_tp(case, shared=weights == "shared")

    def theirs(a, b, c):
        msg = tp(a[src], b, c)
        return torch.zeros(5, desc.dim_out, dtype=F64).index_add(0, dst, msg)

    def ours(a, b, c):
        return fastcg.conv(a, b, c, src, dst, 5, desc)

    for a, b in zip(grads(ours), grads(theirs)):
        assert_close(a, b)


@pytest.mark.parametrize("weights", ["per_edge", "shared"])
@pytest.mark.parametrize("case", ["small_uvu", "small_modes"])
def test_gradcheck(case, weights, backend):
    desc, x, y, w, src, dst = make_graph(case, 3, 5, F64, weights, requires_grad=True)

    def fn(a, b, c):
        return fastcg.conv(a, b, c, src, dst, 3, desc)

    assert torch.autograd.gradcheck(fn, (x, y, w))
    assert torch.autograd.gradgradcheck(fn, (x, y, w))


def test_gradcheck_unweighted(backend):
    desc, x, y, _, src, dst = make_graph("unweighted", 3, 4, F64, requires_grad=True)

    def fn(a, b):
        return fastcg.conv(a, b, None, src, dst, 3, desc)

    assert torch.autograd.gradcheck(fn, (x, y))
    assert torch.autograd.gradgradcheck(fn, (x, y))


@pytest.mark.parametrize("parity", [False, True], ids=["rotation", "inversion"])
@pytest.mark.parametrize("case", ["uvu", "mixed"])
def test_equivariance(case, parity, backend):
    """conv(x D1^T, y D2^T) = conv(x, y) D_out^T for rotations and improper rotations."""
    desc, x, y, w, src, dst = make_graph(case, 6, 20, F64)
    r = rotation(parity)
    d1, d2, do = D(desc.irreps_in1, r), D(desc.irreps_in2, r), D(desc.irreps_out, r)
    first = fastcg.conv(x @ d1.T, y @ d2.T, w, src, dst, 6, desc)
    after = fastcg.conv(x, y, w, src, dst, 6, desc) @ do.T
    assert_close(first, after)


def test_equivariance_with_spherical_harmonics(backend):
    """The NequIP pattern: edge_attr = Y(r_ij); rotating the positions rotates the output."""
    desc = descriptor("uvu")  # x2 = 1x0e+1x1o+1x2e: spherical harmonics up to l = 2
    pos = torch.randn(6, 3, dtype=F64)
    x = torch.randn(6, desc.dim1, dtype=F64)
    src, dst = torch.randint(0, 6, (20,)), torch.randint(0, 6, (20,))
    w = torch.randn(20, desc.weight_numel, dtype=F64)
    r = rotation(True)

    def run(p, feats):
        y = fastcg.spherical_harmonics(p[src] - p[dst], 2, True, "component")
        return fastcg.conv(feats, y, w, src, dst, 6, desc)

    d1, do = D(desc.irreps_in1, r), D(desc.irreps_out, r)
    assert_close(run(pos @ r.T, x @ d1.T), run(pos, x) @ do.T)


# ---------------------------------------------------------------------------------------------


def _op_args(case, weights, requires_grad=True, num_nodes=4, num_edges=7):
    desc, x, y, w, src, dst = make_graph(case, num_nodes, num_edges, F64, weights, requires_grad)
    if w is None:
        w = torch.empty(0, dtype=F64)
    return desc, x, y, w, src, dst, desc.tensors()


@pytest.mark.parametrize("weights", ["per_edge", "shared"])
@pytest.mark.parametrize("case", ["small_modes", "unweighted"])
def test_opcheck_conv(case, weights):
    desc, x, y, w, src, dst, tables = _op_args(case, weights)
    torch.library.opcheck(
        torch.ops.fastcg.conv.default, (x, y, w, src, dst, 4, *tables, desc.dim_out)
    )


@pytest.mark.parametrize("mask", [[True, True, True], [False, True, False]], ids=str)
@pytest.mark.parametrize("weights", ["per_edge", "shared"])
def test_opcheck_conv_backward(weights, mask):
    desc, x, y, w, src, dst, tables = _op_args("small_uvu", weights)
    g = torch.randn(4, desc.dim_out, dtype=F64, requires_grad=True)
    torch.library.opcheck(
        torch.ops.fastcg.conv_backward.default, (g, x, y, w, src, dst, *tables, mask)
    )


def test_opcheck_no_edges():
    desc, x, y, w, src, dst, tables = _op_args("small_uvu", "per_edge", num_edges=0)
    torch.library.opcheck(
        torch.ops.fastcg.conv.default, (x, y, w, src, dst, 4, *tables, desc.dim_out)
    )
