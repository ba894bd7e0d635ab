"""fastcg.conv_tabulated(x, y, r, table, step, ...) == fastcg.conv(x, y, w(r), ...) with w the
table's cubic Hermite spline; radial_table's accuracy; RadialFusedConv.tabulate."""

from __future__ import annotations

import pytest
import torch
from conftest import D, assert_close, rotation
from test_conv import make_graph

import fastcg
import fastcg.nn as fnn
from fastcg.ops import spline_weights

F64 = torch.float64
STEP, KNOTS = 0.25, 21  # the table covers [0, 5]


def tabulated_graph(case, num_nodes, num_edges, dtype, requires_grad=False):
    """A random graph, edge lengths inside the table (knots included) and a random table."""
    desc, x, y, _, src, dst = make_graph(case, num_nodes, num_edges, dtype)
    r = torch.rand(num_edges, dtype=dtype) * (KNOTS - 1) * STEP
    r[: min(3, num_edges)] = torch.tensor([0.0, STEP, (KNOTS - 1) * STEP], dtype=dtype)[
        : min(3, num_edges)
    ]
    table = torch.randn(KNOTS, 2, desc.weight_numel, dtype=dtype)
    for t in (x, y, r):
        t.requires_grad_(requires_grad)
    return desc, x, y, r, table, src, dst


def spline(r, table):
    return spline_weights(r, table, STEP)


@pytest.mark.parametrize("case", ["uvu", "mixed", "random52"])
def test_matches_conv_of_the_spline(case, dtype, backend, chunk):
    desc, x, y, r, table, src, dst = tabulated_graph(case, 7, 40, dtype)
    out = fastcg.conv_tabulated(x, y, r, table, STEP, src, dst, 7, desc)
    assert out.dtype == dtype and out.shape == (7, desc.dim_out)
    with fastcg.use_backend("reference"):
        ref = fastcg.conv(x, y, spline(r, table), src, dst, 7, desc)
    assert_close(out, ref)


def test_spline_interpolates_the_knots():
    """At the knots the weights are the table's values, and its derivatives d / step."""
    table = torch.randn(KNOTS, 2, 6, dtype=F64)
    r = (torch.arange(KNOTS, dtype=F64) * STEP).requires_grad_()
    w = spline(r, table)
    assert_close(w, table[:, 0])
    d = torch.stack(
        [torch.autograd.grad(w[:, k].sum(), r, retain_graph=True)[0] for k in range(6)], 1
    )
    # one-sided at the last knot, the same Hermite slope from either side elsewhere
    assert_close(d * STEP, table[:, 1])


@pytest.mark.parametrize("case", ["uvu", "mixed"])
def test_first_derivatives_match_the_spline(case, backend, chunk):
    desc, x, y, r, table, src, dst = tabulated_graph(case, 6, 30, F64, requires_grad=True)
    g = torch.randn(6, desc.dim_out, dtype=F64)
    ours = torch.autograd.grad(fastcg.conv_tabulated(x, y, r, table, STEP, src, dst, 6, desc),
                               (x, y, r), g)  # fmt: skip
    with fastcg.use_backend("reference"):
        out = fastcg.conv(x, y, spline(r, table), src, dst, 6, desc)
    for a, b in zip(ours, torch.autograd.grad(out, (x, y, r), g)):
        assert_close(a, b)


@pytest.mark.parametrize("case", ["small_uvu", "small_modes"])
def test_gradcheck(case, chunk):
    desc, x, y, r, table, src, dst = tabulated_graph(case, 4, 9, F64, requires_grad=True)
    with torch.no_grad():  # off the knots: the spline is C1, its second derivative jumps there
        r.copy_(torch.linspace(0.1, 4.6, 9, dtype=F64) + 0.01)

    def fn(a, b, c):
        return fastcg.conv_tabulated(a, b, c, table, STEP, src, dst, 4, desc)

    assert torch.autograd.gradcheck(fn, (x, y, r))


def test_only_some_inputs_need_gradients(chunk):
    desc, x, y, r, table, src, dst = tabulated_graph("small_uvu", 4, 9, F64)
    for need in ([r], [x], [y, r]):
        for t in (x, y, r):
            t.requires_grad_(any(t is n for n in need))
        out = fastcg.conv_tabulated(x, y, r, table, STEP, src, dst, 4, desc)
        with fastcg.use_backend("reference"):
            ref = fastcg.conv(x, y, spline(r, table), src, dst, 4, desc)
        g = torch.randn_like(out)
        for a, b in zip(torch.autograd.grad(out, need, g), torch.autograd.grad(ref, need, g)):
            assert_close(a, b)


