"""Sizes that vary with the system (num_nodes, dim_size) are SymInt in the op schemas: one
exported program and one compiled graph serve every number of atoms and edges."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import assert_close, descriptor, namespaces
from torch._dynamo.testing import CompileCounterWithBackend
from torch.export import Dim

import fastcg

F64 = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# (op, argument): every size argument that grows with the system
SYM_ARGS = [("conv", "num_nodes"), ("conv_radial", "num_nodes"), ("scatter_sum", "dim_size")]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("ns", namespaces())
@pytest.mark.parametrize(("op", "arg"), SYM_ARGS)
def test_size_arguments_are_symint(ns, op, arg):
    packet = getattr(getattr(torch.ops, ns), op, None)
    if packet is None:
        pytest.skip(f"{ns} has no {op}")
    schema = str(packet.default._schema)  # (the Python Argument.type says int for SymInt)
    assert re.search(rf"\bSymInt {arg}\b", schema), schema


class Interaction(torch.nn.Module):
    """A message-passing step as models write it: conv into nodes plus a scatter of edge terms,
    the node count taken from the features (symbolic under export / dynamic compile)."""

    def __init__(self):
        super().__init__()
        self.desc = descriptor("uvu")

    def forward(self, x, edge_attr, weights, src, dst):
        n = x.shape[0]
        out = fastcg.conv(x, edge_attr, weights, src, dst, n, self.desc)
        return out + fastcg.scatter_sum(edge_attr[:, :1], dst, n).sum(-1, keepdim=True)


def graph(atoms: int, edges: int, requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
    d = descriptor("uvu")
    x = torch.randn(atoms, d.dim1, dtype=F64, requires_grad=requires_grad)
    y = torch.randn(edges, d.dim2, dtype=F64, requires_grad=requires_grad)
    w = torch.randn(edges, d.weight_numel, dtype=F64, requires_grad=requires_grad)
    src, dst = torch.randint(0, atoms, (edges,)), torch.randint(0, atoms, (edges,))
    return x, y, w, src, dst


def expected(inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with fastcg.use_backend("reference"):
        return Interaction()(*inputs)


def test_export_with_dynamic_atoms_runs_other_sizes():
    atoms, edges = Dim("atoms", min=2), Dim("edges", min=2)
    dyn = {"x": {0: atoms}, "edge_attr": {0: edges}, "weights": {0: edges}, "src": {0: edges},
           "dst": {0: edges}}  # fmt: skip
    with fastcg.use_backend("cpu"):
        ep = torch.export.export(Interaction(), graph(5, 12), dynamic_shapes=dyn)
        for n, e in ((5, 12), (9, 20), (3, 4)):
            inputs = graph(n, e)
            assert_close(ep.module()(*inputs), expected(inputs))


def test_compile_dynamic_one_graph_for_all_atom_counts():
    counter = CompileCounterWithBackend("aot_eager")
    model = Interaction()
    fn = torch.compile(model, backend=counter, dynamic=True, fullgraph=True)
    with fastcg.use_backend("cpu"):
        for n, e in ((5, 12), (9, 20), (7, 15)):
            inputs = graph(n, e, requires_grad=True)
            out = fn(*inputs)
            ref = expected(inputs)
            assert_close(out, ref)
            # the backward through the SymInt-sized graph as well (forces on other sizes)
            g = torch.autograd.grad(out.square().sum(), inputs[:3])
            g_ref = torch.autograd.grad(ref.square().sum(), inputs[:3])
            for a, b in zip(g, g_ref):
                assert_close(a, b)
    assert counter.frame_count == 1, f"{counter.frame_count} compilations for 3 atom counts"


def test_compile_dynamic_conv_radial_one_graph():
    d = descriptor("uvu")

    def fn(x, y, h, W, src, dst):
        return fastcg.conv_radial(x, y, h, W, src, dst, x.shape[0], d)

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, backend=counter, dynamic=True, fullgraph=True)
    with fastcg.use_backend("cpu"):
        for n, e in ((4, 10), (6, 13)):
            x, y, w, src, dst = graph(n, e)
            h, W = torch.randn(e, 3, dtype=F64), torch.randn(3, d.weight_numel, dtype=F64)
            with fastcg.use_backend("reference"):
                ref = fn(x, y, h, W, src, dst)
            assert_close(compiled(x, y, h, W, src, dst), ref)
    assert counter.frame_count == 1
