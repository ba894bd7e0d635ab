"""fastcg symmetric contraction (MACE product basis) vs a dense einsum over the coupling tensors,
the reference, autograd checks, equivariance and bad inputs. mace-torch itself: tests/mace."""

from __future__ import annotations

import pytest
import torch
from conftest import D, assert_close, rotation

import fastcg
from fastcg import reference
from fastcg.irreps import channel_irreps, to_channels
from fastcg.nn.symmetric_contraction import SymmetricContraction
from fastcg.ops.symmetric_contraction import (
    coupling_tensors,
    symmetric_contraction,
    symmetric_contraction_descriptor,
)
from fastcg.testing import SYMMETRIC_CONTRACTION_CASES

F64 = torch.float64
CASES = SYMMETRIC_CONTRACTION_CASES  # (irreps_in per channel, irreps_out, correlation)


def desc(case: str):
    return symmetric_contraction_descriptor(*CASES[case])


def inputs(d, n=9, c=37, s=3, dtype=F64, grad=False):
    """x [n, c, D], species [n] and weights [s, K, c]; c = 37 is no multiple of the kernel's
    lane width, so the partial channel block is covered."""
    x = torch.randn(n, c, d.dim_in, dtype=dtype, requires_grad=grad)
    species = torch.randint(0, s, (n,))
    w = torch.randn(s, d.weight_numel, c, dtype=dtype, requires_grad=grad)
    return x, species, w


def dense(d, x, species, w):
    """The contraction as mace-torch writes it: einsum of the dense coupling tensors."""
    x, w = x.to(F64), w.to(F64)[species.long()]
    outs = []
    for o, ((_, ir), corr) in enumerate(zip(channel_irreps(d.irreps_out), d.correlation)):
        acc = 0
        for nu, u in enumerate(coupling_tensors(d.irreps_in, ir, corr), start=1):
            off, k = d.weight_offset(o, nu), u.shape[-1]
            idx = "ijkl"[:nu]
            eq = f"m{idx}q,nqc," + ",".join(f"nc{i}" for i in idx) + "->ncm"
            acc = acc + torch.einsum(eq, u, w[:, off : off + k], *([x] * nu))
        outs.append(acc.reshape(x.shape[0], -1))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("case", CASES)
def test_matches_dense_coupling(case, dtype, backend):
    d = desc(case)
    x, species, w = inputs(d, dtype=dtype)
    out = symmetric_contraction(x, species, w, d)
    assert out.shape == (9, 37 * d.dim_out) and out.dtype == dtype
    assert_close(out, dense(d, x, species, w))


def test_kernel_matches_reference(dtype):
    d = desc("l3-corr3")
    x, species, w = inputs(d, n=20, c=40, s=4, dtype=dtype)
    with fastcg.use_backend("cpu"):
        out = symmetric_contraction(x, species, w, d)
    assert_close(out, reference.symmetric_contraction(x.double(), species, w.double(), d))


def test_mul_ir_input():
    d = desc("l2-corr3")
    x, species, w = inputs(d, c=5)
    flat = torch.cat([x[:, :, s : s + n].reshape(9, -1) for s, n in ((0, 1), (1, 3), (4, 5))], 1)
    assert torch.equal(to_channels(flat, d.irreps_in, 5), x)
    assert_close(
        symmetric_contraction(flat, species, w, d), symmetric_contraction(x, species, w, d)
    )


def test_descriptor_sizes():
    d = desc("l3-corr3")
    assert (d.dim_in, d.dim_out) == (16, 4)
    assert d.num_params == ((1, 4, 23), (1, 6, 51))  # mace-torch's weight shapes
    assert d.weight_numel == 86


@pytest.mark.parametrize("case", ["l1-corr2", "l2-corr3", "l1-corr4"])
def test_gradcheck(case, backend):
    d = desc(case)
    x, species, w = inputs(d, n=4, c=3, grad=True)

    def f(x, w):
        return symmetric_contraction(x, species, w, d)

    assert torch.autograd.gradcheck(f, (x, w))
    assert torch.autograd.gradgradcheck(f, (x, w))


@pytest.mark.parametrize("which", ["x", "weights"])
def test_gradgradcheck_one_input(which):
    """Force training differentiates d out / d x again: only one cotangent present."""
    d = desc("l2-corr3")
    x, species, w = inputs(d, n=4, c=3, grad=True)
    if which == "x":
        assert torch.autograd.gradgradcheck(lambda x: symmetric_contraction(x, species, w, d), x)
    else:
        assert torch.autograd.gradgradcheck(lambda w: symmetric_contraction(x, species, w, d), w)


