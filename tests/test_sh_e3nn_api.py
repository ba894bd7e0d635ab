"""Spherical harmonics as e3nn 0.6 has them: any l, e3nn's signatures and defaults, NaN.

The oracle is e3nn's own function from its defining module, so these tests still compare with
e3nn while e3nn's suite runs with ``e3nn.o3.spherical_harmonics`` swapped for fastcg's.
"""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import assert_close, o3
from e3nn.o3 import _spherical_harmonics as e3nn_module

import fastcg
import fastcg.nn as fnn

F64 = torch.float64
NORMALIZATIONS = ["integral", "component", "norm"]
e3nn_sh = e3nn_module.spherical_harmonics
E3nnSH = e3nn_module.SphericalHarmonics
sh_ops = importlib.import_module("fastcg.ops.spherical_harmonics")  # the module, not the op


@pytest.fixture(autouse=True)
def _quiet_high_l():
    """The one-time l > 8 warning is tested on its own below."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="fastcg: spherical harmonics of l > 8")
        yield


def vectors(n: int = 7, dtype=F64) -> torch.Tensor:
    """Random directions with norms in [0.5, 1.5], so |r|^l stays moderate for raw harmonics."""
    v = torch.randn(n, 3, dtype=dtype)
    return v / v.norm(dim=-1, keepdim=True) * torch.rand(n, 1, dtype=dtype).add(0.5)


@pytest.mark.parametrize("lmax", range(12))
def test_values_match_e3nn(lmax, backend):
    v = vectors()
    for normalization in NORMALIZATIONS:
        for normalize in (True, False):
            expected = e3nn_sh(list(range(lmax + 1)), v, normalize, normalization)
            assert_close(fastcg.spherical_harmonics(v, lmax, normalize, normalization), expected)


@pytest.mark.parametrize("lmax", [9, 11])
def test_float32_high_l(lmax):
    v = vectors(dtype=torch.float32)
    out = fastcg.spherical_harmonics(v, lmax, True, "component")
    assert out.dtype == torch.float32
    assert_close(out, e3nn_sh(list(range(lmax + 1)), v.double(), True, "component"))


def _derivatives(fn, v: torch.Tensor, g: torch.Tensor, h: torch.Tensor):
    (first,) = torch.autograd.grad(fn(v), v, g, create_graph=True)
    (second,) = torch.autograd.grad(first, v, h)
    return first, second


@pytest.mark.parametrize(
    ("normalize", "normalization"), [(True, "integral"), (False, "norm"), (True, "component")]
)
@pytest.mark.parametrize("lmax", [3, 9, 11])
def test_derivatives_match_e3nn(lmax, normalize, normalization, backend):
    """First and second derivatives of l = 0..lmax (the kernels up to 8, then the recursion)."""
    v = vectors(4).requires_grad_()
    g = torch.randn(4, (lmax + 1) ** 2, dtype=F64)
    h = torch.randn(4, 3, dtype=F64)
    ours = _derivatives(
        lambda x: fastcg.spherical_harmonics(x, lmax, normalize, normalization), v, g, h
    )
    theirs = _derivatives(
        lambda x: e3nn_sh(list(range(lmax + 1)), x, normalize, normalization), v, g, h
    )
    for a, b in zip(ours, theirs):
        assert_close(a, b)


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_gradgradcheck_high_l(normalize):
    v = vectors(2).requires_grad_()
    fn = lambda x: fastcg.spherical_harmonics(x, 9, normalize, "norm")[:, 64:]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (v,))
    assert torch.autograd.gradgradcheck(fn, (v,))


def test_zero_vectors_high_l(backend):
    """Zero vectors: finite values, zero first and second derivatives, above l = 8 too."""
    v = torch.zeros(3, 3, dtype=F64)
    v[1] = torch.tensor([0.3, -0.2, 0.9])
    v.requires_grad_()
    out = fastcg.spherical_harmonics(v, 10, True, "integral")
    assert_close(out, e3nn_sh(list(range(11)), v.detach(), True, "integral"))
    (grad,) = torch.autograd.grad(out, v, torch.randn_like(out), create_graph=True)
    (second,) = torch.autograd.grad(grad, v, torch.randn_like(grad))
    for d in (grad, second):
        assert torch.isfinite(d).all()
        assert d[0].abs().max() == 0 and d[2].abs().max() == 0


# ------------------------------------------------------------------------------------ NaN / inf


def _bad_vectors() -> torch.Tensor:
    nan, inf = float("nan"), float("inf")
    return torch.tensor(
        [[nan, nan, nan], [nan, 0.5, 0.2], [inf, 0.0, 1.0], [-inf, inf, 0.0], [0.0, 0.0, 0.0],
         [0.3, -0.4, 1.1]],
        dtype=F64,
    )  # fmt: skip


@pytest.mark.parametrize("lmax", [0, 1, 2, 5, 8, 9, 11])
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
def test_nan_and_inf_propagate(lmax, normalize, backend):
    """A NaN or inf vector gives non-finite harmonics wherever e3nn's are, and equal values
    elsewhere: with normalize, one NaN component makes every l >= 1 NaN (l = 0 is 1 in e3nn too),
    an inf vector becomes (NaN, 0, 0) as e3nn's r / |r|; zero vectors stay finite."""
    v = _bad_vectors()
    ours = fastcg.spherical_harmonics(v, lmax, normalize, "integral")
    theirs = e3nn_sh(list(range(lmax + 1)), v, normalize, "integral")
    finite = torch.isfinite(theirs)
    assert torch.equal(torch.isfinite(ours), finite), (torch.isfinite(ours), finite)
    assert_close(ours[finite], theirs[finite])
    if normalize and lmax > 0:
        assert torch.isnan(ours[:2, 1:]).all()
    assert torch.isfinite(ours[4:]).all()


