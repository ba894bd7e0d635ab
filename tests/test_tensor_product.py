"""fastcg.tensor_product against e3nn.o3.TensorProduct: values, gradients, equivariance, opcheck."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    NORMALIZATIONS,
    SMALL_CASES,
    TP_CASES,
    D,
    assert_close,
    descriptor,
    e3nn_tp,
    rotation,
    run_e3nn,
)

import fastcg
from fastcg.descriptors import from_e3nn

F64 = torch.float64


def make_inputs(desc, batch, dtype, shared, requires_grad=False):
    """Random x1 [*batch, dim1], x2 [*batch, dim2] and weights (None when the TP has none)."""
    x1 = torch.randn(*batch, desc.dim1, dtype=dtype)
    x2 = torch.randn(*batch, desc.dim2, dtype=dtype)
    w = None
    if desc.weight_numel:
        w_shape = (desc.weight_numel,) if shared else (*batch, desc.weight_numel)
        w = torch.randn(*w_shape, dtype=dtype)
    tensors = [t for t in (x1, x2, w) if t is not None]
    for t in tensors:
        t.requires_grad_(requires_grad)
    return x1, x2, w


@pytest.mark.parametrize("norms", NORMALIZATIONS, ids="-".join)
@pytest.mark.parametrize("case", list(TP_CASES))
def test_matches_e3nn(case, norms, dtype, backend):
    desc = descriptor(case, *norms)
    x1, x2, w = make_inputs(desc, (7,), dtype, shared=False)
    out = fastcg.tensor_product(x1, x2, w, desc)
    assert out.dtype == dtype
    assert_close(out, run_e3nn(e3nn_tp(case, *norms), x1, x2, w))


@pytest.mark.parametrize("case", list(TP_CASES))
def test_shared_weights_match_e3nn(case, dtype, backend):
    desc = descriptor(case)
    x1, x2, w = make_inputs(desc, (6,), dtype, shared=True)
    out = fastcg.tensor_product(x1, x2, w, desc)
    assert_close(out, run_e3nn(e3nn_tp(case, shared=True), x1, x2, w))


@pytest.mark.parametrize("shared", [False, True], ids=["per_sample", "shared"])
def test_broadcast_batch_dims(shared, backend):
    """Batch dims broadcast like e3nn: x1 [2, 1, d1], x2 [1, 3, d2], weights [3, numel]."""
    desc = descriptor("mixed")
    x1 = torch.randn(2, 1, desc.dim1, dtype=F64)
    x2 = torch.randn(1, 3, desc.dim2, dtype=F64)
    w = torch.randn(desc.weight_numel if shared else (3, desc.weight_numel), dtype=F64)
    out = fastcg.tensor_product(x1, x2, w, desc)
    assert out.shape == (2, 3, desc.dim_out)
    assert_close(out, run_e3nn(e3nn_tp("mixed", shared=shared), x1, x2, w))


def test_no_batch_dims(backend):
    desc = descriptor("uvu")
    x1, x2, w = make_inputs(desc, (), F64, shared=True)
    out = fastcg.tensor_product(x1, x2, w, desc)
    assert out.shape == (desc.dim_out,)
    assert_close(out, run_e3nn(e3nn_tp("uvu", shared=True), x1, x2, w))


@pytest.mark.parametrize("norms", NORMALIZATIONS[:2], ids="-".join)
@pytest.mark.parametrize("case", ["mixed", "uvw", "random25"])
def test_from_e3nn_descriptor(case, norms, backend):
    """A descriptor read off an e3nn module reproduces that module."""
    tp = e3nn_tp(case, *norms)
    desc = from_e3nn(tp)
    assert desc.weight_numel == tp.weight_numel
    x1, x2, w = make_inputs(desc, (5,), F64, shared=False)
    assert_close(fastcg.tensor_product(x1, x2, w, desc), run_e3nn(tp, x1, x2, w))


def _grads(fn, inputs, g, h):
    """First derivatives of <g, fn> and second derivatives of <h, first> w.r.t. inputs."""
    out = fn(*inputs)
    first = torch.autograd.grad((out * g).sum(), inputs, create_graph=True)
    total = sum((a * b).sum() for a, b in zip(first, h))
    second = torch.autograd.grad(total, inputs, allow_unused=True, materialize_grads=True)
    return out, first, second


@pytest.mark.parametrize("shared", [False, True], ids=["per_sample", "shared"])
@pytest.mark.parametrize("case", ["mixed", "uvu", "uuu", "uvv", "uuw", "unweighted", "random50"])
def test_derivatives_match_e3nn(case, shared, backend):
    """First and second derivatives for every input equal e3nn's autograd (float64)."""
    desc = descriptor(case)
    tp = e3nn_tp(case, shared=shared)
    x1, x2, w = make_inputs(desc, (4,), F64, shared, requires_grad=True)
    inputs = tuple(t for t in (x1, x2, w) if t is not None)
    g = torch.randn(4, desc.dim_out, dtype=F64)
    h = tuple(torch.randn_like(t) for t in inputs)

    def ours(*args):
        return fastcg.tensor_product(args[0], args[1], args[2] if w is not None else None, desc)

    def theirs(*args):
        return tp(*args)

    for a, b in zip(_grads(ours, inputs, g, h), _grads(theirs, inputs, g, h)):
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert_close(x, y)


