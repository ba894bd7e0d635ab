"""Golden check of the kernels that share csrc/core with the CUDA build, on any machine.

Fixed seeded inputs (small: nothing is stored) run through the C++ CPU kernels, which execute
core/tp.h and core/scatter.h, and through the reference; on a machine with a GPU and a CUDA
build the same inputs also run through the CUDA C++ kernels (``use_backend("cuda")``). Values,
first derivatives and double-backward terms are compared, so forward and backward ops also run
on the swapped arguments of fastcg/ops/_trilinear.py.
"""

import pytest
import torch
from conftest import assert_close, descriptor

import fastcg

CUDA_READY = torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
    "fastcg::symmetric_contraction", "CUDA"
)
BACKENDS = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA_READY, reason="no GPU"))]
DTYPES = [torch.float32, torch.float64]


def _inputs(seed: int, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen, dtype=torch.float64) for s in shapes]


def _derivatives(fn, inputs: list[torch.Tensor], backend: str, dtype: torch.dtype):
    """(output, grads, second grads) of fn on copies of inputs moved to backend's device."""
    device = "cuda" if backend == "cuda" else "cpu"
    xs = [t.to(device, dtype).requires_grad_() if t.is_floating_point() else t.to(device)
          for t in inputs]  # fmt: skip
    with fastcg.use_backend(backend):
        out = fn(*xs)
        cot = torch.linspace(-1, 1, out.numel(), dtype=dtype, device=device).view_as(out)
        cot.requires_grad_(True)
        diff = [t for t in xs if t.requires_grad]
        grads = torch.autograd.grad(out, diff, cot, create_graph=True)
        probe = sum((g * torch.cos(torch.arange(g.numel(), device=device)).view_as(g)).sum()
                    for g in grads)  # fmt: skip
        second = torch.autograd.grad(probe, [*diff, cot], allow_unused=True)
    second = [torch.zeros(0) if s is None else s for s in second]
    return [t.detach().cpu() for t in (out, *grads, *second)]