@pytest.mark.parametrize("lmax", [2, 9])
def test_nan_gradient_propagates(lmax, backend):
    v = _bad_vectors()[[0, 5]].requires_grad_()
    (grad,) = torch.autograd.grad(fastcg.spherical_harmonics(v, lmax).sum(), v)
    assert torch.isnan(grad[0]).all() and torch.isfinite(grad[1]).all()


# ------------------------------------------------------------------------ e3nn's functional API


def test_signatures_and_defaults_are_e3nns():
    for ours, theirs in [(fnn.spherical_harmonics, e3nn_sh), (fnn.SphericalHarmonics, E3nnSH)]:
        a, b = inspect.signature(ours).parameters, inspect.signature(theirs).parameters
        assert list(a) == list(b)
        assert [p.default for p in a.values()] == [p.default for p in b.values()]
    op = inspect.signature(fastcg.spherical_harmonics).parameters
    assert op["normalize"].default is True and op["normalization"].default == "integral"


def test_default_normalization_is_integral(backend):
    v = vectors()
    expected = e3nn_sh([0, 1, 2, 3], v, True)
    assert_close(fastcg.spherical_harmonics(v, 3), expected)
    assert_close(fnn.spherical_harmonics(3, v, True), e3nn_sh(3, v, True))
    assert_close(fnn.SphericalHarmonics([0, 1, 2, 3], True)(v), expected)


L_ARGS = {
    "int": 2,
    "int high": 10,
    "list": [0, 1, 2],
    "list weird": [4, 1, 2, 3, 3, 1, 0],
    "list high": [11, 0, 9, 9, 2],
    "str": "0e + 1o",
    "str multiplicities": "1x0e + 4x1o + 3x2e",
    "irreps": o3.Irreps("2x0e + 1o + 9o + 2e"),
    "pseudovector": "0e + 1e + 2e + 3e",  # odd l with even parity: e3nn infers 1e input
}


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("name", list(L_ARGS))
def test_functional_and_module_argument_forms(name, normalization, backend):
    l_arg = L_ARGS[name]
    v = torch.randn(2, 1, 2, 3, dtype=F64)
    for normalize in (True, False):
        expected = e3nn_sh(l_arg, v, normalize, normalization)
        assert_close(fnn.spherical_harmonics(l_arg, v, normalize, normalization), expected)
        ours, theirs = (
            cls(l_arg, normalize, normalization) for cls in (fnn.SphericalHarmonics, E3nnSH)
        )
        assert ours.irreps_in == theirs.irreps_in and ours.irreps_out == theirs.irreps_out
        assert_close(ours(v), expected)


def test_one_vector_without_batch():
    v = torch.randn(3, dtype=F64)
    for l_arg in (0, 5, 10):
        out = fnn.spherical_harmonics(l_arg, v, True, "norm")
        assert out.shape == (2 * l_arg + 1,)
        assert_close(out, e3nn_sh(l_arg, v, True, "norm"))


