"""fastcg.nn.TensorProduct as a twin of e3nn 0.6's o3.TensorProduct: every connection mode,
right(), normalisations, weight layouts and views, empty irreps, and e3nn's construction errors.

Everything is compared with e3nn itself in float64 (values, and gradients through
torch.autograd.grad).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import assert_close, default_dtype, o3

import fastcg
import fastcg.nn as fnn
from fastcg.descriptors import InvalidSpecification, tensor_product_descriptor

F64 = torch.float64
ALL_MODES = ("uvw", "uvu", "uvv", "uuw", "uuu", "uvuv", "uvu<v", "u<vw")


def _mode_case(mode: str, weighted: bool) -> tuple[str, str, str, list[tuple]]:
    """Irreps and instructions exercising ``mode`` over several (l1, l2, l_out) paths, two
    paths into one output block, a user path weight and a second block of x1."""
    m1, m2 = {"uuw": (3, 3), "uuu": (3, 3), "uvu<v": (4, 4), "u<vw": (4, 4)}.get(mode, (3, 2))
    mo = {"uvu": m1, "uvv": m2, "uuu": m1, "uvuv": m1 * m2, "uvu<v": m1 * (m1 - 1) // 2}
    mo = mo.get(mode, 1 if (mode == "uuw" and not weighted) else 2)
    ir1, ir2 = f"{m1}x0e+{m1}x1o", f"{m2}x1o+{m2}x2e"
    iro = f"{mo}x1o+{mo}x0e+{mo}x1e+{mo}x2e"
    ins = [
        (0, 0, 0, mode, weighted),  # 0e x 1o -> 1o
        (1, 0, 1, mode, weighted, 0.7),  # 1o x 1o -> 0e
        (1, 0, 2, mode, weighted),  # 1o x 1o -> 1e
        (1, 1, 0, mode, weighted),  # 1o x 2e -> 1o (second path into block 0)
        (0, 1, 3, mode, weighted),  # 0e x 2e -> 2e
        (1, 0, 3, mode, weighted),  # 1o x 1o -> 2e
    ]
    return ir1, ir2, iro, ins


MODE_CASES = [(m, w) for m in ALL_MODES for w in (True, False) if (m, w) not in
              {("uvw", False), ("u<vw", False)}]  # fmt: skip


def _pair(args, kwargs):
    """The e3nn module and its fastcg twin (same weights) for the same arguments."""
    with default_dtype(F64):  # e3nn's Wigner 3j constants in float64, not rounded float32
        ref = o3.TensorProduct(*args, **kwargs)
        ours = fnn.TensorProduct(*args, **kwargs)
    if ref.internal_weights and ref.weight_numel:
        with torch.no_grad():
            ours.weight.copy_(ref.weight)
    return ref, ours


def _grads(out, inputs, cot):
    present = [t for t in inputs if t is not None and t.requires_grad]
    return torch.autograd.grad(out, present, cot, allow_unused=True)


def _assert_same_values_and_grads(ref, ours, x1, x2, w):
    want, got = ref(x1, x2, w), ours(x1, x2, w)
    assert_close(got, want)
    cot = torch.randn_like(want)
    for g, e in zip(_grads(got, (x1, x2, w), cot), _grads(want, (x1, x2, w), cot)):
        assert_close(g, torch.zeros_like(g) if e is None else e)


# unweighted products once: shared and per-sample weights are then the same product
MODE_RUNS = [(m, w, sh) for m, w in MODE_CASES for sh in ((True, False) if w else (True,))]


@pytest.mark.parametrize(
    ("mode", "weighted", "shared"), MODE_RUNS,
    ids=[f"{m}-{'weighted' if w else 'unweighted'}-{'shared' if sh else 'per_sample'}"
         for m, w, sh in MODE_RUNS],
)  # fmt: skip
def test_mode_matches_e3nn(mode, weighted, shared):
    ir1, ir2, iro, ins = _mode_case(mode, weighted)
    kwargs = {"in1_var": [1.0, 2.0], "out_var": [1.0, 0.5, 1.0, 3.0]}
    ref, ours = _pair((ir1, ir2, iro, ins), {**kwargs, "shared_weights": shared})
    assert ours.weight_numel == ref.weight_numel
    assert [i.path_shape for i in ours.instructions] == [i.path_shape for i in ref.instructions]
    for a, b in zip(ours.instructions, ref.instructions):
        assert a.path_weight == pytest.approx(b.path_weight, rel=1e-12)
    assert torch.equal(ours.output_mask, ref.output_mask)
    x1 = torch.randn(5, ref.irreps_in1.dim, dtype=F64, requires_grad=True)
    x2 = torch.randn(5, ref.irreps_in2.dim, dtype=F64, requires_grad=True)
    w = None
    if ref.weight_numel and not ref.internal_weights:
        w = torch.randn(5, ref.weight_numel, dtype=F64, requires_grad=True)
    elif ref.weight_numel:
        w = torch.randn(ref.weight_numel, dtype=F64, requires_grad=True)
    _assert_same_values_and_grads(ref, ours, x1, x2, w)


MIXED_OUT = "9x1o+3x0o+2x1e+3x1o+2x0e"  # of "3x1o+3x0e" x "3x1e+1x0e"
MIXED = [(0, 0, 0, "uvuv", True), (0, 0, 1, "uvu<v", False, 2.0), (1, 0, 2, "u<vw", True),
         (0, 1, 3, "uvu", False), (1, 1, 4, "uvw", True), (0, 0, 3, "uvw", True)]  # fmt: skip


@pytest.mark.parametrize("irrep_normalization", ["component", "norm", "none"])
@pytest.mark.parametrize("path_normalization", ["element", "path", "none"])
def test_normalizations_match_e3nn(irrep_normalization, path_normalization):
    args = ("3x1o+3x0e", "3x1e+1x0e", MIXED_OUT, MIXED)
    kwargs = {
        "irrep_normalization": irrep_normalization,
        "path_normalization": path_normalization,
        "in2_var": torch.tensor([2.0, 0.5]),
    }
    ref, ours = _pair(args, kwargs)
    x1 = torch.randn(4, ref.irreps_in1.dim, dtype=F64)
    x2 = torch.randn(4, ref.irreps_in2.dim, dtype=F64)
    assert_close(ours(x1, x2), ref(x1, x2))


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_sample"])
@pytest.mark.parametrize("mode", ["uvw", "uvu", "uvv", "uuw", "uuu", "uvuv"])
def test_right_matches_e3nn(mode, shared):
    """right(y, w) equals e3nn's, values and gradients, with broadcast batch dims."""
    ir1, ir2, iro, ins = _mode_case(mode, True)
    ref, ours = _pair((ir1, ir2, iro, ins), {"shared_weights": shared, "compile_right": True})
    y = torch.randn(2, 1, ref.irreps_in2.dim, dtype=F64, requires_grad=True)
    w_shape = (ref.weight_numel,) if shared else (3, ref.weight_numel)
    w = torch.randn(*w_shape, dtype=F64, requires_grad=True)
    want, got = ref.right(y, w), ours.right(y, w)
    assert got.shape == (2, 1 if shared else 3, ref.irreps_in1.dim, ref.irreps_out.dim)
    assert_close(got, want)
    cot = torch.randn_like(want)
    for g, e in zip(_grads(got, (y, w), cot), _grads(want, (y, w), cot)):
        assert_close(g, e)


