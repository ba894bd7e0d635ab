"""``fastcg.nn.Linear`` (and ``Gate``) against e3nn 0.6's API, in float64: every option e3nn has
(f_in / f_out, instructions, biases, normalisations, internal / shared / external weights, weight
views, empty irreps), state_dicts loaded strictly both ways, and invalid specifications raised at
construction as an exception that is both a ValueError and an AssertionError."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, o3

import fastcg.nn as fnn
from fastcg.descriptors import InvalidSpecification, linear_descriptor

F64 = torch.float64

# (irreps_in, irreps_out, kwargs): e3nn's constructor accepts each and its forward works.
CASES = {
    "default": ("4x0e+2x1o+1x0e", "3x0e+2x1o+1x2e", {}),
    "biases": ("2x0e+1e+2x0e+0o", "3x0e+1e+3x0e+5x0e+0o", {"biases": [1, 0, 0, 1, 0]}),
    "biases_true": ("0e+0o+1e+1o", "10x0e+0o+1e+1o", {"biases": True}),
    "instructions": ("4x0e+3x1o+2x0e", "2x1o+8x0e", {"instructions": [(0, 1), (1, 0)]}),
    "repeated": ("2x0e+3x1o", "3x0e+2x1o", {"instructions": [(0, 0), (0, 0), (1, 1), (0, 0)]}),
    "empty_list": ("2x0e+1x1o", "3x0e+2x1o", {"instructions": []}),
    "path": ("2x0e+3x1o+2x1o+1x0e", "3x0e+2x1o", {"path_normalization": "path"}),
    "zero_mul": ("0x0e+2x1o+3x0e", "3x0e+0x1o+2x1o", {"biases": True}),
    "no_path": ("1e+2e", "3e+5x2o", {}),
    "empty_out": ("2x0e+1o", "", {}),
    "zero_out": ("2x0e+1o", "0x1o", {}),
    "f": ("0e+1e+2e", "0e+2x1e+2e", {"f_in": 3, "f_out": 2, "biases": True}),
    "f_path": ("2x0e+1e", "0e+2x1e", {"f_in": 2, "f_out": 3, "path_normalization": "path"}),
    "f_noopt": ("0e+1e", "0e+1e", {"f_in": 2, "f_out": 1, "_optimize_einsums": False}),
}
# weights: internal (module's), external shared ([n]) or per-sample ([batch, n])
WEIGHTS = {
    "internal": {},
    "shared": {"internal_weights": False},
    "per_sample": {"shared_weights": False},
}


def _pair(irreps_in, irreps_out, kwargs):
    """An e3nn Linear with random biases and a fastcg twin with e3nn's state_dict (strict)."""
    ref = o3.Linear(irreps_in, irreps_out, **kwargs).to(F64)
    with torch.no_grad():
        ref.bias.normal_()  # e3nn initialises biases to zero
    lin = fnn.Linear(irreps_in, irreps_out, **kwargs).to(F64)
    assert list(lin.state_dict()) == list(ref.state_dict())
    lin.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(lin.state_dict(), strict=True)
    return ref, lin


def _check(ref, lin, x, w, b):
    """Same values and gradients (x, weight, bias) as e3nn."""
    want, got = ref(x, w, b), lin(x, w, b)
    assert_close(got, want)
    leaves = [t for t in (x, w, b, *ref.parameters()) if t is not None and t.requires_grad]
    ours = [t for t in (x, w, b, *lin.parameters()) if t is not None and t.requires_grad]
    if not want.requires_grad:  # e3nn's output does not depend on anything: ours is zeros
        assert not got.requires_grad or not torch.autograd.grad(got.sum(), ours)[0].any()
        return
    g = torch.randn_like(want)
    gw = torch.autograd.grad(want, leaves, g, allow_unused=True)
    gg = torch.autograd.grad(got, ours, g, allow_unused=True)
    for a, e in zip(gg, gw):
        if e is None:
            assert a is None or not a.any()
        else:
            assert_close(a, e)


