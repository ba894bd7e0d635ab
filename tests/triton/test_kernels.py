"""Every Triton kernel and every autograd order against the pure-PyTorch reference.

Tiny shapes (the interpreter runs each program in Python); float64 to 1e-10, float32 to 1e-5,
half types loaded as such and accumulated in float32.
"""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

import fastcg
from fastcg.testing import TOLERANCE as TOL
from fastcg.testing import assert_close


def run(backend: str, fn, *args):
    with fastcg.use_backend(backend):
        return fn(*args)


MODES = ("uvw", "uvu", "uuu", "uvv", "uuw")


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    assert_close(a, b, tol=tol)


def _descriptor(mode: str) -> fastcg.TPDescriptor:
    """Every allowed path of small irreps (l <= 2 in, up to 3 out) in one connection mode."""
    same = mode in ("uuu", "uuw")
    ir1 = o3.Irreps("2x0e+2x1o+2x2e" if same else "3x0e+2x1o+2x2e")
    ir2 = o3.Irreps("2x0e+2x1o+2x2e" if same else "2x0e+1x1o+1x3o")
    outs, ins = [], []
    for i, (m1, a) in enumerate(ir1):
        for j, (m2, b) in enumerate(ir2):
            for c in a * b:
                mo = {"uvw": 3, "uvu": m1, "uuu": m1, "uvv": m2, "uuw": 3}[mode]
                outs.append(f"{mo}x{c}")
                ins.append((i, j, len(outs) - 1, mode, True))
    return fastcg.tensor_product_descriptor(ir1, ir2, "+".join(outs), ins)


def _tp_inputs(d, batch: int, shared: bool, dtype=torch.float64):
    x1 = torch.randn(batch, d.dim1, dtype=dtype, requires_grad=True)
    x2 = torch.randn(batch, d.dim2, dtype=dtype, requires_grad=True)
    shape = (d.weight_numel,) if shared else (batch, d.weight_numel)
    w = torch.randn(shape, dtype=dtype, requires_grad=True)
    return x1, x2, w


def _second(backend: str, fn, inputs, cot, cot2):
    """Gradients w.r.t. inputs and cotangent of <cot2, d<cot, fn(inputs)>/d inputs>."""
    with fastcg.use_backend(backend):
        g_out = cot.clone().requires_grad_(True)
        grads = torch.autograd.grad(fn(*inputs), inputs, g_out, create_graph=True)
        s = sum((g * c).sum() for g, c in zip(grads, cot2))
        res = torch.autograd.grad(s, [*inputs, g_out], allow_unused=True)
    return [torch.zeros_like(t) if r is None else r for r, t in zip(res, [*inputs, g_out])]


def assert_double_backward(fn, inputs, tol: float = 1e-10) -> None:
    """Double backward (every input and the cotangent) equals the reference's.

    Cheaper than gradgradcheck, which would call the interpreted kernels per Jacobian column.
    """
    with fastcg.use_backend("reference"):
        cot = torch.randn_like(fn(*inputs))
    cot2 = [torch.randn_like(t) for t in inputs]
    for a, b in zip(_second("triton", fn, inputs, cot, cot2),
                    _second("reference", fn, inputs, cot, cot2)):  # fmt: skip
        _close(a, b, tol)


def _grads(backend: str, fn, inputs, cot):
    with fastcg.use_backend(backend):
        out = fn(*inputs)
        diff = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
        return out, torch.autograd.grad(out, diff, cot)


