"""fastcg.conv_radial(x, y, h, W, ...) == fastcg.conv(x, y, h @ W, ...), chunked or not."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import D, assert_close, rotation
from test_conv import expected, make_graph

import fastcg
import fastcg.nn as fnn

F64 = torch.float64


def radial_graph(case, num_nodes, num_edges, dtype, k=5, requires_grad=False, sort=False):
    desc, x, y, _, src, dst = make_graph(case, num_nodes, num_edges, dtype)
    if sort:
        src, dst, perm = fastcg.sort_edges(src, dst)
        y = y[perm]
    h = torch.randn(num_edges, k, dtype=dtype)
    W = torch.randn(k, desc.weight_numel, dtype=dtype) / k**0.5
    for t in (x, y, h, W):
        t.requires_grad_(requires_grad)
    return desc, x, y, h, W, src, dst


@pytest.mark.parametrize("sort", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize("case", ["uvu", "mixed", "random52"])
def test_matches_conv_of_the_product(case, sort, dtype, backend, chunk):
    desc, x, y, h, W, src, dst = radial_graph(case, 7, 30, dtype, sort=sort)
    out = fastcg.conv_radial(x, y, h, W, src, dst, 7, desc)
    assert out.dtype == dtype and out.shape == (7, desc.dim_out)
    assert_close(out, expected(case, x, y, h @ W, src, dst, 7))


def test_equals_conv_bitwise_when_one_chunk(chunk):
    # dst-sorted, one chunk per node or one in all: the same kernels sum in the same order
    desc, x, y, h, W, src, dst = radial_graph("uvu", 9, 50, torch.float32, sort=True)
    with fastcg.use_backend("cpu"):
        out = fastcg.conv_radial(x, y, h, W, src, dst, 9, desc)
        ref = fastcg.conv(x, y, h @ W, src, dst, 9, desc)
    assert torch.allclose(out, ref, rtol=1e-6, atol=1e-6)
    if chunk is None:
        assert torch.equal(out, ref)


@pytest.mark.parametrize(("num_nodes", "num_edges", "out_nodes"), [(4, 0, 4), (0, 0, 0), (3, 6, 9)])
def test_no_edges_and_isolated_nodes(num_nodes, num_edges, out_nodes, backend, chunk):
    desc, x, y, h, W, src, dst = radial_graph("uvu", num_nodes, num_edges, F64)
    out = fastcg.conv_radial(x, y, h, W, src, dst, out_nodes, desc)
    assert out.shape == (out_nodes, desc.dim_out)
    assert_close(out, expected("uvu", x, y, h @ W, src, dst, out_nodes))


@pytest.mark.parametrize("case", ["uvu", "mixed"])
def test_derivatives_match_conv_of_the_product(case, backend, chunk):
    """First and second derivatives (all five inputs) equal those of conv(x, y, h @ W)."""
    desc, x, y, h, W, src, dst = radial_graph(case, 6, 25, F64, requires_grad=True)
    inputs = (x, y, h, W)
    g = torch.randn(6, desc.dim_out, dtype=F64, requires_grad=True)

    def grads(fn):
        out = fn()
        first = torch.autograd.grad(out, inputs, g, create_graph=True)
        total = sum((f * torch.randn_like(f)).sum() for f in first)
        torch.manual_seed(1)
        second = torch.autograd.grad(total, (*inputs, g), allow_unused=True)
        return first, second

    torch.manual_seed(2)
    ours = grads(lambda: fastcg.conv_radial(x, y, h, W, src, dst, 6, desc))
    torch.manual_seed(2)
    ref = grads(lambda: fastcg.conv(x, y, h @ W, src, dst, 6, desc))
    for a, b in zip(ours[0] + ours[1], ref[0] + ref[1]):
        if b is None:
            assert a is None or not a.any()
        else:
            assert_close(a, b)


@pytest.mark.parametrize("first", [(2,), (3,), (2, 3), (0, 3), (1, 2)], ids=str)
def test_second_derivatives_from_some_first(first, chunk):
    """Second derivatives when only some first-order gradients carry cotangents (training on
    forces differentiates radial's and W's gradients through different paths), all five inputs,
    equal to conv(x, y, h @ W)'s; with many chunks the weights are never whole."""
    desc, x, y, h, W, src, dst = radial_graph("mixed", 6, 25, F64, requires_grad=True)
    inputs = (x, y, h, W)
    g = torch.randn(6, desc.dim_out, dtype=F64, requires_grad=True)
    cot = [torch.randn_like(inputs[i]) for i in first]

    def second(out):
        grads = torch.autograd.grad(out, [inputs[i] for i in first], g, create_graph=True)
        total = sum((a * c).sum() for a, c in zip(grads, cot))
        return torch.autograd.grad(total, (*inputs, g), allow_unused=True)

    ours = second(fastcg.conv_radial(x, y, h, W, src, dst, 6, desc))
    ref = second(fastcg.conv(x, y, h @ W, src, dst, 6, desc))
    for a, b in zip(ours, ref):
        if b is None or a is None:
            assert (a is None or not a.any()) and (b is None or not b.any())
        else:
            assert_close(a, b)