def _skip_e3nn_bug(name: str, weights: str) -> None:
    if name in ("f", "biases", "biases_true", "zero_mul") and weights == "per_sample":
        pytest.skip("e3nn's per-sample weights with biases fail in e3nn (see test_beyond_e3nn)")


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("name", CASES)
def test_matches_e3nn(name, weights):
    _skip_e3nn_bug(name, weights)
    irreps_in, irreps_out, kwargs = CASES[name]
    ref, lin = _pair(irreps_in, irreps_out, {**kwargs, **WEIGHTS[weights]})
    assert [tuple(i) for i in lin.instructions] == [tuple(i) for i in ref.instructions]
    assert (lin.weight_numel, lin.bias_numel) == (ref.weight_numel, ref.bias_numel)
    assert (lin.internal_weights, lin.shared_weights) == (ref.internal_weights, ref.shared_weights)
    assert lin.weight_index_slices == ref.weight_index_slices
    assert torch.equal(lin.output_mask, ref.output_mask)
    assert repr(lin) == repr(ref)
    f = (kwargs["f_in"], kwargs["f_out"]) if "f_in" in kwargs else ()
    batch = (3,)
    x = torch.randn(*batch, *f[:1], ref.irreps_in.dim, dtype=F64, requires_grad=True)
    w = b = None
    if weights != "internal":
        lead = batch if weights == "per_sample" else ()
        w = torch.randn(*lead, *f, ref.weight_numel, dtype=F64, requires_grad=True)
        b = torch.randn(*f[1:], ref.bias_numel, dtype=F64, requires_grad=True)
    _check(ref, lin, x, w, b)
    if weights == "internal":
        twin = fnn.Linear.from_e3nn(ref)
        assert_close(twin(x), ref(x))


def test_same_initial_weights_as_e3nn():
    for kwargs in ({}, {"f_in": 3, "f_out": 2}):
        torch.manual_seed(1)
        ref = o3.Linear("3x0e+2x1o", "2x0e+1x1o", biases=True, **kwargs)
        torch.manual_seed(1)
        lin = fnn.Linear("3x0e+2x1o", "2x0e+1x1o", biases=True, **kwargs)
        assert torch.equal(lin.weight, ref.weight) and torch.equal(lin.bias, ref.bias)


def test_per_sample_weights_broadcast():
    """Per-sample weights [..., n] broadcast with the input's batch dimensions."""
    ref, lin = _pair("2x0e+3x1o", "3x0e+2x1o", {"shared_weights": False})
    x = torch.randn(2, 3, ref.irreps_in.dim, dtype=F64)
    for w in (torch.randn(3, ref.weight_numel, dtype=F64), torch.randn(ref.weight_numel, dtype=F64),
              torch.randn(2, 1, ref.weight_numel, dtype=F64)):  # fmt: skip
        want = ref(x, w.expand(2, 3, -1))  # e3nn itself needs equal batch sizes
        assert_close(lin(x, w), want)
    ref, lin = _pair("2x0e+1e", "0e+2x1e", {"shared_weights": False, "f_in": 2, "f_out": 3})
    x = torch.randn(4, 2, ref.irreps_in.dim, dtype=F64)
    w = torch.randn(4, 2, 3, ref.weight_numel, dtype=F64)
    want = ref(x, w)
    assert_close(lin(x, w), want)
    assert_close(lin(x, w.reshape(4, -1)), want)  # e3nn also takes them flat
    assert_close(lin(x[:1], w[:1]), want[:1])