@pytest.mark.parametrize("shared", [False, True], ids=["per_sample", "shared"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_tensor_product(triton_backend, mode, shared, dtype):
    d = _descriptor(mode)
    inputs = _tp_inputs(d, 5, shared, dtype)

    def fn(a, b, w):
        return fastcg.tensor_product(a, b, w, d)

    ref = run("reference", fn, *inputs)
    cot = torch.randn_like(ref)
    out, grads = _grads("triton", fn, inputs, cot)
    ref, ref_grads = _grads("reference", fn, inputs, cot)
    _close(out, ref, TOL[dtype])
    for g, r in zip(grads, ref_grads):
        _close(g, r, TOL[dtype])


@pytest.mark.parametrize("mode", ["uvw", "uvu", "uvv"])
def test_tensor_product_double_backward(triton_backend, mode):
    d = fastcg.tensor_product_descriptor(
        "2x0e+2x1o", "1x0e+1x1o", "2x0e+2x1o" if mode != "uvv" else "1x0e+1x1o",
        [(0, 0, 0, mode, True), (1, 1, 0, mode, True), (0, 1, 1, mode, True),
         (1, 0, 1, mode, True)] if mode != "uvv" else
        [(0, 0, 0, mode, True), (1, 1, 0, mode, True), (0, 1, 1, mode, True)],
    )  # fmt: skip
    for shared in (False, True):
        inputs = _tp_inputs(d, 2, shared)
        fn = lambda a, b, w: fastcg.tensor_product(a, b, w, d)  # noqa: E731
        assert_double_backward(fn, inputs)


def test_tensor_product_no_weights_and_empty(triton_backend):
    d = fastcg.tensor_product_descriptor(
        "2x1o", "2x1o", "2x0e+2x1e", [(0, 0, 0, "uuu", False), (0, 0, 1, "uuu", False)]
    )
    x1, x2 = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    _close(
        fastcg.tensor_product(x1, x2, None, d),
        run("reference", fastcg.tensor_product, x1, x2, None, d),
        1e-10,
    )  # noqa: E501
    assert fastcg.tensor_product(x1[:0], x2[:0], None, d).shape == (0, d.dim_out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_half_inputs_accumulate_in_float32(triton_backend, dtype):
    # the interpreter's bf16 arithmetic is wrong, so the kernels only load half types and
    # compute in float32: compare with float32 math on the same rounded inputs
    d = _descriptor("uvu")
    x1, x2, w = (t.detach().to(dtype) for t in _tp_inputs(d, 4, False, torch.float32))
    out = fastcg.tensor_product(x1, x2, w, d)
    assert out.dtype == dtype
    ref = run("reference", fastcg.tensor_product, x1.float(), x2.float(), w.float(), d)
    _close(out.float(), ref.to(dtype).float(), 2e-2)


def _conv_case(shared: bool, num_nodes: int = 5, num_edges: int = 14):
    d = fastcg.tensor_product_descriptor(
        "3x0e+3x1o+3x2e", "1x0e+1x1o+1x2e", "3x0e+3x1o+3x2e+3x1e",
        [(0, 0, 0, "uvu", True), (1, 1, 0, "uvu", True), (0, 1, 1, "uvu", True),
         (1, 0, 1, "uvu", True), (2, 1, 1, "uvu", True), (2, 0, 2, "uvu", True),
         (1, 1, 3, "uvu", True), (2, 2, 0, "uvu", True)],
    )  # fmt: skip
    dt = torch.float64
    x = torch.randn(num_nodes, d.dim1, dtype=dt, requires_grad=True)
    y = torch.randn(num_edges, d.dim2, dtype=dt, requires_grad=True)
    w = torch.randn((d.weight_numel,) if shared else (num_edges, d.weight_numel), dtype=dt)
    src = torch.randint(0, num_nodes, (num_edges,))
    dst = torch.randint(0, num_nodes, (num_edges,))
    return d, x, y, w.requires_grad_(True), src, dst


@pytest.mark.parametrize("order", ["atomic", "sorted", "deterministic"])
@pytest.mark.parametrize("shared", [False, True], ids=["per_edge", "shared"])
def test_conv(triton_backend, order, shared):
    d, x, y, w, src, dst = _conv_case(shared)
    if order == "sorted":
        src, dst, perm = fastcg.sort_edges(src, dst)
        y = y.detach()[perm].requires_grad_(True)
    n = x.shape[0]

    def fn(x, y, w):
        return fastcg.conv(x, y, w, src, dst, n, d)

    cot = torch.randn(n, d.dim_out, dtype=x.dtype)
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(order == "deterministic")
    try:
        out, grads = _grads("triton", fn, (x, y, w), cot)
    finally:
        torch.use_deterministic_algorithms(old)
    ref, ref_grads = _grads("reference", fn, (x, y, w), cot)
    _close(out, ref, 1e-10)
    for g, r in zip(grads, ref_grads):
        _close(g, r, 1e-10)


def test_conv_double_backward(triton_backend):
    d, x, y, w, src, dst = _conv_case(False, num_nodes=3, num_edges=5)
    fn = lambda x, y, w: fastcg.conv(x, y, w, src, dst, 3, d)  # noqa: E731
    assert_double_backward(fn, (x, y, w))


def test_conv_radial(triton_backend):
    """conv_radial on the Triton backend (weights formed whole) == the reference, with grads."""
    d, x, y, _, src, dst = _conv_case(False)
    h = torch.randn(y.shape[0], 4, dtype=x.dtype, requires_grad=True)
    W = torch.randn(4, d.weight_numel, dtype=x.dtype, requires_grad=True)
    n = x.shape[0]

    def fn(x, y, h, W):
        return fastcg.conv_radial(x, y, h, W, src, dst, n, d)

    cot = torch.randn(n, d.dim_out, dtype=x.dtype)
    out, grads = _grads("triton", fn, (x, y, h, W), cot)
    ref, ref_grads = _grads("reference", fn, (x, y, h, W), cot)
    _close(out, ref, 1e-10)
    for g, r in zip(grads, ref_grads):
        _close(g, r, 1e-10)


@pytest.mark.parametrize("sort", [False, True], ids=["unsorted", "sorted"])
def test_scatter_sum(triton_backend, sort):
    index = torch.randint(0, 6, (20,))
    if sort:
        index = index.sort().values
    for src in (torch.randn(20, 5, dtype=torch.float64), torch.randn(20, dtype=torch.float32),
                torch.randn(20, 2, 3, dtype=torch.float64)):  # fmt: skip
        src.requires_grad_(True)
        fn = lambda s: fastcg.scatter_sum(s, index, 7)  # noqa: E731
        cot = torch.randn(7, *src.shape[1:], dtype=src.dtype)
        out, (g,) = _grads("triton", fn, (src,), cot)
        ref, (r,) = _grads("reference", fn, (src,), cot)
        _close(out, ref, TOL[src.dtype])
        _close(g, r, TOL[src.dtype])
    assert fastcg.scatter_sum(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 4).shape == (
        4,
        3,
    )


@pytest.mark.parametrize("species", [False, True], ids=["shared", "species"])
def test_linear(triton_backend, species):
    d = fastcg.linear_descriptor("5x0e+3x1o+2x2e", "4x0e+6x1o+1x2e+2x1e")
    dt = torch.float64
    x = torch.randn(9, d.dim_in, dtype=dt, requires_grad=True)
    sp = torch.randint(0, 3, (9,)) if species else None
    w = torch.randn((3, d.weight_numel) if species else (d.weight_numel,), dtype=dt)
    w.requires_grad_(True)

    def fn(x, w):
        return fastcg.linear(x, w, d, sp)

    cot = torch.randn(9, d.dim_out, dtype=dt)
    out, grads = _grads("triton", fn, (x, w), cot)
    ref, ref_grads = _grads("reference", fn, (x, w), cot)
    _close(out, ref, 1e-10)
    for g, r in zip(grads, ref_grads):
        _close(g, r, 1e-10)
    small = (x[:3].detach().requires_grad_(True), w)
    if species:
        sp = sp[:3]
    assert_double_backward(fn, small)


@pytest.mark.parametrize("normalization", ["component", "norm", "integral"])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_spherical_harmonics(triton_backend, normalize, normalization):
    v = torch.randn(9, 3, dtype=torch.float64)
    v[4] = 0.0  # zero vector: finite values, zero gradients
    v.requires_grad_(True)
    for lmax in (0, 2, 5, 8):
        fn = lambda v: fastcg.spherical_harmonics(v, lmax, normalize, normalization)  # noqa: E731,B023
        out = fn(v)
        ref = run("reference", fn, v)
        _close(out, ref, 1e-10 * 10**lmax if not normalize else 1e-10)
        if lmax == 0:
            continue
        cot = torch.randn_like(ref)
        (g,) = torch.autograd.grad(fn(v), v, cot)
        (r,) = torch.autograd.grad(run("reference", fn, v), v, cot)
        _close(g, r, 1e-9 if normalize else 1e-10 * 10**lmax)
        assert torch.isfinite(g).all()
        if normalize:
            assert g[4].abs().max() == 0


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_spherical_harmonics_nan(triton_backend, normalize):
    """NaN / inf vectors: non-finite exactly where the reference (e3nn's pattern) is; one NaN
    component makes every normalised l >= 1 NaN; zero vectors stay finite."""
    nan, inf = float("nan"), float("inf")
    v = torch.tensor(
        [[nan, 0.5, 0.2], [inf, 0.0, 1.0], [0.0, 0.0, 0.0], [0.3, -0.4, 1.1]], dtype=torch.float64
    )
    for lmax in (1, 4):
        fn = lambda v: fastcg.spherical_harmonics(v, lmax, normalize, "integral")  # noqa: E731,B023
        out, ref = fn(v), run("reference", fn, v)
        finite = torch.isfinite(ref)
        assert torch.equal(torch.isfinite(out), finite)
        _close(out[finite], ref[finite], 1e-10)
        if normalize:
            assert torch.isnan(out[0, 1:]).all()


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_spherical_harmonics_double_backward(triton_backend, normalize):
    v = (torch.randn(3, 3, dtype=torch.float64) + 0.5).requires_grad_(True)
    for lmax in (1, 3):
        fn = lambda v: fastcg.spherical_harmonics(v, lmax, normalize, "norm")  # noqa: E731,B023
        assert_double_backward(fn, (v,), 1e-9)


def test_opcheck(triton_backend):
    """The fastcg_triton ops satisfy torch.library's custom-op contract (schema, fake, autograd)."""
    import fastcg.triton  # noqa: F401

    d = _descriptor("uvu")
    x1, x2, w = (t.detach() for t in _tp_inputs(d, 3, False))
    tables = [t for t in d.tensors()]
    ops = torch.ops.fastcg_triton
    torch.library.opcheck(ops.tensor_product, (x1, x2, w, *tables, d.dim_out))
    v = torch.randn(4, 3, dtype=torch.float64)
    torch.library.opcheck(ops.spherical_harmonics, (v, 2, True, "component"))
    src = torch.randn(5, 3, dtype=torch.float64)
    torch.library.opcheck(ops.scatter_sum, (src, torch.tensor([0, 1, 1, 3, 0]), 4))


def test_launchers_check_index_values(triton_backend):
    """Index values are checked by the kernels, not at the Python boundary: the Triton launchers
    raise an IndexError naming the entry on CPU tensors (on a GPU: a device-side assert)."""
    f64 = torch.float64
    ops = torch.ops.fastcg_triton
    src = torch.randn(5, 3, dtype=f64)
    with pytest.raises(IndexError, match=r"index\[3\] = 4 is out of range \[0, 4\)"):
        fastcg.scatter_sum(src, torch.tensor([0, 1, 1, 4, 0]), 4)
    with pytest.raises(IndexError, match=r"index\[1\] = -1 is out of range"):
        ops.scatter_sum(src, torch.tensor([0, -1, 1, 3, 0]), 4)
    d = _descriptor("uvu")
    x, y = torch.randn(3, d.dim1, dtype=f64), torch.randn(5, d.dim2, dtype=f64)
    w, tables = torch.randn(5, d.weight_numel, dtype=f64), d.tensors()
    good = torch.tensor([0, 1, 2, 0, 1])
    with pytest.raises(IndexError, match=r"src\[3\] = 3 is out of range \[0, 3\)"):
        ops.conv(x, y, w, torch.tensor([0, 1, 2, 3, 1]), good, 3, *tables, d.dim_out)
    with pytest.raises(IndexError, match=r"dst\[0\] = 5 is out of range \[0, 3\)"):
        ops.conv(x, y, w, good, torch.tensor([5, 1, 2, 0, 1]), 3, *tables, d.dim_out)
    lin = fastcg.linear_descriptor("2x0e+1x1o", "3x0e+2x1o")
    lx, lw = torch.randn(4, lin.dim_in, dtype=f64), torch.randn(3, lin.weight_numel, dtype=f64)
    with pytest.raises(IndexError, match=r"species\[2\] = 3 is out of range \[0, 3\)"):
        ops.linear(lx, lw, torch.tensor([0, 2, 3, 1]), *lin.tensors(), lin.dim_out)