GG_NAMES = ("x", "edge_attr", "radial", "radial_weight")


@pytest.mark.parametrize("sort", [False, True], ids=["unsorted", "sorted"])
@pytest.mark.parametrize("case", ["uvu", "mixed"])
def test_one_pass_double_backward_equals_composed(case, sort, dtype, chunk):
    """``fastcg::conv_radial_double_backward`` (a CPU second derivative without create_graph)
    equals the first-order ops composed in Python (what create_graph=True runs) for every subset
    of the four cotangents and of the five outputs. "uvu" runs the one-pass kernel; "mixed" has
    weightless paths, which the C++ op composes of the first-order kernels."""
    desc, x, y, h, W, src, dst = radial_graph(case, 7, 40, dtype, k=4, sort=sort)
    g = torch.randn(7, desc.dim_out, dtype=dtype)
    primal = (g, x, y, h, W)
    cot = [torch.randn_like(t) for t in (x, y, h, W)]
    masks = [[True] * 5, [True, False, False, True, True], [False, True, True, False, False]]
    for present in itertools.product([False, True], repeat=4):
        if not any(present):
            continue
        gg = [c if p else None for c, p in zip(cot, present)]
        inputs = [t.clone().requires_grad_(True) for t in primal]
        first = torch.ops.fastcg.conv_radial_backward(*inputs, src, dst, *desc.tensors(),
                                                      [True] * 4)  # fmt: skip
        total = sum((f * c).sum() for f, c in zip(first, gg) if c is not None)
        ref = torch.autograd.grad(total, inputs, allow_unused=True, create_graph=True)
        for mask in masks:
            out = torch.ops.fastcg.conv_radial_double_backward(*primal, *gg, src, dst,
                                                              *desc.tensors(), mask)  # fmt: skip
            for m, a, b, t in zip(mask, out, ref, primal):
                if not m:
                    assert a.numel() == 0
                    continue
                assert a.shape == t.shape
                assert_close(a, torch.zeros_like(t) if b is None else b.detach())


def _ops_run(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()}


@pytest.mark.parametrize("case", ["uvu", "mixed"])
def test_which_double_backward_runs(case):
    """Training on forces (a second derivative without create_graph) runs the C++ double
    backward; create_graph=True composes the first-order ops (differentiable again)."""
    desc, x, y, h, W, src, dst = radial_graph(case, 6, 25, F64, requires_grad=True)

    def second(create_graph):
        out = fastcg.conv_radial(x, y, h, W, src, dst, 6, desc)
        gx, gy = torch.autograd.grad(out.square().sum(), (x, y), create_graph=True)
        return lambda: torch.autograd.grad((gx.sum() + gy.sum()), (x, h, W),
                                           create_graph=create_graph)  # fmt: skip

    one_pass = "fastcg::conv_radial_double_backward"
    assert one_pass in _ops_run(second(False))
    assert one_pass not in _ops_run(second(True))
    # the composed second derivative is differentiable once more
    third = second(True)()
    assert all(t.requires_grad for t in third)