def test_beyond_e3nn():
    """Where e3nn's own forward fails, the evident result."""
    # a bias on an output block no weight reaches (e3nn: its construction fails)
    lin = fnn.Linear("1o", "0e+1o", biases=True).to(F64)
    with torch.no_grad():
        lin.bias.fill_(2.0)
    ref = o3.Linear("1o", "0e+1o").to(F64)
    ref.load_state_dict({**ref.state_dict(), "weight": lin.weight.detach()})
    x = torch.randn(5, 3, dtype=F64)
    assert_close(lin(x)[:, 1:], ref(x)[:, 1:])
    assert torch.equal(lin(x)[:, 0], torch.full((5,), 2.0, dtype=F64))
    # empty irreps_in with biases (e3nn: "cannot reshape tensor of 0 elements")
    for irreps_in in ("", "0x1o"):
        lin = fnn.Linear(irreps_in, "2x0e+1o", biases=True).to(F64)
        with torch.no_grad():
            lin.bias.copy_(torch.tensor([1.0, -1.0]))
        out = lin(torch.randn(3, 0, dtype=F64))
        assert torch.equal(out, torch.tensor([[1.0, -1.0, 0, 0, 0]] * 3, dtype=F64))
    # per-sample weights and biases
    ref = o3.Linear("2x0e+1o", "3x0e+1o", shared_weights=False).to(F64)
    lin = fnn.Linear("2x0e+1o", "3x0e+1o", shared_weights=False, biases=True)
    x = torch.randn(4, 5, dtype=F64)
    w, b = torch.randn(4, ref.weight_numel, dtype=F64), torch.randn(4, 3, dtype=F64)
    want = ref(x, w) + torch.nn.functional.pad(b, (0, 3))
    assert_close(lin(x, w, b), want)
    assert_close(lin(x, w, b[:1]), ref(x, w) + torch.nn.functional.pad(b[:1], (0, 3)))


@pytest.mark.parametrize(
    ("irreps_in", "irreps_out"),
    [("", "0e"), ("0x1o", "2x0e"), ("2x0e", ""), ("2x0e", "0x1o"), ("", ""), ("0x0e", "0x0e")],
)
def test_empty_irreps(irreps_in, irreps_out):
    lin = fnn.Linear(irreps_in, irreps_out).to(F64)
    dim_in, dim_out = o3.Irreps(irreps_in).dim, o3.Irreps(irreps_out).dim
    for batch in ((3,), (0,), (2, 3), ()):
        out = lin(torch.randn(*batch, dim_in, dtype=F64))
        assert out.shape == (*batch, dim_out) and not out.any()
    assert lin.weight_numel == 0 and all(v.numel() == 0 for v in lin.weight_views())


def test_batch_zero_and_scalar_batch():
    ref, lin = _pair("2x0e+3x1o", "3x0e+2x1o", {"biases": True})
    for shape in ((0,), (), (2, 0, 3)):
        x = torch.randn(*shape, ref.irreps_in.dim, dtype=F64)
        assert_close(lin(x), ref(x))


def test_weight_views():
    """e3nn's linear_test weight-view checks, shared and per-sample, compared with e3nn."""
    kwargs = {"instructions": [(0, 1), (1, 0)]}
    ref, lin = _pair("4x0e+3x1o+2x0e", "2x1o+8x0e", kwargs)
    for i in range(2):
        assert torch.equal(lin.weight_view_for_instruction(i), ref.weight_view_for_instruction(i))
    with torch.no_grad():
        lin.weight_view_for_instruction(1).fill_(0.0)
    assert not lin(torch.randn(3, ref.irreps_in.dim, dtype=F64))[:, :6].any()
    views = list(lin.weight_views(yield_instruction=True))
    assert [(i, tuple(ins)) for i, ins, _ in views] == [(i, tuple(x)) for i, x in
                                                        enumerate(ref.instructions)]  # fmt: skip
    for (_, _, a), b in zip(views, ref.weight_views()):
        assert a.shape == b.shape
    # per-sample weights
    _, lin = _pair("4x0e+3x1o+2x0e", "2x1o+8x0e", {**kwargs, "shared_weights": False})
    w = torch.randn(7, lin.weight_numel, dtype=F64)
    assert lin.weight_view_for_instruction(0, w).shape == (7, 4, 8)
    lin.weight_view_for_instruction(1, w).fill_(0.0)
    assert not lin(torch.randn(7, lin.irreps_in.dim, dtype=F64), w)[:, :6].any()
    with pytest.raises(AssertionError):
        lin.weight_view_for_instruction(0)
    # channels: views are [f_in, f_out, mul_in, mul_out]; biases are skipped (e3nn would fail)
    ref, lin = _pair("2x0e+1e", "0e+2x1e", {"f_in": 3, "f_out": 2, "biases": True})
    assert torch.equal(lin.weight_view_for_instruction(1), ref.weight_view_for_instruction(1))
    assert [v.shape for v in lin.weight_views()] == [(3, 2, 2, 1), (3, 2, 1, 2)]
    with pytest.raises(ValueError, match="bias"):
        lin.weight_view_for_instruction(2)