@pytest.mark.parametrize("mode", ["uvu<v", "u<vw"])
def test_right_of_triangle_modes(mode):
    """e3nn has no right() for uvu<v and u<vw; fastcg's is forward's operator."""
    ir1, ir2, iro, ins = _mode_case(mode, True)
    tp = fnn.TensorProduct(ir1, ir2, iro, ins).to(F64)
    x1 = torch.randn(6, tp.irreps_in1.dim, dtype=F64)
    x2 = torch.randn(6, tp.irreps_in2.dim, dtype=F64)
    assert_close(torch.einsum("zi,zik->zk", x1, tp.right(x2)), tp(x1, x2))


def test_torchscript_forward_and_right():
    """e3nn's tests script the module and call .right on it."""
    ref, ours = _pair(("3x0e+3x1o", "2x1o+2x2e", "6x1o+6x0e", [(0, 0, 0, "uvuv", True),
                      (1, 0, 1, "uvuv", False)]), {"compile_right": True})  # fmt: skip
    scripted = torch.jit.script(ours)
    x1, x2 = torch.randn(3, 12, dtype=F64), torch.randn(3, 16, dtype=F64)
    assert_close(scripted(x1, x2), ref(x1, x2))
    assert_close(scripted.right(x2), ref.right(x2))
    with pytest.raises(torch.jit.Error):
        scripted(x1[:, :-1], x2)