def test_no_double_backward():
    desc, x, y, r, table, src, dst = tabulated_graph("small_uvu", 4, 9, F64, requires_grad=True)
    out = fastcg.conv_tabulated(x, y, r, table, STEP, src, dst, 4, desc)
    (gr,) = torch.autograd.grad(out.sum(), r, create_graph=True)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        gr.sum().backward()
    with pytest.raises(RuntimeError, match="table has no gradient"):
        fastcg.conv_tabulated(x, y, r, table.requires_grad_(), STEP, src, dst, 4, desc)


@pytest.mark.parametrize("bad", [-0.1, 5.2, float("nan"), float("inf")])
def test_lengths_outside_the_table_raise(bad):
    desc, x, y, r, table, src, dst = tabulated_graph("small_uvu", 4, 9, F64)
    r[4] = bad
    with pytest.raises((RuntimeError, ValueError), match="edge 4 has length"):
        fastcg.conv_tabulated(x, y, r, table, STEP, src, dst, 4, desc)
    op = torch.ops.fastcg.conv_tabulated  # the registered op checks too (TorchScript, C++)
    with pytest.raises(RuntimeError, match="outside the table"):
        op(x, y, r, table, STEP, src, dst, 4, *desc.tensors(), desc.dim_out)
    with fastcg.use_backend("reference"), pytest.raises(ValueError, match="outside the table"):
        fastcg.conv_tabulated(x, y, r, table, STEP, src, dst, 4, desc)


def test_lengths_rounded_past_the_end_are_inside():
    """A float32 length of an edge at the cutoff may round just past it: still the last knot."""
    desc, x, y, r, table, src, dst = tabulated_graph("small_uvu", 4, 9, torch.float32)
    r[0] = 5.0 * (1 + 1e-6)
    out = fastcg.conv_tabulated(x, y, r, table, STEP, src, dst, 4, desc)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: a.update(table=a["table"][..., :-1]), "table must have shape"),
        (lambda a: a.update(table=a["table"][:1]), "table must have shape"),
        (lambda a: a.update(r=a["r"][:-1]), "r must have"),
        (lambda a: a.update(step=0.0), "step must be positive"),
        (lambda a: a.update(r=a["r"].float()), "r"),
    ],
)
def test_bad_input(change, match):
    desc, x, y, r, table, src, dst = tabulated_graph("small_uvu", 4, 9, F64)
    a = {"r": r, "table": table, "step": STEP}
    change(a)
    with pytest.raises((ValueError, TypeError), match=match):
        fastcg.conv_tabulated(x, y, a["r"], a["table"], a["step"], src, dst, 4, desc)


@pytest.mark.parametrize("parity", [False, True], ids=["rotation", "inversion"])
def test_equivariance(parity, chunk):
    """Lengths are invariant: rotating x and y rotates the output."""
    desc, x, y, r, table, src, dst = tabulated_graph("uvu", 6, 25, F64)
    rot = rotation(parity)
    d1, d2, do = D(desc.irreps_in1, rot), D(desc.irreps_in2, rot), D(desc.irreps_out, rot)
    first = fastcg.conv_tabulated(x @ d1.T, y @ d2.T, r, table, STEP, src, dst, 6, desc)
    after = fastcg.conv_tabulated(x, y, r, table, STEP, src, dst, 6, desc) @ do.T
    assert_close(first, after)


# ---------------------------------------------------------------- radial_table


def smooth(r: torch.Tensor) -> torch.Tensor:
    """Two radial functions with a removable singularity at 0, as Bessel bases have."""
    return torch.stack([torch.sin(3 * r) / r, torch.cos(r) ** 2 * (5 - r) ** 3], 1)


def test_radial_table_error_is_measured_and_fourth_order():
    coarse = fnn.radial_table(smooth, 5.0, 0.1, F64)
    fine = fnn.radial_table(smooth, 5.0, 0.05, F64)
    assert coarse.values.shape == (51, 2, 2) and fine.step == 0.05
    assert 10 < coarse.max_error / fine.max_error < 22  # 16 for an O(h^4) error
    # the reported error is the largest one: checked on a denser set of points
    r = torch.linspace(0, 5, 20001, dtype=F64).clamp(min=1e-9)
    err = (spline_weights(r, fine.values, fine.step) - smooth(r)).abs().max().item()
    assert err <= 1.5 * fine.max_error
    assert fine.max_rel_error == pytest.approx(fine.max_error / smooth(r).abs().max().item(),
                                               rel=1e-3)  # fmt: skip