def test_opcheck():
    d = desc("l2-corr3")
    x, species, w = inputs(d, n=5, c=4, grad=True)
    tables = d.tensors()
    torch.library.opcheck(torch.ops.fastcg.symmetric_contraction, (x, species, w, *tables))
    g = torch.randn(5, 4 * d.dim_out, dtype=F64, requires_grad=True)
    args = (g, x, species, w, *tables, [True, True])
    torch.library.opcheck(torch.ops.fastcg.symmetric_contraction_backward, args)
    ggx, ggw = torch.randn_like(x), torch.randn_like(w)
    args = (g, x.detach(), species, w.detach(), ggx, ggw, *tables, [True, True, True])
    torch.library.opcheck(
        torch.ops.fastcg.symmetric_contraction_double_backward, args,
        test_utils=("test_schema", "test_faketensor"),
    )  # fmt: skip


@pytest.mark.parametrize("parity", [False, True])
def test_equivariance(parity):
    d = desc("mixed-corr")
    x, species, w = inputs(d, n=6, c=4)
    r = rotation(parity)
    d_in, d_out = D(d.irreps_in, r), D(d.irreps_out, r)
    rotated = symmetric_contraction(x @ d_in.T, species, w, d).reshape(6, 4, -1)
    out = symmetric_contraction(x, species, w, d)
    expected = to_channels(out, d.irreps_out, 4) @ d_out.T
    assert_close(to_channels(rotated.reshape(6, -1), d.irreps_out, 4), expected)


def test_zero_size(backend):
    d = desc("l2-corr3")
    x, species, w = inputs(d, n=0, c=4, grad=True)
    out = symmetric_contraction(x, species, w, d)
    assert out.shape == (0, 4 * d.dim_out)
    gx, gw = torch.autograd.grad(out.sum(), (x, w), materialize_grads=True)
    assert gx.shape == x.shape and gw.shape == w.shape and not gw.any()


def test_non_contiguous():
    d = desc("l2-corr3")
    x, species, w = inputs(d, c=6)
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)
    wt = w.transpose(1, 2).contiguous().transpose(1, 2)
    assert not xt.is_contiguous() and not wt.is_contiguous()
    assert_close(symmetric_contraction(xt, species, wt, d), symmetric_contraction(x, species, w, d))


def test_independent_of_threads():
    d = desc("l3-corr3")
    x, species, w = inputs(d, n=300, c=40, s=5, grad=True)
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = symmetric_contraction(x, species, w, d)
            results.append((out, *torch.autograd.grad(out.square().sum(), (x, w))))
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_bad_inputs():
    d = desc("l1-corr2")
    x, species, w = inputs(d, n=5, c=3)
    with pytest.raises(ValueError, match="x must be"):
        symmetric_contraction(x[:, :, :2], species, w, d)
    with pytest.raises(ValueError, match="weights must be"):
        symmetric_contraction(x, species, w[:, :, :2], d)
    with pytest.raises(TypeError, match="weights"):
        symmetric_contraction(x, species, w.float(), d)
    with pytest.raises(TypeError, match="x must be a floating"):
        symmetric_contraction(x.long(), species, w, d)
    with pytest.raises(IndexError, match="species"):
        symmetric_contraction(x, species + 3, w, d)
    with pytest.raises(IndexError, match="species"):
        symmetric_contraction(x, species - 3, w, d)
    with pytest.raises(ValueError, match="species must have shape"):
        symmetric_contraction(x, species[:3], w, d)
    with pytest.raises(TypeError, match="species"):
        symmetric_contraction(x, species.float(), w, d)
    with pytest.raises(ValueError, match="correlation"):
        symmetric_contraction_descriptor("0e+1o", "0e", 0)


def test_module_script_and_call():
    sc = SymmetricContraction("6x0e+6x1o+6x2e", "6x0e+6x1o", 3, num_elements=3).double()
    d = sc.descriptor
    x, species, _ = inputs(d, n=7, c=6)
    one_hot = torch.nn.functional.one_hot(species, 3).double()
    out = sc(x, one_hot)
    assert_close(out, symmetric_contraction(x, species, sc.weight, d))
    assert torch.equal(sc(x, species), out)
    scripted = torch.jit.script(sc)
    assert_close(scripted(x, one_hot), out)
    assert sc.float()._coeff.dtype == F64  # coefficient tables stay float64


def test_compile_fullgraph():
    sc = SymmetricContraction("4x0e+4x1o", "4x0e+4x1o", 2, num_elements=2).double()
    x, species, _ = inputs(sc.descriptor, n=5, c=4, s=2)
    compiled = torch.compile(sc, fullgraph=True, backend="aot_eager")
    assert_close(compiled(x, species), sc(x, species))