def test_one_pass_double_backward_bad_input():
    desc, x, y, h, W, src, dst = radial_graph("small_modes", 4, 9, F64, k=3)
    g = torch.randn(4, desc.dim_out, dtype=F64)
    tables = desc.tensors()
    op = torch.ops.fastcg.conv_radial_double_backward
    with pytest.raises(RuntimeError, match="grad_grad_radial must have the shape of its primal"):
        op(g, x, y, h, W, None, None, h[:, :2].contiguous(), None, src, dst, *tables, [True] * 5)
    with pytest.raises(RuntimeError, match="grad_grad_x"):
        op(g, x, y, h, W, x.float(), None, None, None, src, dst, *tables, [True] * 5)
    bad = dst.clone()
    bad[2] = 4
    with pytest.raises(IndexError, match=r"dst\[2\] = 4"):
        op(g, x, y, h, W, x, None, None, None, src, bad, *tables, [True] * 5)


@pytest.mark.parametrize("case", ["small_uvu", "small_modes"])
def test_gradcheck(case, backend, chunk):
    desc, x, y, h, W, src, dst = radial_graph(case, 4, 9, F64, k=3, requires_grad=True)

    def fn(a, b, c, d):
        return fastcg.conv_radial(a, b, c, d, src, dst, 4, desc)

    assert torch.autograd.gradcheck(fn, (x, y, h, W))
    assert torch.autograd.gradgradcheck(fn, (x, y, h, W))


def test_only_some_inputs_need_gradients(chunk):
    desc, x, y, h, W, src, dst = radial_graph("small_uvu", 4, 9, F64, k=3)
    for need in ([h], [W], [x, W], [y]):
        for t in (x, y, h, W):
            t.requires_grad_(any(t is n for n in need))
        out = fastcg.conv_radial(x, y, h, W, src, dst, 4, desc)
        ref = fastcg.conv(x, y, h @ W, src, dst, 4, desc)
        g = torch.randn_like(out)
        for a, b in zip(torch.autograd.grad(out, need, g), torch.autograd.grad(ref, need, g)):
            assert_close(a, b)


@pytest.mark.parametrize("parity", [False, True], ids=["rotation", "inversion"])
def test_equivariance(parity, backend, chunk):
    desc, x, y, h, W, src, dst = radial_graph("uvu", 6, 20, F64)
    r = rotation(parity)
    d1, d2, do = D(desc.irreps_in1, r), D(desc.irreps_in2, r), D(desc.irreps_out, r)
    first = fastcg.conv_radial(x @ d1.T, y @ d2.T, h, W, src, dst, 6, desc)
    after = fastcg.conv_radial(x, y, h, W, src, dst, 6, desc) @ do.T
    assert_close(first, after)


def test_module_forward_radial_and_scripting():
    conv = fnn.TensorProductConv("4x0e+4x1o", "1x0e+1x1o", "4x0e+4x1o",
                                 [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True),
                                  (1, 0, 1, "uvu", True)])  # fmt: skip
    x, y = torch.randn(5, 16), torch.randn(12, 4)
    h, W = torch.randn(12, 6), torch.randn(6, conv.weight_numel)
    src, dst = torch.randint(0, 5, (12,)), torch.randint(0, 5, (12,))
    ref = conv(x, y, h @ W, src, dst, 5)
    assert_close(conv.forward_radial(x, y, h, W, src, dst, 5), ref)

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv

        def forward(self, x, y, h, W, src, dst):
            return self.conv.forward_radial(x, y, h, W, src, dst, 5)

    assert_close(torch.jit.script(Block())(x, y, h, W, src, dst), ref)


