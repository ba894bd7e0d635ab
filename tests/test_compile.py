"""torch.compile(fullgraph=True) of each op, forward and backward, against e3nn / torch."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, default_dtype, descriptor, e3nn_tp
from e3nn import o3

import fastcg

F64 = torch.float64
# Each op runs behind its registered boundary (fake kernel + autograd): the C++ backend is the
# one dynamo must treat as an opaque op; "reference" checks the oracle traces too.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def compiled(fn):
    return torch.compile(fn, fullgraph=True, dynamic=False)


def _grads(fn, inputs):
    out = fn(*inputs)
    g = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    return (out, *torch.autograd.grad((out * g).sum(), inputs))


def _check(fn_ours, fn_ref, inputs):
    """Compiled fastcg vs eager reference: value and gradients w.r.t. every input."""
    ours = _grads(compiled(fn_ours), inputs)
    theirs = _grads(fn_ref, inputs)
    for a, b in zip(ours, theirs):
        assert_close(a, b)


@pytest.mark.parametrize("name", ["cpu", "reference"])
def test_spherical_harmonics(name):
    vectors = torch.randn(9, 3, dtype=F64, requires_grad=True)
    with fastcg.use_backend(name):
        _check(
            lambda v: fastcg.spherical_harmonics(v, 4, True, "component"),
            lambda v: o3.spherical_harmonics(list(range(5)), v, True, "component"),
            (vectors,),
        )


def test_tensor_product():
    desc, tp = descriptor("mixed"), e3nn_tp("mixed")
    x1 = torch.randn(6, desc.dim1, dtype=F64, requires_grad=True)
    x2 = torch.randn(6, desc.dim2, dtype=F64, requires_grad=True)
    w = torch.randn(6, desc.weight_numel, dtype=F64, requires_grad=True)
    with fastcg.use_backend("cpu"):
        _check(lambda a, b, c: fastcg.tensor_product(a, b, c, desc), tp, (x1, x2, w))


def test_tensor_product_namedtuple():
    """The op on a TPTables, as fastcg.nn modules call it with their buffers as inputs."""
    desc, tp = descriptor("uvu"), e3nn_tp("uvu", shared=True)
    tables = fastcg.TPTables(*(t.clone() for t in desc.tensors()), *desc.tables()[3:])
    x1 = torch.randn(6, desc.dim1, dtype=F64, requires_grad=True)
    x2 = torch.randn(6, desc.dim2, dtype=F64, requires_grad=True)
    w = torch.randn(desc.weight_numel, dtype=F64, requires_grad=True)

    def ours(a, b, c):
        return fastcg.tensor_product(a, b, c, tables)

    with fastcg.use_backend("cpu"):
        _check(ours, tp, (x1, x2, w))


def test_conv():
    desc, tp = descriptor("uvu"), e3nn_tp("uvu")
    x = torch.randn(5, desc.dim1, dtype=F64, requires_grad=True)
    y = torch.randn(12, desc.dim2, dtype=F64, requires_grad=True)
    w = torch.randn(12, desc.weight_numel, dtype=F64, requires_grad=True)
    src, dst = torch.randint(0, 5, (12,)), torch.randint(0, 5, (12,))

    def theirs(a, b, c):
        return torch.zeros(5, desc.dim_out, dtype=F64).index_add(0, dst, tp(a[src], b, c))

    with fastcg.use_backend("cpu"):
        _check(lambda a, b, c: fastcg.conv(a, b, c, src, dst, 5, desc), theirs, (x, y, w))


def test_scatter_sum():
    src = torch.randn(20, 4, dtype=F64, requires_grad=True)
    index = torch.randint(0, 6, (20,))

    def theirs(s):
        return torch.zeros(6, 4, dtype=F64).index_add(0, index, s)

    with fastcg.use_backend("cpu"):
        _check(lambda s: fastcg.scatter_sum(s, index, 6), theirs, (src,))


@pytest.mark.parametrize("species", [False, True], ids=["shared", "species"])
def test_linear(species):
    desc = fastcg.linear_descriptor("3x0e+2x1o+1x2e", "2x0e+3x1o+1x2e")
    with torch.random.fork_rng(), default_dtype(F64):
        lin = o3.Linear(desc.irreps_in, desc.irreps_out, internal_weights=False,
                        shared_weights=False)  # fmt: skip
    x = torch.randn(7, desc.dim_in, dtype=F64, requires_grad=True)
    w = torch.randn(*((3,) if species else ()), desc.weight_numel, dtype=F64, requires_grad=True)
    sp = torch.tensor([0, 2, 1, 1, 0, 2, 2]) if species else None

    def theirs(a, b):
        return lin(a, b[sp] if species else b.expand(7, -1))

    with fastcg.use_backend("cpu"):
        _check(lambda a, b: fastcg.linear(a, b, desc, species=sp), theirs, (x, w))


def test_entry_points_script_with_their_tables():
    """TorchScript compiles every entry point with its descriptor's NamedTuple (what the fastcg.nn
    modules pass in a scripted model); eager Python passes the descriptor: the same numbers."""
    from fastcg.ops import symmetric_contraction, symmetric_contraction_descriptor

    desc = descriptor("uvu")
    lin = fastcg.linear_descriptor("3x0e+2x1o", "2x0e+3x1o")
    sc = symmetric_contraction_descriptor("0e+1o", "0e+1o", 2)
    x, y = torch.randn(5, desc.dim1, dtype=F64), torch.randn(12, desc.dim2, dtype=F64)
    w = torch.randn(12, desc.weight_numel, dtype=F64)
    src, dst = torch.randint(0, 5, (12,)), torch.randint(0, 5, (12,))
    radial, rw = torch.randn(12, 4, dtype=F64), torch.randn(4, desc.weight_numel, dtype=F64)
    r, table = torch.rand(12, dtype=F64), torch.randn(3, 2, desc.weight_numel, dtype=F64)
    xl, wl = torch.randn(7, lin.dim_in, dtype=F64), torch.randn(lin.weight_numel, dtype=F64)
    xs, ws = torch.randn(4, 3, sc.dim_in, dtype=F64), torch.randn(2, sc.weight_numel, 3, dtype=F64)
    cases = [
        (fastcg.tensor_product, (x[src], y, w), desc),
        (fastcg.conv, (x, y, w, src, dst, 5), desc),
        (fastcg.conv_radial, (x, y, radial, rw, src, dst, 5), desc),
        (fastcg.conv_tabulated, (x, y, r, table, 1.0, src, dst, 5), desc),
        (fastcg.linear, (xl, wl), lin),
        (symmetric_contraction, (xs, torch.tensor([0, 1, 1, 0]), ws), sc),
    ]
    with fastcg.use_backend("cpu"):
        for op, args, d in cases:
            assert_close(torch.jit.script(op)(*args, d.tables()), op(*args, d))