@pytest.mark.parametrize("weights", ["internal", "shared_external", "per_sample"])
def test_weight_views_match_e3nn(weights):
    """weight_view_for_instruction / weight_views give e3nn's views, and writing through them
    changes the product as in e3nn; weights as a list of per-instruction tensors work too."""
    ir1, ir2, iro = "4x0e+4x1o", "4x1o+4x2e", "6x1o+2x0e"
    # the unweighted instruction last: e3nn's weight_view_for_instruction counts the weight
    # shapes of unweighted instructions before the one asked for (fastcg's does not)
    ins = [(0, 0, 0, "uvu<v", True), (1, 0, 1, "u<vw", True), (0, 0, 0, "uvu<v", True, 0.5),
           (1, 1, 0, "uvu<v", False)]  # fmt: skip
    kwargs = {"internal": {}, "shared_external": {"internal_weights": False},
              "per_sample": {"shared_weights": False}}[weights]  # fmt: skip
    ref, ours = _pair((ir1, ir2, iro, ins), kwargs)
    w = None
    if weights != "internal":
        w = torch.randn(*(() if weights == "shared_external" else (4,)), ref.weight_numel,
                        dtype=F64)  # fmt: skip
    for i, ins_i in enumerate(ref.instructions):
        if ins_i.has_weight:
            assert torch.equal(ours.weight_view_for_instruction(i, w),
                               ref.weight_view_for_instruction(i, w))  # fmt: skip
        else:
            with pytest.raises(ValueError):
                ours.weight_view_for_instruction(i, w)
    views = list(ours.weight_views(w, yield_instruction=True))
    assert [v[0] for v in views] == [v[0] for v in ref.weight_views(w, yield_instruction=True)]
    x1 = torch.randn(4, ref.irreps_in1.dim, dtype=F64)
    x2 = torch.randn(4, ref.irreps_in2.dim, dtype=F64)
    as_list = [v.clone() for v in ours.weight_views(w)]
    assert_close(ours(x1, x2, as_list if w is not None else None), ref(x1, x2, w))
    with torch.no_grad():
        next(iter(ours.weight_views(w))).zero_()
        next(iter(ref.weight_views(w))).zero_()
    assert_close(ours(x1, x2, w), ref(x1, x2, w))


