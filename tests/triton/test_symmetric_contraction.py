"""Triton symmetric contraction (MACE product basis) against the reference, every autograd order.

Tiny shapes (the interpreter runs each program in Python); float64 to 1e-10, float32 to 1e-5
(relative to the largest value), half types loaded as such and accumulated in float32.
"""

from __future__ import annotations

import pytest
import torch
from test_kernels import _close, assert_double_backward, run

import fastcg
from fastcg.ops.symmetric_contraction import symmetric_contraction, symmetric_contraction_descriptor
from fastcg.testing import SYMMETRIC_CONTRACTION_CASES
from fastcg.testing import TOLERANCE as TOL

CASES = {  # (irreps_in per channel, irreps_out, correlation); correlation <= 3, as MACE's
    k: SYMMETRIC_CONTRACTION_CASES[k]
    for k in ("l1-corr1", "l1-corr2", "l2-corr3", "l3-corr3", "mixed-corr")
}


def _inputs(case: str, n: int, c: int, s: int, dtype=torch.float64):
    d = symmetric_contraction_descriptor(*CASES[case])
    x = torch.randn(n, c, d.dim_in, dtype=dtype, requires_grad=True)
    species = torch.randint(0, s, (n,))
    w = torch.randn(s, d.weight_numel, c, dtype=dtype, requires_grad=True)
    return d, x, species, w


@pytest.mark.parametrize("elements", [1, 3])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_forward_backward(triton_backend, case, elements, dtype):
    """Output and the gradients of x and of the weights equal the reference's."""
    d, x, species, w = _inputs(case, 7, 5, elements, dtype)

    def fn(x, w):
        return symmetric_contraction(x, species, w, d)

    with fastcg.use_backend("reference"):
        ref = fn(x, w)
        cot = torch.randn_like(ref)
        ref_grads = torch.autograd.grad(ref, (x, w), cot)
    out = fn(x, w)
    grads = torch.autograd.grad(out, (x, w), cot)
    _close(out, ref, TOL[dtype])
    for g, r in zip(grads, ref_grads):
        _close(g, r, TOL[dtype])


@pytest.mark.parametrize("case", ["l1-corr2", "l2-corr3", "mixed-corr"])
def test_double_backward(triton_backend, case):
    """Second derivatives w.r.t. x, the weights and the cotangent equal the reference's."""
    d, x, species, w = _inputs(case, 4, 3, 2)
    assert_double_backward(lambda x, w: symmetric_contraction(x, species, w, d), (x, w))


@pytest.mark.parametrize("which", ["x", "weights"])
def test_double_backward_one_cotangent(triton_backend, which):
    """Force training: only d out / d x is differentiated again (grad_grad_weights is None)."""
    d, x, species, w = _inputs("l2-corr3", 3, 2, 2)
    fn = (lambda x: symmetric_contraction(x, species, w.detach(), d)) if which == "x" else (
        lambda w: symmetric_contraction(x.detach(), species, w, d))  # fmt: skip
    assert_double_backward(fn, (x,) if which == "x" else (w,))


@pytest.mark.parametrize("correlation", [1, 2, 3])
def test_gradcheck(triton_backend, correlation):
    """gradcheck and gradgradcheck (fast mode: each Jacobian column is an interpreted launch)."""
    d = symmetric_contraction_descriptor(
        "0e+1o", "0e+1o" if correlation == 1 else "0e", correlation
    )
    x = torch.randn(2, 2, d.dim_in, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, d.weight_numel, 2, dtype=torch.float64, requires_grad=True)
    species = torch.tensor([1, 0])

    def fn(x, w):
        return symmetric_contraction(x, species, w, d)

    assert torch.autograd.gradcheck(fn, (x, w), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, w), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_half_inputs_accumulate_in_float32(triton_backend, dtype):
    d, x, species, w = _inputs("l2-corr3", 5, 4, 2, torch.float32)
    x, w = x.detach().to(dtype), w.detach().to(dtype)
    out = symmetric_contraction(x, species, w, d)
    assert out.dtype == dtype
    ref = run("reference", symmetric_contraction, x.float(), species, w.float(), d)
    _close(out.float(), ref.to(dtype).float(), 2e-2)


def test_channel_blocks_and_empty(triton_backend):
    """More channels than one block, more nodes than one chunk, an absent species, no nodes."""
    d, x, species, w = _inputs("l1-corr2", 70, 67, 3)
    species = torch.randint(0, 2, (70,)) * 2  # species 1 has no nodes: zero weight gradient
    cot = torch.randn(70, 67 * d.dim_out, dtype=torch.float64)
    fn = lambda x, w: symmetric_contraction(x, species, w, d)  # noqa: E731
    out = fn(x, w)
    grads = torch.autograd.grad(out, (x, w), cot)
    with fastcg.use_backend("reference"):
        ref = fn(x, w)
        ref_grads = torch.autograd.grad(ref, (x, w), cot)
    _close(out, ref, 1e-10)
    for g, r in zip(grads, ref_grads):
        _close(g, r, 1e-10)
    x0 = x[:0].detach().requires_grad_(True)
    out = symmetric_contraction(x0, species[:0], w, d)
    assert out.shape == (0, 67 * d.dim_out)
    gx, gw = torch.autograd.grad(out.sum(), (x0, w), materialize_grads=True)
    assert gx.shape == x0.shape and not gw.any()


def test_spare_chunks(triton_backend, monkeypatch):
    """On a GPU the grid has cdiv(N, BN) + S node chunks, the spare ones empty (no host sync)."""
    from fastcg.triton import symmetric_contraction as tsc

    chunks = tsc.node_chunks
    monkeypatch.setattr(tsc, "node_chunks", lambda *a: chunks(*a, exact=False))
    d, x, species, w = _inputs("l1-corr2", 9, 3, 4)
    assert tsc.node_chunks(species, 4, 64).chunks.shape[0] == 5
    fn = lambda x, w: symmetric_contraction(x, species, w, d)  # noqa: E731
    assert_double_backward(fn, (x, w))


def test_direct_op_checks_species(triton_backend):
    """The ops check species at the boundary; a direct call on CPU tensors checks it too."""
    d, x, species, w = _inputs("l1-corr2", 4, 2, 2)
    ops = torch.ops.fastcg_triton
    with pytest.raises(IndexError, match="species"):
        symmetric_contraction(x, species + 2, w, d)
    with pytest.raises((IndexError, RuntimeError), match="species"):
        ops.symmetric_contraction(x.detach(), species + 2, w.detach(), *d.tensors())


def test_opcheck(triton_backend):
    d, x, species, w = _inputs("l1-corr2", 3, 2, 2)
    x, w = x.detach(), w.detach()
    tables = d.tensors()
    ops = torch.ops.fastcg_triton
    torch.library.opcheck(ops.symmetric_contraction, (x, species, w, *tables))
    g = torch.randn(3, 2 * d.dim_out, dtype=torch.float64)
    args = (g, x, species, w, *tables, [True, True])
    torch.library.opcheck(ops.symmetric_contraction_backward, args)
    args = (g, x, species, w, torch.randn_like(x), torch.randn_like(w), *tables, [True] * 3)
    torch.library.opcheck(ops.symmetric_contraction_double_backward, args,
                          test_utils=("test_schema", "test_faketensor"))  # fmt: skip