@pytest.mark.parametrize("shared", [False, True], ids=["per_sample", "shared"])
@pytest.mark.parametrize("case", list(SMALL_CASES) + ["unweighted"])
def test_gradcheck(case, shared, backend):
    desc = descriptor(case)
    x1, x2, w = make_inputs(desc, (2,), F64, shared, requires_grad=True)
    inputs = tuple(t for t in (x1, x2, w) if t is not None)

    def fn(*args):
        return fastcg.tensor_product(args[0], args[1], args[2] if w is not None else None, desc)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("parity", [False, True], ids=["rotation", "inversion"])
@pytest.mark.parametrize("case", ["uvw", "uvu", "uuu", "uvv", "uuw", "mixed", "random25"])
def test_equivariance(case, parity, backend):
    """TP(D1 x1, D2 x2) = D_out TP(x1, x2) for proper and improper rotations."""
    desc = descriptor(case)
    r = rotation(parity)
    x1, x2, w = make_inputs(desc, (5,), F64, shared=False)
    d1, d2, do = D(desc.irreps_in1, r), D(desc.irreps_in2, r), D(desc.irreps_out, r)
    rotated_first = fastcg.tensor_product(x1 @ d1.T, x2 @ d2.T, w, desc)
    rotated_after = fastcg.tensor_product(x1, x2, w, desc) @ do.T
    assert_close(rotated_first, rotated_after)
    if parity:  # the inversion is not a no-op on these irreps: odd blocks flip sign
        assert not torch.allclose(do, D(desc.irreps_out, -r))


@pytest.mark.parametrize("shared", [False, True], ids=["per_sample", "shared"])
def test_zero_batch(shared, backend):
    desc = descriptor("mixed")
    x1, x2, w = make_inputs(desc, (0,), F64, shared, requires_grad=True)
    out = fastcg.tensor_product(x1, x2, w, desc)
    assert out.shape == (0, desc.dim_out)
    gx1, gx2, gw = torch.autograd.grad(out.sum(), (x1, x2, w))
    assert gx1.shape == x1.shape and gx2.shape == x2.shape and gw.shape == w.shape
    assert gw.abs().sum() == 0


def test_non_contiguous(dtype, backend):
    """Transposed / strided views give the same answer as e3nn on contiguous copies."""
    desc = descriptor("mixed")
    x1 = torch.randn(desc.dim1, 6, dtype=dtype).T
    x2 = torch.randn(6, 2 * desc.dim2, dtype=dtype)[:, ::2]
    w = torch.randn(desc.weight_numel, 6, dtype=dtype).T
    assert not (x1.is_contiguous() or x2.is_contiguous() or w.is_contiguous())
    out = fastcg.tensor_product(x1, x2, w, desc)
    assert_close(out, run_e3nn(e3nn_tp("mixed"), x1, x2, w))


def test_non_contiguous_gradients(backend):
    desc = descriptor("uvu")
    x1 = torch.randn(desc.dim1, 5, dtype=F64).T.requires_grad_()
    x2 = torch.randn(5, 2 * desc.dim2, dtype=F64)[:, ::2].detach().requires_grad_()
    w = torch.randn(5, desc.weight_numel, dtype=F64, requires_grad=True)
    g = torch.randn(desc.dim_out, 5, dtype=F64).T  # non-contiguous cotangent too
    ours = torch.autograd.grad(fastcg.tensor_product(x1, x2, w, desc), (x1, x2, w), g)
    theirs = torch.autograd.grad(e3nn_tp("uvu")(x1, x2, w), (x1, x2, w), g)
    for a, b in zip(ours, theirs):
        assert_close(a, b)


# ---------------------------------------------------------------------------------------------
# opcheck on the registered ops (C++ kernels, fake kernels, autograd registration).


def _op_args(case, shared, batch=3, requires_grad=True):
    desc = descriptor(case)
    x1, x2, w = make_inputs(desc, (batch,), F64, shared, requires_grad=requires_grad)
    if w is None:
        w = torch.empty(0, dtype=F64)
    return desc, x1, x2, w, desc.tensors()


@pytest.mark.parametrize("shared", [False, True], ids=["per_sample", "shared"])
@pytest.mark.parametrize("case", ["small_modes", "unweighted", "mixed"])
def test_opcheck_tensor_product(case, shared):
    desc, x1, x2, w, tables = _op_args(case, shared)
    torch.library.opcheck(
        torch.ops.fastcg.tensor_product.default, (x1, x2, w, *tables, desc.dim_out)
    )


@pytest.mark.parametrize(
    "mask", [[True, True, True], [True, False, True], [False, True, False]], ids=str
)
@pytest.mark.parametrize("shared", [False, True], ids=["per_sample", "shared"])
def test_opcheck_tensor_product_backward(shared, mask):
    desc, x1, x2, w, tables = _op_args("small_modes", shared)
    g = torch.randn(3, desc.dim_out, dtype=F64, requires_grad=True)
    torch.library.opcheck(
        torch.ops.fastcg.tensor_product_backward.default, (g, x1, x2, w, *tables, mask)
    )


def test_opcheck_zero_batch():
    desc, x1, x2, w, tables = _op_args("small_uvu", False, batch=0)
    torch.library.opcheck(
        torch.ops.fastcg.tensor_product.default, (x1, x2, w, *tables, desc.dim_out)
    )


def test_registered_op_matches_e3nn():
    """The C++ op called directly (packed tables) equals e3nn, float32 and float64."""
    for dtype in (torch.float32, F64):
        desc, x1, x2, w, tables = _op_args("mixed", False, requires_grad=False)
        x1, x2, w = x1.to(dtype), x2.to(dtype), w.to(dtype)
        out = torch.ops.fastcg.tensor_product(x1, x2, w, *tables, desc.dim_out)
        assert_close(out, run_e3nn(e3nn_tp("mixed"), x1, x2, w))