def test_empty_irreps_and_batches_match_e3nn():
    """e3nn's test_empty / test_empty_irreps / test_empty_inputs, compared with e3nn."""
    ref, ours = _pair(("0x0e + 1o + 2e", "0e + 1o + 2e", "0x0e + 1o",
                       [(0, 0, 0, "uvw", True), (1, 1, 0, "uvw", True)]), {})  # fmt: skip
    x1, x2 = torch.randn(4, 8, dtype=F64), torch.randn(4, 9, dtype=F64)
    assert torch.equal(ours(x1, x2), ref(x1, x2))
    assert torch.equal(ours.output_mask, ref.output_mask)
    assert ours.right(x2).shape == (4, 8, 3) and not ours.right(x2).any()

    ours = fnn.FullyConnectedTensorProduct("0e + 1e", o3.Irreps([]), "0e + 1e")
    assert ours(torch.randn(1, 2, 4), torch.randn(2, 1, 0)).shape == (2, 2, 4)
    assert ours.right(torch.randn(2, 1, 0)).shape == (2, 1, 4, 4)

    ref, ours = _pair(("0e + 1e", "0e + 1e", "0e + 1e", [(0, 0, 0, "uvw", True),
                      (1, 1, 1, "uvw", True)]), {"compile_right": True})  # fmt: skip
    x1, x2 = torch.randn(2, 1, 0, 1, 4, dtype=F64), torch.randn(1, 2, 0, 3, 4, dtype=F64)
    assert ours(x1, x2).shape == ref(x1, x2).shape == (2, 2, 0, 3, 4)
    assert ours.right(x2).shape == ref.right(x2).shape == (1, 2, 0, 3, 4, 4)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_zero_multiplicity_matches_e3nn(mode):
    """A block of multiplicity 0 in any position: no output from the path, its weights kept.

    The reference is e3nn with the (possibly) empty path last and unoptimised: e3nn's einsum
    optimiser fails on the weights of a skipped path, and after one e3nn adds each later path
    into the block of the one before (test_paths_after_an_empty_path_keep_their_blocks).
    """
    ins = [(0, 0, 0, mode, True), (1, 1, 1, mode, True), (0, 1, 2, "uvw", True)]
    last = [ins[1], ins[2], ins[0]]
    for muls in ((0, 2, 2), (2, 0, 2), (2, 2, 0)):
        m1, m2, mo = muls
        mo2 = {"uvuv": 4, "uvu<v": 1}.get(mode, 2)
        irreps = (f"{m1}x0e+2x1o", f"{m2}x0e+2x1o", f"{mo}x0e+{mo2}x0e+2x1o")
        if mode in ("uvu<v", "u<vw") and m2 == 0 and m1 > 0:
            with pytest.raises(InvalidSpecification):  # e3nn: a negative number of weights
                fnn.TensorProduct(*irreps, ins)
            continue
        with default_dtype(F64):
            ref = o3.TensorProduct(*irreps, last, _optimize_einsums=False)
        ours = fnn.TensorProduct(*irreps, ins).to(F64)
        ws = [torch.randn(i.path_shape, dtype=F64) for i in ours.instructions]
        x1 = torch.randn(3, ref.irreps_in1.dim, dtype=F64)
        x2 = torch.randn(3, ref.irreps_in2.dim, dtype=F64)
        assert ours.weight_numel == ref.weight_numel
        assert torch.equal(ours.output_mask, ref.output_mask)
        assert_close(ours(x1, x2, ws), ref(x1, x2, [ws[1], ws[2], ws[0]]))


INVALID = {  # e3nn rejects each at construction
    "uvw without weights": ("2x0o", "2x0o", "2x0e", [(0, 0, 0, "uvw", False)]),
    "u<vw without weights": ("3x0e", "3x0e", "2x0e", [(0, 0, 0, "u<vw", False)]),
    "unknown mode": ("2x0e", "2x0e", "2x0e", [(0, 0, 0, "uvx", True)]),
    "index out of range": ("2x0e", "2x0e", "2x0e", [(0, 1, 0, "uvw", True)]),
    "parity": ("1x1o", "1x1o", "1x0o", [(0, 0, 0, "uvw", True)]),
    "triangle": ("1x1o", "1x1o", "1x3e", [(0, 0, 0, "uvw", True)]),
    "uvu mul_out": ("2x0e", "3x0e", "3x0e", [(0, 0, 0, "uvu", True)]),
    "uvv mul_out": ("2x0e", "3x0e", "2x0e", [(0, 0, 0, "uvv", False)]),
    "uuu muls": ("2x0e", "3x0e", "2x0e", [(0, 0, 0, "uuu", True)]),
    "uuw unweighted mul_out": ("2x0e", "2x0e", "2x0e", [(0, 0, 0, "uuw", False)]),
    "uvuv mul_out": ("2x0e", "3x0e", "5x0e", [(0, 0, 0, "uvuv", True)]),
    "uvu<v muls": ("3x0e", "4x0e", "3x0e", [(0, 0, 0, "uvu<v", False)]),
    "uvu<v mul_out": ("4x0e", "4x0e", "5x0e", [(0, 0, 0, "uvu<v", True)]),
    "u<vw muls": ("3x0e", "4x0e", "3x0e", [(0, 0, 0, "u<vw", True)]),
    "short instruction": ("2x0e", "2x0e", "2x0e", [(0, 0, 0, "uvw")]),
    # e3nn 0.6's code generator indexes an empty list of outputs (IndexError)
    "all outputs empty": ("2x0e", "2x0e", "0x0e", [(0, 0, 0, "uvu", False)]),
}
INVALID_KWARGS = {
    "irrep_normalization": {"irrep_normalization": "unit"},
    "path_normalization": {"path_normalization": "sum"},
    "in1_var length": {"in1_var": [1.0, 2.0]},
    "out_var length": {"out_var": []},
    "internal but not shared": {"internal_weights": True, "shared_weights": False},
}


