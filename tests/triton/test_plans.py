"""Triton launch plans: built once per table tensors, rebuilt when a table changes in place.

The launchers look plans up by the identity of the descriptor tables (``PlanCache``), then by
their content. These tests count the reads of the tables (``PLANS.builds``, and a build function
that fails when it should not run), and check the results against ``fastcg.reference`` on CPU
tensors under the Triton interpreter.
"""

from __future__ import annotations

import gc

import pytest
import torch
from test_kernels import _close

import fastcg
from fastcg import reference
from fastcg.descriptors import LinCol, PathCol
from fastcg.ops.linear import linear
from fastcg.ops.symmetric_contraction import symmetric_contraction, symmetric_contraction_descriptor
from fastcg.ops.tensor_product import tensor_product
from fastcg.testing import SYMMETRIC_CONTRACTION_CASES

TOL = 1e-10  # float64


def _fresh(tables) -> tuple[torch.Tensor, ...]:
    """Copies no other test holds, so their first use is a miss."""
    return tuple(t.clone() for t in tables)


class Case:
    """One op: fresh tables, inputs, and calls through the op and through the reference."""

    def __init__(self, op: str):
        self.op = op
        import fastcg.triton.linear as lin
        import fastcg.triton.symmetric_contraction as sc
        import fastcg.triton.tensor_product as tp

        dt = torch.float64
        if op == "tensor_product":
            d = fastcg.tensor_product_descriptor(
                "2x0e+2x1o", "1x0e+1x1o", "2x0e+2x1o+2x1e",
                [(0, 0, 0, "uvu", True), (1, 1, 0, "uvu", True), (1, 1, 2, "uvu", True),
                 (1, 0, 1, "uvu", True), (0, 1, 1, "uvu", True)],
            )  # fmt: skip
            self.module, self.d = tp, d
            self.inputs = (torch.randn(6, d.dim1, dtype=dt), torch.randn(6, d.dim2, dtype=dt),
                           torch.randn(6, d.weight_numel, dtype=dt))  # fmt: skip
        elif op == "linear":
            d = fastcg.linear_descriptor("3x0e+2x1o", "2x0e+3x1o")
            self.module, self.d = lin, d
            self.inputs = (
                torch.randn(7, d.dim_in, dtype=dt),
                torch.randn(d.weight_numel, dtype=dt),
            )
        else:
            d = symmetric_contraction_descriptor(*SYMMETRIC_CONTRACTION_CASES["l1-corr2"])
            self.module, self.d = sc, d
            self.species = torch.tensor([0, 1, 1, 0, 1])
            self.inputs = (torch.randn(5, 3, d.dim_in, dtype=dt),
                           torch.randn(2, d.weight_numel, 3, dtype=dt))  # fmt: skip
        self.tables = _fresh(d.tensors())

    def named(self) -> tuple:
        """The descriptor's NamedTuple with this case's table tensors."""
        n = len(self.tables)
        return type(self.d.tables())(*self.tables, *self.d.tables()[n:])

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        t = self.named()
        inputs = inputs or self.inputs
        if self.op == "tensor_product":
            return tensor_product(*inputs, t)
        if self.op == "linear":
            return linear(inputs[0], inputs[1], t)
        return symmetric_contraction(inputs[0], self.species, inputs[1], t)

    def reference(self) -> torch.Tensor:
        t = self.named()
        if self.op == "tensor_product":
            return reference.tensor_product(*self.inputs, t)
        if self.op == "linear":
            return reference.linear(self.inputs[0], self.inputs[1], t)
        return reference.symmetric_contraction(self.inputs[0], self.species, self.inputs[1], t)

    def plan(self, tables=None):
        """The plan the launcher gets for float64 CPU inputs."""
        t = tables if tables is not None else self.tables
        dev = torch.device("cpu")
        if self.op == "tensor_product":
            return self.module.plan(*t, torch.float64, dev)
        if self.op == "linear":
            return self.module._plan(*t, torch.float64, dev)
        return self.module.plan(tuple(t), self.d.dim_in, torch.float64, dev)

    def modify(self) -> None:
        """Change a coefficient in place (a different answer, the same tensor objects)."""
        table = {"tensor_product": 2, "linear": 1, "symmetric_contraction": 3}[self.op]
        self.tables[table].mul_(-2.0)