def test_radial_table_of_a_fastcg_mlp():
    """Derivatives through fastcg's own modules (autograd.Functions without jvp)."""
    net = fnn.FullyConnectedNet([4, 16, 8], torch.nn.functional.silu).double()
    freq = torch.arange(1, 5, dtype=F64)

    def fn(r):
        return net(torch.sin(freq * r[:, None]) / r[:, None])

    table = fnn.radial_table(fn, 5.0, 0.01, torch.float32)
    assert table.values.dtype == torch.float32 and table.max_rel_error < 1e-6
    r = torch.tensor([0.7, 2.345, 4.99], dtype=F64, requires_grad=True)
    w = spline_weights(r, table.values.double(), table.step)
    assert_close(w, fn(r).detach(), torch.float32)


@pytest.mark.parametrize("bad", [(0.0, 0.1), (5.0, -1.0)])
def test_radial_table_bad_input(bad):
    with pytest.raises(ValueError, match="positive"):
        fnn.radial_table(smooth, *bad)


# ---------------------------------------------------------------- RadialFusedConv.tabulate


def test_conv_module_tabulate_script_and_to():
    """A module's radial MLP (here h(r) @ W) as a table: the same numbers to the table's error,
    TorchScript, and .to() moves the table."""
    conv = fnn.RadialFusedConv("4x0e+4x1o", "1x0e+1x1o", "4x0e+4x1o",
                               [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True),
                                (1, 0, 1, "uvu", True)]).double()  # fmt: skip
    x, y = torch.randn(6, 16, dtype=F64), torch.randn(25, 4, dtype=F64)
    src, dst = torch.randint(0, 6, (25,)), torch.randint(0, 6, (25,))
    W = torch.randn(4, conv.weight_numel, dtype=F64)
    freq = torch.arange(1, 5, dtype=F64)

    def fn(r):
        return (torch.sin(freq * r[:, None]) / r[:, None]) @ W

    r = torch.rand(25, dtype=F64) * 4 + 0.5
    exact = conv._forward_fused(x, y, fn(r), src, dst, 6)
    tab = fnn.radial_table(fn, 5.0, 0.01, F64)
    conv.tabulate(tab)
    out = conv._forward_fused(x, y, r[:, None], src, dst, 6)
    assert (out - exact).abs().max() < 50 * tab.max_error * max(1.0, exact.abs().max().item())

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = conv

        def forward(self, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor, src: torch.Tensor,
                    dst: torch.Tensor) -> torch.Tensor:  # fmt: skip
            return self.conv._forward_fused(x, y, r, src, dst, 6)

    assert_close(torch.jit.script(Block())(x, y, r, src, dst), out)
    conv.float()
    assert conv._radial_table.dtype == torch.float32
    out32 = conv._forward_fused(x.float(), y.float(), r.float(), src, dst, 6)
    assert_close(out32, out.float())
    with pytest.raises(ValueError, match="weights per edge"):
        conv.tabulate(fnn.radial_table(lambda r: fn(r)[:, :3], 5.0, 0.1))


def test_pickles_with_and_without_a_table():
    """A tabulated conv keeps its table through pickling; one pickled before tables existed (no
    attribute at all) still runs the exact path."""
    import pickle

    conv = fnn.RadialFusedConv("2x0e", "1x0e", "2x0e", [(0, 0, 0, "uvu", True)]).double()
    x, y = torch.randn(3, 2, dtype=F64), torch.randn(4, 1, dtype=F64)
    src, dst, w = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 0]), torch.randn(4, 2)
    old = pickle.loads(pickle.dumps(conv))
    del old.__dict__["_radial_table"]
    old = pickle.loads(pickle.dumps(old))
    assert_close(old._forward_fused(x, y, w.double(), src, dst, 3),
                 conv._forward_fused(x, y, w.double(), src, dst, 3))  # fmt: skip
    conv.tabulate(fnn.radial_table(lambda r: torch.stack([r, r * r], 1), 5.0, 0.5, F64))
    back = pickle.loads(pickle.dumps(conv))
    assert torch.equal(back._radial_table, conv._radial_table)
    r = torch.tensor([1.0, 2.0, 3.0, 4.5], dtype=F64)
    assert_close(
        back._forward_fused(x, y, r, src, dst, 3), conv._forward_fused(x, y, r, src, dst, 3)
    )