@pytest.mark.parametrize("name", [*INVALID, *INVALID_KWARGS])
def test_invalid_specification_raises_like_e3nn(name):
    args = INVALID.get(name, ("2x0e", "2x0e", "2x0e", [(0, 0, 0, "uvw", True)]))
    kwargs = INVALID_KWARGS.get(name, {})
    with pytest.raises(Exception):  # noqa: B017  (e3nn raises AssertionError, KeyError, ...)
        o3.TensorProduct(*args, **kwargs)
    for caught in (AssertionError, ValueError):
        with pytest.raises(caught) as info:
            fnn.TensorProduct(*args, **kwargs)
        assert isinstance(info.value, InvalidSpecification), repr(info.value)
    if not kwargs:  # the descriptor (every backend's entry) refuses it too
        with pytest.raises(InvalidSpecification):
            tensor_product_descriptor(*args)


def test_lookup_errors_keep_e3nn_exception_classes():
    with pytest.raises(KeyError):
        fnn.TensorProduct("2x0e", "2x0e", "2x0e", [(0, 0, 0, "uvx", True)])
    with pytest.raises(IndexError, match="irreps_out"):
        fnn.TensorProduct("2x0e", "2x0e", "2x0e", [(0, 0, 5, "uvw", True)])
    with pytest.raises(AssertionError):  # e3nn's ElementwiseTensorProduct asserts this
        fnn.ElementwiseTensorProduct("2x0e", "3x0e")


def test_paths_after_an_empty_path_keep_their_blocks():
    """After a path with an empty block whose weight shape has no 0, e3nn 0.6 adds each later
    path's output into the block of the path before it (here: zeros instead of x1 * x2);
    fastcg computes each path into its own block, as e3nn does with the empty path last."""
    ins = [(2, 0, 0, "uvu", False), (1, 0, 1, "uvu", False)]
    ref, ours = _pair(("2x1e+3x1o+3x2e", "2x1o", "0x3o+3x1e", ins), {})
    right, _ = _pair(("2x1e+3x1o+3x2e", "2x1o", "0x3o+3x1e", ins[::-1]), {})
    x1, x2 = torch.randn(2, 30, dtype=F64), torch.randn(2, 6, dtype=F64)
    assert not ref(x1, x2).any() and right(x1, x2).any()
    assert_close(ours(x1, x2), right(x1, x2))
    # an operand without components: e3nn's einsum optimiser fails, the product is zero
    ours = fnn.TensorProduct("1x0e", "0x0o", "3x0o", [(0, 0, 0, "uuw", False)])
    assert torch.equal(ours(torch.randn(2, 1), torch.randn(2, 0)), torch.zeros(2, 3))


def test_empty_paths_are_not_checked_like_e3nn():
    """e3nn generates no code for a path with a zero multiplicity, so it checks nothing about
    its mode: such specifications are valid in both."""
    for args in [("0x0o", "2x0o", "2x0e", [(0, 0, 0, "uvw", False)]),
                 ("2x0e", "2x0e", "0x0e+1x0e", [(0, 0, 0, "uvu", False)]),
                 ("2x0e", "2x0e", "0x0e+1x0e", [(0, 0, 0, "uvu", True)]),
                 ("5x0e", "1x0e", "3x0e", [(0, 0, 0, "uvu<v", False)])]:  # fmt: skip
        ref, ours = _pair(args, {})
        x1, x2 = torch.randn(2, ref.irreps_in1.dim, dtype=F64), torch.randn(2, ref.irreps_in2.dim)
        assert ours.weight_numel == ref.weight_numel
        assert torch.equal(ours(x1, x2.double()), ref(x1, x2.double()))