OPS = ["tensor_product", "linear", "symmetric_contraction"]


@pytest.mark.parametrize("op", OPS)
def test_repeat_call_does_not_read_tables(triton_backend, op, monkeypatch):
    """The second call with the same table tensors is a dictionary lookup: no table read."""
    case = Case(op)
    builds = case.module.PLANS.builds
    first = case()
    assert case.module.PLANS.builds == builds + 1

    def boom(tables, extra):
        raise AssertionError("the tables were read again")

    monkeypatch.setattr(case.module.PLANS, "_build", boom)
    _close(case(), first, 0.0)
    assert case.plan() is case.plan()
    _close(first, case.reference(), TOL)


@pytest.mark.parametrize("op", OPS)
def test_backward_reuses_the_forward_plan(triton_backend, op):
    """The autograd backward gets the same tensor objects back (saved tensors): no re-read."""
    case = Case(op)
    inputs = [t.clone().requires_grad_(True) for t in case.inputs]
    builds = case.module.PLANS.builds
    for _ in range(2):
        out = case(*inputs)
        torch.autograd.grad(out, inputs, torch.ones_like(out))
    assert case.module.PLANS.builds == builds + 1


@pytest.mark.parametrize("op", OPS)
def test_in_place_change_gives_new_plan(triton_backend, op):
    """A table changed in place (``_version`` bumped) is read again: the answer follows it."""
    case = Case(op)
    before = case.plan()
    out = case()
    _close(out, case.reference(), TOL)
    case.modify()
    after = case.plan()
    assert after is not before
    changed = case()
    _close(changed, case.reference(), TOL)
    assert not torch.allclose(changed, out)


def test_no_op_in_place_change_rereads_then_shares(triton_backend):
    """``paths[0, k] += 0`` bumps the version: the tables are read again, and the content cache
    returns the same plan."""
    case = Case("tensor_product")
    first = case.plan()
    builds = case.module.PLANS.builds
    case.tables[0][0, PathCol.w_off] += 0
    assert case.plan() is first
    assert case.module.PLANS.builds == builds + 1
    lin = Case("linear")
    first = lin.plan()
    lin.tables[0][0, LinCol.mul_in] += 0
    assert lin.plan() is first


@pytest.mark.parametrize("op", OPS)
def test_equal_content_shares_plan(triton_backend, op):
    """Two distinct tensors with equal content get one plan object (the content cache)."""
    case = Case(op)
    assert case.plan(_fresh(case.tables)) is case.plan()


@pytest.mark.parametrize("op", OPS)
def test_freed_tables_drop_their_entry(triton_backend, op):
    """The identity entry holds the tables weakly: freeing them drops the entry."""
    case = Case(op)
    plans = case.module.PLANS
    count = len(plans)
    case.plan()
    assert len(plans) == count + 1
    case.tables = None
    gc.collect()
    assert len(plans) == count


def test_plan_cache_unit():
    """PlanCache alone: recycled ids never hit, in-place writes miss, LRU bound, inference."""
    from fastcg.triton.tensor_product import PlanCache

    def build(tables, extra):
        return (tuple(tuple(t.tolist()) for t in tables), extra)

    cache = PlanCache(build, maxsize=3)
    for i in range(20):  # freed tensors' ids are typically recycled at once
        t = torch.full((2,), i)
        assert cache.get((t,), "x") == (((i, i),), "x")
        assert cache.get((t,), "y") == (((i, i),), "y")
        del t
    t = torch.zeros(2, dtype=torch.int64)
    cache.get((t,), None)
    builds = cache.builds
    assert cache.get((t,), None) == (((0, 0),), None) and cache.builds == builds
    t[1] = 5
    assert cache.get((t,), None) == (((0, 5),), None) and cache.builds == builds + 1
    keep = [torch.full((1,), i) for i in range(5)]
    for k in keep:
        cache.get((k,), None)
    assert len(cache) == 3
    with torch.inference_mode():
        inf = torch.ones(1, dtype=torch.int64)
    builds = cache.builds
    assert cache.get((inf,), None) == (((1,),), None)
    assert cache.get((inf,), None) == (((1,),), None)
    assert cache.builds == builds + 2  # no version counter: read every time