INVALID = [
    ("2x0e", "3x0e", {"path_normalization": "none"}),
    ("2x0e", "3x0e", {"path_normalization": "component"}),
    ("4x0e+3x4o", "1x2e+4x0e", {"instructions": [(0, 0)]}),  # 0e -> 2e
    ("2x0e", "3x0e", {"instructions": [(0, 0, 1)]}),
    ("2x0e", "3x0e", {"biases": [True, False]}),
    ("2x0e", "3x1o", {"biases": [True]}),
    ("2x0e", "3x0o", {"biases": [True]}),
    ("2x0e", "3x0e", {"internal_weights": True, "shared_weights": False}),
    ("2x0e", "3x0e", {"f_in": 3}),
]
INVALID_INDEX = [
    ("4x0e+3x4o", "1x2e+4x0e", {"instructions": [(4, 0)]}),
    ("4x0e+3x4o", "1x2e+4x0e", {"instructions": [(1, 2)]}),
    ("2x0e", "3x0e", {"instructions": [(0.0, 0)]}),
]


@pytest.mark.parametrize("case", INVALID + INVALID_INDEX)
def test_invalid_specification(case):
    """e3nn raises; fastcg raises InvalidSpecification, which either kind of caller catches."""
    irreps_in, irreps_out, kwargs = case
    with pytest.raises(Exception):  # noqa: B017  (e3nn's own type varies; ours is checked below)
        o3.Linear(irreps_in, irreps_out, **kwargs)
    for kind in (AssertionError, ValueError):
        try:
            fnn.Linear(irreps_in, irreps_out, **kwargs)
        except kind as e:
            assert isinstance(e, InvalidSpecification)
        else:
            raise AssertionError(f"{case} was accepted")
    if case in INVALID_INDEX[:2]:
        with pytest.raises(IndexError):  # what e3nn raises, and its linear_test checks
            fnn.Linear(irreps_in, irreps_out, **kwargs)
    if "internal_weights" not in kwargs:  # the descriptor checks the specification itself
        with pytest.raises(InvalidSpecification):
            linear_descriptor(irreps_in, irreps_out, kwargs.get("instructions"),
                              kwargs.get("path_normalization", "element"),
                              biases=kwargs.get("biases", False), f_in=kwargs.get("f_in"),
                              f_out=kwargs.get("f_out"))  # fmt: skip


def test_negative_index_refused():
    """e3nn reads (-2, 0) as a Python index and (-1, 0) as a bias: both refused here."""
    for ins in ([(-1, 0)], [(-2, 0)]):
        with pytest.raises(IndexError, match="not a valid index"):
            fnn.Linear("2x0e+1x1o", "3x0e", instructions=ins)