def test_attributes_like_e3nn():
    args = ("2x0e+1x1o", "1x1o", "2x1o+1x0e", [(0, 0, 0, "uvu", True), (1, 0, 1, "uvw", True)])
    for kw in ({}, {"_specialized_code": False, "_optimize_einsums": False},
               {"compile_left_right": True, "compile_right": True}):  # fmt: skip
        ref, ours = o3.TensorProduct(*args, **kw), fnn.TensorProduct(*args, **kw)
        for name in ("_specialized_code", "_optimize_einsums", "weight_numel", "shared_weights",
                     "internal_weights", "irreps_in1", "irreps_in2", "irreps_out"):  # fmt: skip
            assert getattr(ours, name) == getattr(ref, name), name
        assert repr(ours) == repr(ref)


_DIRECT = """
import torch, fastcg
from fastcg.descriptors import tensor_product_descriptor
d = tensor_product_descriptor("2x0o", "2x0o", "2x0e", [(0, 0, 0, "uvw", True)])
p, i, v = d.tensors()
p = p.clone()
p[0, 10] = -1  # the uvw row without a weight slice: used to dereference a null weight pointer
x = torch.randn(3, 2, dtype=torch.float64)
for w in (torch.randn(3, 4, dtype=torch.float64), x.new_empty(0)):
    try:
        torch.ops.fastcg.tensor_product(x, x, w, p, i, v, 2)
        print("no error")
    except RuntimeError as e:
        print("ok" if "needs weights" in str(e) else str(e))
"""


def test_unweighted_uvw_row_is_refused_by_the_kernel_check():
    """A hand-made table with a weightless uvw row passed to the op: an error, not a segfault
    (the path check the CPU kernels run missed this case)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_DIRECT)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, f"crashed (rc={proc.returncode}): {proc.stderr[-2000:]}"
    assert proc.stdout.split() == ["ok", "ok"], proc.stdout + proc.stderr[-2000:]


def test_convert_handles_every_mode():
    with default_dtype(F64):
        ref = o3.TensorProduct("3x1o+3x0e", "3x1e+1x0e", MIXED_OUT, MIXED)
    twin = fastcg.convert(torch.nn.Sequential(ref))[0]
    assert isinstance(twin, fnn.TensorProduct)
    x1, x2 = torch.randn(3, 12, dtype=F64), torch.randn(3, 10, dtype=F64)
    assert_close(twin(x1, x2), ref(x1, x2))
    with default_dtype(F64):
        full, square = o3.FullTensorProduct("2x1o", "1x0e+2x1e"), o3.TensorSquare("3x1o")
    twin = fastcg.convert(torch.nn.Sequential(full))[0]
    assert isinstance(twin, fnn.TensorProduct)  # uvuv paths, same forward(x, y)
    x1, x2 = torch.randn(3, 6, dtype=F64), torch.randn(3, 7, dtype=F64)
    assert_close(twin(x1, x2), full(x1, x2))
    # TensorSquare(x) has its own forward: stays e3nn
    assert type(fastcg.convert(square)) is type(square)


def test_new_modes_on_the_reference_backend():
    """The expanded uvuv / uvu<v / u<vw tables mean the same on the pure-PyTorch oracle."""
    ref, ours = _pair(("3x1o+3x0e", "3x1e+1x0e", MIXED_OUT, MIXED), {"shared_weights": False})
    x1 = torch.randn(4, ref.irreps_in1.dim, dtype=F64)
    x2 = torch.randn(4, ref.irreps_in2.dim, dtype=F64)
    w = torch.randn(4, ref.weight_numel, dtype=F64)
    with fastcg.use_backend("reference"):
        assert_close(ours(x1, x2, w), ref(x1, x2, w))


def test_new_modes_gradgradcheck():
    ins = [(0, 0, 0, "uvuv", True), (0, 0, 1, "uvu<v", False), (0, 0, 2, "u<vw", True),
           (0, 0, 1, "uvu<v", True)]  # fmt: skip
    tp = fnn.TensorProduct("3x1o", "3x1e", "9x1o+3x0o+2x1o", ins, shared_weights=False)
    x1, x2 = torch.randn(2, 9, dtype=F64), torch.randn(2, 9, dtype=F64)
    w = torch.randn(2, tp.weight_numel, dtype=F64)
    args = [t.requires_grad_() for t in (x1, x2, w)]
    assert torch.autograd.gradgradcheck(tp.double(), args)