def _check(fn, inputs, backend, dtype):
    ours = _derivatives(fn, inputs, backend, dtype)
    theirs = _derivatives(fn, inputs, "reference", torch.float64)
    for a, b in zip(ours, theirs, strict=True):
        assert_close(a, b, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shared", [False, True], ids=["per_row", "shared"])
def test_tensor_product(backend, dtype, shared):
    d = descriptor("mixed")  # every mode, weighted and unweighted paths
    w_shape = (d.weight_numel,) if shared else (5, d.weight_numel)
    x1, x2, w = _inputs(1, (5, d.dim1), (5, d.dim2), w_shape)
    _check(lambda a, b, c: fastcg.tensor_product(a, b, c, d), [x1, x2, w], backend, dtype)


@pytest.fixture(params=[False, True], ids=["atomic", "deterministic"])
def deterministic(request):
    """The CUDA conv's two variants: atomic by default, sorted under deterministic algorithms
    (warn_only: other ops in the test may have no deterministic kernel)."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(request.param, warn_only=True)
    yield request.param
    torch.use_deterministic_algorithms(before, warn_only=warn_only)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shared", [False, True], ids=["per_edge", "shared"])
def test_conv(backend, dtype, shared, deterministic):
    d = descriptor("mixed")
    src = torch.tensor([0, 2, 1, 2, 3, 0, 1, 3, 2])  # unsorted; node 4 receives nothing
    dst = torch.tensor([1, 0, 3, 1, 0, 2, 1, 2, 3])
    w_shape = (d.weight_numel,) if shared else (9, d.weight_numel)
    x, y, w = _inputs(2, (5, d.dim1), (9, d.dim2), w_shape)

    def fn(a, b, c, s, t):
        return fastcg.conv(a, b, c, s, t, 5, d)

    _check(fn, [x, y, w, src, dst], backend, dtype)


@pytest.mark.parametrize("chunk", [None, "30"], ids=["one_chunk", "chunked"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_radial(backend, dtype, chunk, monkeypatch):
    """csrc/conv_radial.cpp on the device's conv kernels, in one chunk or several."""
    if chunk is None:
        monkeypatch.delenv("FASTCG_CONV_RADIAL_CHUNK", raising=False)
    else:
        monkeypatch.setenv("FASTCG_CONV_RADIAL_CHUNK", chunk)
    d = descriptor("mixed")
    src = torch.tensor([0, 2, 1, 2, 3, 0, 1, 3, 2])
    dst = torch.tensor([1, 0, 3, 1, 0, 2, 1, 2, 3])
    x, y, h, W = _inputs(7, (5, d.dim1), (9, d.dim2), (9, 3), (3, d.weight_numel))

    def fn(a, b, c, e, s, t):
        return fastcg.conv_radial(a, b, c, e, s, t, 5, d)

    _check(fn, [x, y, h, W, src, dst], backend, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shared", [False, True], ids=["per_edge", "shared"])
def test_conv_many_edges_per_node(backend, shared, deterministic):
    """Thousands of edges into a few nodes: on a GPU, the atomic kernels' threads collide on
    every output row, where a missing atomic would lose updates."""
    d = descriptor("mixed")
    gen = torch.Generator().manual_seed(7)
    src = torch.randint(0, 6, (3000,), generator=gen)
    dst = torch.randint(0, 3, (3000,), generator=gen)
    w_shape = (d.weight_numel,) if shared else (3000, d.weight_numel)
    x, y, w = _inputs(8, (6, d.dim1), (3000, d.dim2), w_shape)
    device = "cuda" if backend == "cuda" else "cpu"

    def run(backend, device):
        xs = [t.to(device).clone().requires_grad_() for t in (x, y, w)]
        with fastcg.use_backend(backend):
            out = fastcg.conv(*xs, src.to(device), dst.to(device), 4, d)
            return [out, *torch.autograd.grad(out, xs, torch.cos(out.detach()))]

    for a, b in zip(run(backend, device), run("reference", "cpu"), strict=True):
        assert_close(a.cpu(), b, torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_dst_sorted_forward_is_reproducible(backend):
    """Edges sorted by dst: the forward is the same bits every call and with deterministic
    algorithms on (on a GPU the default atomic variant must take the per-node sum then)."""
    d = descriptor("mixed")
    gen = torch.Generator().manual_seed(9)
    dst, perm = torch.randint(0, 4, (2000,), generator=gen).sort(stable=True)
    src = torch.randint(0, 6, (2000,), generator=gen)[perm]
    device = "cuda" if backend == "cuda" else "cpu"
    x, y, w = (t.to(device, torch.float32) for t in
               _inputs(10, (6, d.dim1), (2000, d.dim2), (2000, d.weight_numel)))  # fmt: skip
    src, dst = src.to(device), dst.to(device)
    with fastcg.use_backend(backend):
        first, again = (fastcg.conv(x, y, w, src, dst, 4, d) for _ in range(2))
        before = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            det = fastcg.conv(x, y, w, src, dst, 4, d)
        finally:
            torch.use_deterministic_algorithms(before)
    assert torch.equal(first, again) and torch.equal(first, det)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("species", [False, True], ids=["shared", "species"])
def test_linear(backend, dtype, species):
    d = fastcg.linear_descriptor("3x0e+2x1o+1x2e+1x1o", "2x0e+3x1o+1x2e")
    sp = torch.tensor([2, 0, 2, 1, 0, 2]) if species else None
    (x,) = _inputs(3, (6, d.dim_in))
    (w,) = _inputs(4, (3, d.weight_numel) if species else (d.weight_numel,))
    _check(lambda a, b: fastcg.linear(a, b, d, species=sp if sp is None else sp.to(a.device)),
           [x, w], backend, dtype)  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_scatter_sum(backend, dtype):
    index = torch.tensor([3, 0, 3, 1, 0, 3, 5])  # unsorted; rows 2 and 4 stay zero
    (src,) = _inputs(5, (7, 3))
    _check(lambda s, i: fastcg.scatter_sum(s, i, 6), [src, index], backend, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_symmetric_contraction(backend, dtype):
    from fastcg.ops.symmetric_contraction import (
        symmetric_contraction,
        symmetric_contraction_descriptor,
    )

    d = symmetric_contraction_descriptor("0e+1o+2e", "0e+1o+2e", (3, 2, 1))
    species = torch.tensor([1, 0, 1, 1, 0])  # unsorted
    x, w = _inputs(6, (5, 3, d.dim_in), (2, d.weight_numel, 3))
    _check(lambda a, s, b: symmetric_contraction(a, s, b, d), [x, species, w], backend, dtype)