def test_bad_inputs_named():
    lin = fnn.Linear("2x0e+1o", "3x0e", f_in=2, f_out=3, internal_weights=False, biases=True)
    x = torch.randn(4, 2, 5)
    with pytest.raises(ValueError, match="features"):
        lin(torch.randn(4, 3, 5), torch.randn(2, 3, 2 * 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="weight"):
        lin(x, torch.randn(2, 3, 5), torch.randn(3, 3))
    with pytest.raises(ValueError, match="bias"):
        lin(x, torch.randn(2, 3, 6), torch.randn(3, 2))
    with pytest.raises(RuntimeError, match="Weights must be provided"):
        lin(x)


def test_torchscript():
    """e3nn's tests script the module: same numbers scripted, channels and biases included."""
    for irreps_in, irreps_out, kwargs in (CASES["biases"], CASES["f"], CASES["empty_out"]):
        ref, lin = _pair(irreps_in, irreps_out, kwargs)
        f = (kwargs["f_in"],) if "f_in" in kwargs else ()
        x = torch.randn(3, *f, ref.irreps_in.dim, dtype=F64)
        assert_close(torch.jit.script(lin)(x), ref(x))
    _, lin = _pair("2x0e+1o", "3x0e+1o", {"shared_weights": False})
    x, w = torch.randn(3, 5, dtype=F64), torch.randn(3, lin.weight_numel, dtype=F64)
    assert_close(torch.jit.script(lin)(x, w), lin(x, w))


def test_channels_double_backward():
    lin = fnn.Linear("1x0e+1x1o", "1x0e+1x1o", f_in=2, f_out=2, biases=True).to(F64)
    x = torch.randn(2, 2, 4, dtype=F64, requires_grad=True)
    w = lin.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x, w: lin(x, w), (x, w))


# ---------------------------------------------------------------- Gate


GATES = [
    ("16x0o", [torch.tanh], "32x0o", [torch.tanh], "16x1e+16x1o"),
    ("", [], "2x0e", [torch.sigmoid], "1x1o+1x1o"),  # irreps_gated as given, not simplified
    ("2x0e+0x0o", [torch.tanh, torch.tanh], "1x0e", [torch.sigmoid], "1x2e"),
    ("4x0e", [torch.relu], "", [], ""),
]


@pytest.mark.parametrize("case", range(len(GATES)))
def test_gate_matches_e3nn(case):
    from e3nn import nn as enn

    ref, gate = enn.Gate(*GATES[case]), fnn.Gate(*GATES[case])
    assert (repr(gate.irreps_in), repr(gate.irreps_out)) == (
        repr(ref.irreps_in), repr(ref.irreps_out))  # fmt: skip
    x = ref.irreps_in.randn(5, -1).to(F64).requires_grad_()
    want, got = ref(x), gate(x)
    assert_close(got, want)
    g = torch.randn_like(want)
    assert_close(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0])
    assert_close(fnn.Gate.from_e3nn(ref)(x), want)


def test_gate_empty_gates():
    """Gates and gated blocks of multiplicity 0 (e3nn: max() of an empty sequence)."""
    from e3nn import nn as enn

    gate = fnn.Gate("4x0e", [torch.relu], "0x0e", [torch.sigmoid], "0x1o")
    x = torch.randn(3, 4)
    want = enn.Activation("4x0e", [torch.relu])(x)
    assert str(gate.irreps_out) == "4x0e" and torch.equal(gate(x), want)
    gate = fnn.Gate("0x0e", [torch.relu], "0x0e+1x0o", [torch.sigmoid, torch.tanh], "0x1o+1x2e")
    x = torch.randn(3, 6)
    want = x[:, 1:] * torch.tanh(x[:, :1]) * gate.act_gates.acts[1].cst
    assert gate.irreps_out.dim == 5 and torch.allclose(gate(x), want)
    for bad in (("4x0e", [torch.relu], "1x1o", [torch.sigmoid], "1x1o"),
                ("4x0e", [torch.relu], "1x0e", [torch.sigmoid], "2x1o")):  # fmt: skip
        with pytest.raises(ValueError):
            enn.Gate(*bad)
        with pytest.raises(AssertionError, match="irreps_gate"):
            fnn.Gate(*bad)