def test_fully_connected_net_defer_last():
    net = fnn.FullyConnectedNet([3, 8, 8, 20], torch.nn.functional.silu)
    z = torch.randn(7, 3)
    full = net(z)
    last = net.defer_last()
    hidden = net(z)
    assert hidden.shape == (7, 8)
    assert_close(hidden @ last.matrix(), full)
    assert set(net.state_dict()) == {f"layer{i}.weight" for i in range(3)}
    with pytest.raises(ValueError, match="last layer is linear"):
        fnn.FullyConnectedNet([3, 8, 20], torch.nn.functional.silu, out_act=True).defer_last()


def _args(num_edges=9, k=3):
    desc, x, y, h, W, src, dst = radial_graph("small_uvu", 4, num_edges, F64, k=k)
    return desc, [x, y, h, W, src, dst, 4]


@pytest.mark.parametrize(
    ("index", "value", "error", "match"),
    [
        (2, torch.randn(8, 3, dtype=F64), ValueError, "radial must have 9 rows"),
        (2, torch.randn(9, 3, dtype=torch.float32), TypeError, "radial has dtype"),
        (2, torch.randn(9, dtype=F64), ValueError, "radial must be 2-D"),
        (3, torch.randn(4, 1, dtype=F64), ValueError, "radial_weight must have shape"),
        (3, torch.randint(0, 3, (3, 4)), TypeError, "radial_weight must be a floating"),
        (5, torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3]), IndexError, r"dst\[4\] = 4 is out of range"),
        (5, torch.tensor([0, 1, 2, 3, -1, 0, 1, 2, 3]), IndexError, r"dst\[4\] = -1 is out"),
        (4, torch.tensor([0, 1, 2, 3, 7, 0, 1, 2, 3]), IndexError, r"src\[4\] = 7 is out of range"),
    ],
)
def test_bad_input(index, value, error, match):
    desc, args = _args()
    args[index] = value
    with pytest.raises(error, match=match):
        fastcg.conv_radial(*args, desc)


def test_bad_input_at_the_registered_op():
    """The op itself (what a TorchScript model calls) checks indices and shapes too."""
    desc, (x, y, h, W, src, dst, n) = _args()
    tables = desc.tensors()
    op = torch.ops.fastcg.conv_radial
    bad_dst = dst.clone()
    bad_dst[3] = 4
    # the CPU kernels name the entry, csrc/conv_radial.cpp's device-agnostic chunks the fault
    with pytest.raises(IndexError, match=r"dst\[3\] = 4 is out of range|dst >= num_nodes"):
        op(x, y, h, W, src, bad_dst, n, *tables, desc.dim_out)
    bad_dst[3] = -2
    with pytest.raises(IndexError, match=r"dst\[3\] = -2 is out|negative"):
        op(x, y, h, W, src, bad_dst, n, *tables, desc.dim_out)
    bad_src = src.clone()
    bad_src[0] = 9
    with pytest.raises(IndexError, match=r"src\[0\] = 9"):
        op(x, y, h, W, bad_src, dst, n, *tables, desc.dim_out)
    with pytest.raises(RuntimeError, match="radial_weight must be"):
        op(x, y, h, W[:2], src, dst, n, *tables, desc.dim_out)


def test_opcheck():
    desc, (x, y, h, W, src, dst, n) = _args()
    for t in (x, y, h, W):
        t.requires_grad_(True)
    tables = desc.tensors()
    torch.library.opcheck(
        torch.ops.fastcg.conv_radial.default, (x, y, h, W, src, dst, n, *tables, desc.dim_out)
    )
    g = torch.randn(n, desc.dim_out, dtype=F64, requires_grad=True)
    torch.library.opcheck(
        torch.ops.fastcg.conv_radial_backward.default,
        (g, x, y, h, W, src, dst, *tables, [True, False, True, True]),
    )
    gg = (torch.randn_like(x), None, torch.randn_like(h), torch.randn_like(W))
    torch.library.opcheck(
        torch.ops.fastcg.conv_radial_double_backward.default,
        (g.detach(), *(t.detach() for t in (x, y, h, W)), *gg, src, dst, *tables, [True] * 5),
    )