SPEC = (ValueError, AssertionError)  # fastcg's InvalidSpecification is both, as e3nn needs
BAD = {
    "odd l even parity": (lambda: fnn.SphericalHarmonics("0e + 1e", True, irreps_in="1o"),
                          SPEC, "parity"),
    "irreps_in not a vector": (lambda: fnn.SphericalHarmonics("0e", True, irreps_in="1e + 3o"),
                               SPEC, "irreps_in"),
    "irreps_out unparsable": (lambda: fnn.SphericalHarmonics("1x1q", True), SPEC, "irreps_out"),
    "normalization": (lambda: fnn.spherical_harmonics(2, torch.randn(2, 3), True, "unit"), SPEC,
                      "normalization"),
    "module normalization": (lambda: fnn.SphericalHarmonics(2, True, "unit"), SPEC,
                             "normalization"),
    "empty": (lambda: fnn.SphericalHarmonics([], True), SPEC, "empty"),
    "negative l": (lambda: fnn.spherical_harmonics([2, -1], torch.randn(2, 3), True), SPEC,
                   "l must be >= 0"),
    "vectors": (lambda: fnn.spherical_harmonics(10, torch.randn(2, 4), True), (ValueError,),
                "vectors"),
    "vectors integer": (lambda: fastcg.spherical_harmonics(torch.ones(2, 3, dtype=torch.long), 9),
                        (TypeError,), "vectors"),
    "lmax": (lambda: fastcg.spherical_harmonics(torch.randn(2, 3), -1), (ValueError,), "lmax"),
    "lmax not an int": (lambda: fastcg.spherical_harmonics(torch.randn(2, 3), 9.0), (TypeError,),
                        "lmax"),
}  # fmt: skip


@pytest.mark.parametrize("bad", list(BAD))
def test_bad_arguments(bad):
    """e3nn's exception classes; an invalid specification is both ValueError and AssertionError
    (e3nn raises the one or asserts, depending on the check)."""
    make, errors, match = BAD[bad]
    with pytest.raises(errors[0], match=match) as info:
        make()
    assert all(isinstance(info.value, e) for e in errors)


# ------------------------------------------------------------------------- l > 8: the fallback


def test_high_l_warns_once(monkeypatch):
    monkeypatch.setattr(sh_ops, "_warned", [False])
    v = vectors()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fastcg.spherical_harmonics(v, 9)
        fnn.spherical_harmonics(10, v, True)
        fnn.SphericalHarmonics(11, True)
        fastcg.spherical_harmonics(v, 8)
    assert [str(w.message) for w in caught if "l > 8" in str(w.message)] == [
        "fastcg: spherical harmonics of l > 8 (here lmax=9) run a PyTorch recursion after the "
        "l <= 8 kernels: correct, but slower"
    ]


def test_module_scripts_above_l8():
    """The module carries its recursion tables, so TorchScript runs l > 8 too."""
    module = fnn.SphericalHarmonics([0, 10, 9], True, "norm")
    scripted = torch.jit.script(module)
    v = vectors()
    expected = e3nn_sh([0, 10, 9], v, True, "norm")
    assert_close(scripted(v), expected)
    assert_close(module.double()(v), expected)  # buffers follow .double() / .to()
    assert module.state_dict() == {}  # e3nn's module has no state either


def test_scripted_function_refuses_high_l_clearly():
    fn = torch.jit.script(sh_ops.spherical_harmonics)
    v = vectors()
    assert_close(fn(v, 3, True, "integral"), e3nn_sh([0, 1, 2, 3], v, True, "integral"))
    with pytest.raises(torch.jit.Error, match="SphericalHarmonics"):
        fn(v, 9, True, "integral")


def test_recursion_tables_are_e3nns_recursion():
    """The tables reproduce e3nn's l + 1 from its l at l = 11 (the last e3nn defines)."""
    index, coeff, offsets = sh_ops.recursion_tables(12)
    v = vectors()
    y = e3nn_sh(list(range(12)), v, False, "component")
    a, b = offsets[10], offsets[11]
    step = torch.zeros(v.shape[0], 23, dtype=F64).index_add(
        1, index[a:b, 2], y[:, 100:121][:, index[a:b, 0]] * v[:, index[a:b, 1]] * coeff[a:b]
    )
    assert_close(step, y[:, 121:144])


def test_compile_above_l8():
    """One graph (fullgraph) for l > 8: the recursion's terms are constants to torch.compile."""
    v = vectors(5).requires_grad_()
    fn = torch.compile(
        lambda x: fastcg.spherical_harmonics(x, 10, True, "norm"), fullgraph=True, dynamic=False
    )
    out = fn(v)
    expected = e3nn_sh(list(range(11)), v, True, "norm")
    assert_close(out, expected)
    g = torch.randn_like(expected)
    assert_close(torch.autograd.grad(out, v, g)[0], torch.autograd.grad(expected, v, g)[0])


def test_import_does_not_load_dynamo():
    """``import fastcg`` (and the calculator) stays light: torch._dynamo pulls in sympy, 0.16 GB
    resident in every process that runs a deployed model."""
    code = (
        "import sys, fastcg, fastcg.calculator; "
        "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
