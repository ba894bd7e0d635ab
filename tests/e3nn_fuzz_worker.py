"""Seeded fuzz of fastcg.nn's e3nn twins against e3nn itself (driven by test_e3nn_fuzz.py).

    python tests/e3nn_fuzz_worker.py --seed S --cases N        # cases 0..N-1 of seed S
    python tests/e3nn_fuzz_worker.py --seed S --only K -v      # replay one case, full details

Each case draws a random specification from its own RNG (seeded by ``seed`` and the case index,
so ``--only K`` replays case K exactly): irreps (empty ones and zero multiplicities included) and
instructions of ``TensorProduct`` (every e3nn connection mode, weighted or not, path weights,
variances, normalisations, internal / shared / external weights, ``right()``), of
``FullyConnectedTensorProduct``, ``ElementwiseTensorProduct`` and ``Linear`` (instructions,
biases, ``f_in`` / ``f_out``), and spherical harmonics (module and function). About a fifth of
the specifications are mutated to be invalid. Then:

* fastcg must raise iff e3nn raises at construction (any e3nn exception counts; fastcg's must be
  ``fastcg.descriptors.InvalidSpecification``, both ValueError and AssertionError);
* otherwise attributes (weight_numel, path weights, output_mask), outputs, gradients with
  respect to every input and weight (``torch.autograd.grad`` of a random cotangent) and, for some
  cases, second derivatives must equal e3nn's in float64 to 1e-10 relative to scale;
* a module fastcg accepts and e3nn rejects is still run forward and backward: it must not crash.

Where e3nn itself misbehaves the oracle is chosen, not hidden:

* e3nn is built with ``_optimize_einsums=False``: its einsum optimiser traces the module on an
  example batch of 4, so bugs of e3nn's forward (a Linear whose bias-only output does not
  broadcast, zero-size per-sample weights) would turn into construction errors;
* a module e3nn builds with negative path shapes (``u<vw`` / ``uvu<v`` with mul2 = 0 < mul1, a
  negative weight_numel) counts as rejected;
* when e3nn's forward (or ``right()``) raises on a specification it accepted, the case is rerun
  on a batch of one (where those bugs do not bite) or reported as skipped, never as agreement.

Output, one JSON object per line, flushed: ``{"start": K, "call": ...}`` before case K runs (so a
crash names its case), one result line after it, and a final ``{"summary": ...}``. Exit status 0:
no disagreement; 1: disagreements; anything else is a crash.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

import fastcg.nn as fnn
from fastcg.irreps import o3 as _import_o3
from fastcg.testing import TOLERANCE

o3 = _import_o3()
RTOL = TOLERANCE[torch.float64]  # errors are judged relative to max(1, max |e3nn value|)
MODES = ("uvw", "uvu", "uvv", "uuw", "uuu", "uvuv", "uvu<v", "u<vw")
KINDS = {"tp": 0.55, "fctp": 0.06, "etp": 0.06, "linear": 0.2, "sh": 0.13}
BAD_MODES = ("uvx", "UVW", "", "uv", "u<vv")
COMPARED = [0]  # numbers compared so far: the summary shows that the comparisons are not vacuous


class Disagreement(Exception):
    """fastcg differs from e3nn; ``category`` groups findings, ``detail`` explains this one."""

    def __init__(self, category: str, detail: str = "") -> None:
        super().__init__(f"{category}: {detail}")
        self.category, self.detail = category, detail


class E3nnFails(Exception):
    """e3nn's own forward raises on a specification it accepted: a skipped case."""


@dataclass
class Case:
    """One drawn specification: constructor name, arguments, and what to feed the module."""

    kind: str
    ctor: str  # e3nn / fastcg class (or function) name
    args: list
    kwargs: dict
    tags: list[str] = field(default_factory=list)
    inputs: dict = field(default_factory=dict)  # how to call the module (batch, weight form, ...)

    def call(self) -> str:
        """A one-line constructor call that builds this case with either library."""
        parts = [_src(a) for a in self.args] + [f"{k}={_src(v)}" for k, v in self.kwargs.items()]
        return f"{self.ctor}({', '.join(parts)})"


class Var(str):
    """A placeholder argument (the input tensor) in a reproducer call."""

    def __repr__(self) -> str:
        return str(self)


def _src(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"torch.tensor({v.tolist()!r})"
    return repr(v)


# --------------------------------------------------------------------------------------------
# specifications


def irreps_str(blocks: list[tuple[int, int, int]]) -> str:
    """``[(mul, l, p)]`` as an e3nn string; ``""`` is the empty irreps."""
    return "+".join(f"{m}x{l}{'e' if p == 1 else 'o'}" for m, l, p in blocks)


def rand_mul(rng: random.Random) -> int:
    return 0 if rng.random() < 0.1 else rng.randint(1, 4)


def rand_block(rng: random.Random, lmax: int = 3) -> tuple[int, int, int]:
    return rand_mul(rng), min(rng.choice((0, 0, 1, 1, 2, 3)), lmax), rng.choice((1, -1))


def rand_blocks(rng: random.Random, nmin: int = 0, nmax: int = 3) -> list[tuple[int, int, int]]:
    n = 0 if nmin == 0 and rng.random() < 0.06 else rng.randint(max(nmin, 1), nmax)
    return [rand_block(rng) for _ in range(n)]


def rand_var(rng: random.Random, n: int) -> Any:
    if rng.random() < 0.7:
        return None
    var = [rng.choice((0.5, 1.0, 2.0, round(rng.uniform(0.1, 3.0), 3))) for _ in range(n)]
    if var and rng.random() < 0.1:
        var[rng.randrange(n)] = 0.0
    if rng.random() < 0.2:
        return torch.tensor(var, dtype=torch.float64)
    return var


def _mul_out(rng: random.Random, mode: str, m1: int, m2: int, has_weight: bool) -> int:
    return {
        "uvw": rng.randint(0, 4),
        "uvu": m1,
        "uvv": m2,
        "uuw": rng.randint(0, 4) if has_weight else 1,
        "uuu": m1,
        "uvuv": m1 * m2,
        "uvu<v": m1 * (m1 - 1) // 2,
        "u<vw": rng.randint(0, 4),
    }[mode]


def rand_instruction(rng: random.Random, in1: list, in2: list, out: list) -> tuple:
    """One instruction valid by construction (its output block is found or appended to out)."""
    mode = rng.choice(MODES)
    i1 = rng.randrange(len(in1))
    m1, l1, p1 = in1[i1]
    same = [j for j, b in enumerate(in2) if b[0] == m1]
    if mode in ("uuw", "uuu", "uvu<v", "u<vw") and rng.random() < 0.9:
        if not same:  # these modes need mul1 == mul2: give in2 such a block
            in2.append((m1, *rand_block(rng)[1:]))
            same = [len(in2) - 1]
        i2 = rng.choice(same)
    else:
        i2 = rng.randrange(len(in2))
    m2, l2, p2 = in2[i2]
    l3 = rng.randint(abs(l1 - l2), max(abs(l1 - l2), min(l1 + l2, 4)))
    has_weight = mode in ("uvw", "u<vw") or rng.random() < 0.6
    block = (_mul_out(rng, mode, m1, m2, has_weight), l3, p1 * p2)
    reuse = [j for j, b in enumerate(out) if b == block]
    if reuse and rng.random() < 0.7:
        io = rng.choice(reuse)
    else:
        out.append(block)
        io = len(out) - 1
    ins = (i1, i2, io, mode, has_weight)
    if rng.random() < 0.4:
        ins += (rng.choice((0.5, 2.0, 0.0, round(rng.uniform(0.1, 3.0), 3))),)
    return ins


def _new_out(out: list, block: tuple) -> int:
    out.append(block)
    return len(out) - 1


def mutate_tp(rng: random.Random, in1: list, in2: list, out: list, ins: list, kw: dict) -> str:
    """Make the specification (probably) invalid; returns the mutation's name."""
    what = rng.choice(
        (
            "index",
            "triangle",
            "parity",
            "mul",
            "mode",
            "weightless",
            "uuw_mul",
            "neg_path_weight",
            "var_len",
            "irrep_norm",
            "path_norm",
            "internal_unshared",
            "ins_len",
        )
    )
    if not ins and what not in ("var_len", "irrep_norm", "path_norm", "internal_unshared"):
        what = "irrep_norm"
    k = rng.randrange(len(ins)) if ins else 0
    i = list(ins[k]) if ins else []
    if what == "index":
        j = rng.randrange(3)
        i[j] = len((in1, in2, out)[j]) + rng.randint(0, 1)
    elif what in ("triangle", "parity", "mul"):
        m1, l1, p1 = in1[i[0]]
        m2, l2, p2 = in2[i[1]]
        m3, l3, p3 = out[i[2]]
        if what == "triangle":
            l3 = l1 + l2 + 1 if rng.random() < 0.5 or abs(l1 - l2) == 0 else abs(l1 - l2) - 1
        elif what == "parity":
            p3 = -p1 * p2
        else:
            m3 = m3 + rng.choice((-1, 1)) if m3 > 0 else 1
        i[2] = _new_out(out, (m3, l3, p3))
    elif what == "mode":
        i[3] = rng.choice(BAD_MODES)
    elif what == "weightless":
        i[3], i[4] = rng.choice(("uvw", "u<vw")), False
    elif what == "uuw_mul":
        m1, l1, p1 = in1[i[0]]
        m2, l2, p2 = in2[i[1]]
        i[3], i[4] = "uuw", False
        i[2] = _new_out(out, (rng.choice((0, 2, 3)), out[i[2]][1], p1 * p2))
    elif what == "neg_path_weight":
        i = i[:5] + [-rng.choice((0.5, 1.0, 2.0))]
    elif what == "var_len":
        name = rng.choice(("in1_var", "in2_var", "out_var"))
        n = len({"in1_var": in1, "in2_var": in2, "out_var": out}[name])
        kw[name] = [1.0] * (n + rng.choice((-1, 1)) if n > 0 else 1)
    elif what == "irrep_norm":
        kw["irrep_normalization"] = rng.choice(("integral", "bad", "Component"))
    elif what == "path_norm":
        kw["path_normalization"] = rng.choice(("bad", "elements", "Path"))
    elif what == "internal_unshared":
        kw["internal_weights"], kw["shared_weights"] = True, False
    elif what == "ins_len":
        i = i[:4] if rng.random() < 0.5 else i[:5] + [1.0, 1.0]
    if ins:
        ins[k] = tuple(i)
    return what


def gen_batch(rng: random.Random) -> list[int]:
    return list(rng.choices(((2,), (3,), (1,), (2, 2), (0,)), (0.35, 0.3, 0.1, 0.15, 0.1))[0])


def tp_inputs(rng: random.Random, kwargs: dict) -> dict:
    """How to call a tensor product: batch shape, broadcasting, weight form, double backward."""
    batch = gen_batch(rng)
    inp = {"batch": batch, "double": rng.random() < 0.3}
    if batch and rng.random() < 0.15:
        inp["broadcast"] = rng.choice(("x1", "x2"))
    inp["explicit_weight"] = rng.random() < 0.15  # even when the module has internal weights
    inp["weight_list"] = len(batch) <= 1 and rng.random() < 0.1
    inp["right"] = bool(kwargs.get("compile_right"))
    return inp


TP_OPTIONS = (
    ("irrep_normalization", (None, "component", "norm", "none")),
    ("path_normalization", (None, "element", "path", "none")),
    ("internal_weights", (None, None, True, False)),
    ("shared_weights", (None, None, True, False)),
)


def draw_tp_options(rng: random.Random, kw: dict) -> None:
    """Draw the normalisation and weight options of a tensor-product case (None: default)."""
    for name, values in TP_OPTIONS:
        value = rng.choice(values)
        if value is not None:
            kw[name] = value


def gen_tp(rng: random.Random, negative_indices: bool = False) -> Case:
    in1, in2 = rand_blocks(rng), rand_blocks(rng)
    out: list = []
    ins: list = []
    if in1 and in2:
        for _ in range(rng.choice((0, 1, 1, 2, 2, 3, 4))):
            ins.append(rand_instruction(rng, in1, in2, out))
    if rng.random() < 0.3:
        out.append(rand_block(rng, lmax=4))
    if out and rng.random() < 0.15:  # an unused block first shifts every i_out
        out.insert(0, rand_block(rng, lmax=4))
        ins = [(i[0], i[1], i[2] + 1, *i[3:]) for i in ins]
    kw: dict = {}
    for name, blocks in (("in1_var", in1), ("in2_var", in2), ("out_var", out)):
        var = rand_var(rng, len(blocks))
        if var is not None:
            kw[name] = var
    draw_tp_options(rng, kw)
    if rng.random() < 0.05 and "irrep_normalization" not in kw:  # e3nn's deprecated spelling
        kw["normalization"] = rng.choice(("component", "norm"))
    if rng.random() < 0.2:
        kw["compile_right"] = True
    if rng.random() < 0.2:
        kw["_specialized_code"] = rng.random() < 0.5
    tags = sorted({i[3] for i in ins})
    if rng.random() < 0.2:
        tags.append("mutation:" + mutate_tp(rng, in1, in2, out, ins, kw))
    if negative_indices and ins and rng.random() < 0.2:
        k, j = rng.randrange(len(ins)), rng.randrange(3)
        i = list(ins[k])
        i[j] -= len((in1, in2, out)[j])
        ins[k] = tuple(i)
        tags.append("negative_index")
    args = [irreps_str(in1), irreps_str(in2), irreps_str(out), ins]
    case = Case("tp", "TensorProduct", args, kw, tags)
    case.inputs = tp_inputs(rng, kw)
    return case


def gen_fctp(rng: random.Random) -> Case:
    in1, in2, out = rand_blocks(rng), rand_blocks(rng), rand_blocks(rng)
    kw: dict = {}
    draw_tp_options(rng, kw)
    args = [irreps_str(in1), irreps_str(in2), irreps_str(out)]
    case = Case("fctp", "FullyConnectedTensorProduct", args, kw, [])
    case.inputs = tp_inputs(rng, kw)
    return case


def gen_etp(rng: random.Random) -> Case:
    in1 = rand_blocks(rng, nmin=1)
    n = sum(m for m, _, _ in in1)
    in2: list = []
    if rng.random() < 0.9:  # split the same number of irreps differently
        while n > 0:
            m = rng.randint(1, n)
            in2.append((m, *rand_block(rng)[1:]))
            n -= m
    else:
        in2 = rand_blocks(rng)
    kw: dict = {}
    if rng.random() < 0.4:
        kw["filter_ir_out"] = rng.sample(["0e", "0o", "1e", "1o", "2e", "2o", "3e"], 3)
    if rng.random() < 0.3:
        kw["irrep_normalization"] = rng.choice(("component", "norm", "none"))
    case = Case("etp", "ElementwiseTensorProduct", [irreps_str(in1), irreps_str(in2)], kw, [])
    case.inputs = tp_inputs(rng, kw)
    return case


def gen_linear(rng: random.Random) -> Case:
    ir_in = rand_blocks(rng)
    ir_out = [(rand_mul(rng), b[1], b[2]) for b in ir_in if rng.random() < 0.7]
    ir_out += [rand_block(rng) for _ in range(rng.randint(0, 2))]
    rng.shuffle(ir_out)
    kw: dict = {}
    tags: list[str] = []
    if rng.random() < 0.5 and ir_in and ir_out:
        ins = []
        for _ in range(rng.randint(0, 4)):
            i = rng.randrange(len(ir_in))
            match = [o for o, b in enumerate(ir_out) if b[1:] == ir_in[i][1:]]
            if match and rng.random() < 0.9:
                ins.append((i, rng.choice(match)))
            else:
                ins.append((i, rng.randrange(len(ir_out))))
        kw["instructions"] = ins
    r = rng.random()
    if r < 0.3:
        kw["biases"] = True
    elif r < 0.5:
        kw["biases"] = [b[1:] == (0, 1) and rng.random() < 0.7 for b in ir_out]
    for name, values in (
        ("path_normalization", (None, "element", "path")),
        ("internal_weights", (None, None, True, False)),
        ("shared_weights", (None, None, True, False)),
    ):
        value = rng.choice(values)
        if value is not None:
            kw[name] = value
    if rng.random() < 0.1:
        kw["f_in"], kw["f_out"] = rng.randint(1, 3), rng.randint(1, 3)
    if rng.random() < 0.15:
        tags.append("mutation:" + mutate_linear(rng, ir_in, ir_out, kw))
    case = Case("linear", "Linear", [irreps_str(ir_in), irreps_str(ir_out)], kw, tags)
    case.inputs = {
        "batch": gen_batch(rng),
        "double": rng.random() < 0.3,
        "explicit_weight": rng.random() < 0.15,
    }
    return case


def mutate_linear(rng: random.Random, ir_in: list, ir_out: list, kw: dict) -> str:
    what = rng.choice(
        ("index", "mismatch", "bias_len", "bias_nonscalar", "path_norm", "internal_unshared")
    )
    if what in ("index", "mismatch") and ir_in and ir_out:
        ins = list(kw.get("instructions") or [(0, 0)])
        if what == "index":
            ins.append((len(ir_in), 0) if rng.random() < 0.5 else (0, len(ir_out)))
        else:
            bad = [
                (i, o)
                for i in range(len(ir_in))
                for o in range(len(ir_out))
                if ir_in[i][1:] != ir_out[o][1:]
            ]
            ins.append(rng.choice(bad) if bad else (0, len(ir_out)))
        kw["instructions"] = ins
    elif what == "bias_len":
        kw["biases"] = [False] * (len(ir_out) + 1)
    elif what == "bias_nonscalar" and any(b[1:] != (0, 1) for b in ir_out):
        kw["biases"] = [b[1:] != (0, 1) for b in ir_out]
    elif what == "internal_unshared":
        kw["internal_weights"], kw["shared_weights"] = True, False
    else:
        kw["path_normalization"] = rng.choice(("none", "bad"))
        what = "path_norm"
    return what


def gen_sh(rng: random.Random, has_function: bool) -> Case:
    lmax = 12  # e3nn's limit
    r = rng.random()
    p_in = rng.choice((-1, 1))
    if r < 0.3:
        ls: Any = rng.choice((0, 1, 2, 3, 4, rng.randint(0, lmax)))
    elif r < 0.7:
        ls = [rng.choice((0, 1, 2, 3, rng.randint(0, lmax))) for _ in range(rng.randint(1, 4))]
        if rng.random() < 0.5:
            ls = list(range(max(ls) + 1))
    else:
        degs = [rng.choice((0, 1, 2, 3, rng.randint(0, lmax))) for _ in range(rng.randint(1, 3))]
        ls = "+".join(f"{rng.randint(1, 2)}x{d}{'e' if p_in**d == 1 else 'o'}" for d in degs)
    tags = []
    kw: dict = {}
    if rng.random() < 0.08:  # invalid: bad parity, negative l, bad normalization, bad input
        what = rng.choice(("parity", "negative_l", "normalization", "irreps_in"))
        tags.append("mutation:" + what)
        if what == "parity":
            ls = "1x1e+1x2o"
        elif what == "negative_l":
            ls = [1, -1]
        elif what == "normalization":
            kw["normalization"] = rng.choice(("bad", "Integral", "none"))
        else:
            kw["irreps_in"] = rng.choice(("2x1o", "1x0e", "1x2e"))
    if "normalization" not in kw and rng.random() < 0.8:
        kw["normalization"] = rng.choice(("integral", "component", "norm"))
    function = has_function and rng.random() < 0.5
    if function:  # e3nn.o3.spherical_harmonics(l, x, normalize, normalization)
        kw.pop("irreps_in", None)
        case = Case("sh", "spherical_harmonics", [ls, Var("x"), rng.random() < 0.7], kw, tags)
    else:
        if "irreps_in" not in kw and rng.random() < 0.3:
            kw["irreps_in"] = "1o" if p_in == -1 else "1e"
        case = Case("sh", "SphericalHarmonics", [ls, rng.random() < 0.7], kw, tags)
    batch = rng.choice(([4], [2, 3], [0], [], [5]))
    case.inputs = {
        "batch": batch,
        "zero_row": bool(batch) and batch[0] > 0 and rng.random() < 0.2,
        "nan_row": bool(batch) and batch[0] > 0 and rng.random() < 0.1,
        "scale": rng.choice((1.0, 1.0, 1.0, 1e-3, 10.0)),
        "double": rng.random() < 0.3,
    }
    return case


# --------------------------------------------------------------------------------------------
# comparison


def compare(name: str, actual: Any, expected: Any, perturb: bool = False) -> None:
    """Raise Disagreement unless ``actual`` equals ``expected`` to RTOL (NaN where e3nn's is)."""
    if expected is None or actual is None:
        if (expected is None) != (actual is None):
            e, a = expected, actual
            for t in (e, a):
                if t is not None and bool((t != 0).any()):
                    raise Disagreement(name, "one side has no gradient, the other a non-zero one")
        return
    if tuple(actual.shape) != tuple(expected.shape):
        raise Disagreement(f"{name} shape", f"{tuple(actual.shape)} != {tuple(expected.shape)}")
    a, e = actual.detach().double(), expected.detach().double()
    if perturb and a.numel():
        a = a + 1e-6 * (1 + a.abs())  # --perturb: the harness's own check that it can fail
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    if not torch.equal(nan_a, nan_e):
        raise Disagreement(
            f"{name} NaN", f"{int(nan_e.sum())} NaN in e3nn, {int(nan_a.sum())} here"
        )
    a, e = a[~nan_e], e[~nan_e]
    if not torch.equal(torch.isinf(a), torch.isinf(e)) or not torch.equal(
        a[torch.isinf(a)], e[torch.isinf(e)]
    ):
        raise Disagreement(f"{name} inf", "infinities differ")
    fin = torch.isfinite(e)
    a, e = a[fin], e[fin]
    if e.numel() == 0:
        return
    COMPARED[0] += e.numel()
    scale = max(1.0, float(e.abs().max()))
    err = float((a - e).abs().max())
    if not err <= RTOL * scale:
        raise Disagreement(name, f"max |fastcg - e3nn| = {err:.3g} (scale {scale:.3g})")


def build(ctor: Any, case: Case, **extra: Any) -> tuple[Any, BaseException | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ctor(*case.args, **case.kwargs, **extra), None
    except Exception as exc:  # any e3nn exception counts as a rejection
        return None, exc


def _exc(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def check_construction(e_mod: Any, e_exc: Any, f_mod: Any, f_exc: Any, prefix: str) -> bool:
    """Construction verdict; True when both built (so the modules can be compared)."""
    if e_exc is not None and f_exc is None:
        raise Disagreement(
            f"{prefix}: fastcg accepts what e3nn rejects ({type(e_exc).__name__})", _exc(e_exc)
        )
    if e_exc is None and f_exc is not None:
        raise Disagreement(
            f"{prefix}: fastcg rejects what e3nn accepts ({type(f_exc).__name__})", _exc(f_exc)
        )
    if f_exc is not None:
        if not isinstance(f_exc, invalid_specification()):
            raise Disagreement(
                f"{prefix}: rejected with {type(f_exc).__name__} (e3nn: {type(e_exc).__name__}),"
                " not InvalidSpecification",
                f"e3nn: {_exc(e_exc)} | fastcg: {_exc(f_exc)}",
            )
        return False
    return True


def invalid_specification() -> type:
    """fastcg's exception for invalid specifications (both ValueError and AssertionError)."""
    import importlib

    for name in ("fastcg.descriptors", "fastcg"):
        try:
            cls = getattr(importlib.import_module(name), "InvalidSpecification", None)
        except ImportError:
            continue
        if cls is not None:
            return cls
    raise Disagreement("fastcg has no InvalidSpecification exception")


def randn(shape: list[int], gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def grads(out: torch.Tensor, leaves: list[torch.Tensor], cot: torch.Tensor, create: bool) -> list:
    return list(torch.autograd.grad(out, leaves, cot, allow_unused=True, create_graph=create))


def compare_calls(
    run_e: Any,
    run_f: Any,
    leaves_e: list,
    leaves_f: list,
    names: list[str],
    gen: torch.Generator,
    double: bool,
    what: str,
    perturb: bool,
) -> None:
    """Forward, first and (optionally) second derivatives of two calls on the same inputs."""
    try:
        out_e = run_e()
    except Exception as exc:  # an e3nn bug: nothing to compare with
        _try(run_f)  # still run fastcg: it must not crash
        raise E3nnFails(_exc(exc)) from None
    try:
        out_f = run_f()
    except Exception as exc:
        raise Disagreement(f"{what} raises ({type(exc).__name__})", _exc(exc)) from None
    compare(f"{what} values", out_f, out_e, perturb)
    if not out_e.requires_grad:
        return
    cot = randn(list(out_e.shape), gen)
    g_e = grads(out_e, leaves_e, cot, double)
    try:
        g_f = grads(out_f, leaves_f, cot, double)
    except Exception as exc:
        raise Disagreement(f"{what} backward raises ({type(exc).__name__})", _exc(exc)) from None
    for n, a, e in zip(names, g_f, g_e):
        compare(f"{what} grad {n}", a, e)
    if not double:
        return
    vs = [None if g is None else randn(list(g.shape), gen) for g in g_e]
    s_e = sum((g * v).sum() for g, v in zip(g_e, vs) if g is not None and g.requires_grad)
    s_f = sum((g * v).sum() for g, v in zip(g_f, vs) if g is not None and g.requires_grad)
    if not isinstance(s_e, torch.Tensor):
        return  # e3nn's gradients do not depend on the inputs (e.g. no paths)
    gg_e = torch.autograd.grad(s_e, leaves_e, allow_unused=True)
    if not isinstance(s_f, torch.Tensor):
        gg_f = [None] * len(leaves_f)
    else:
        try:
            gg_f = torch.autograd.grad(s_f, leaves_f, allow_unused=True)
        except Exception as exc:
            raise Disagreement(
                f"{what} double backward raises ({type(exc).__name__})", _exc(exc)
            ) from None
    for n, a, e in zip(names, gg_f, gg_e):
        compare(f"{what} 2nd derivative {n}", a, e)


def compare_attributes(e_mod: Any, f_mod: Any, names: tuple[str, ...], prefix: str) -> None:
    for name in names:
        e, f = getattr(e_mod, name), getattr(f_mod, name, "<missing>")
        if isinstance(e, torch.Tensor):
            if (
                not isinstance(f, torch.Tensor)
                or tuple(f.shape) != tuple(e.shape)
                or not bool((f.double() == e.double()).all())
            ):
                raise Disagreement(f"{prefix}: attribute {name}", f"e3nn {e.tolist()} fastcg {f}")
        elif e != f:
            raise Disagreement(f"{prefix}: attribute {name}", f"e3nn {e!r} fastcg {f!r}")


def compare_instructions(e_mod: Any, f_mod: Any, fields: tuple[str, ...], prefix: str) -> None:
    ie, if_ = list(e_mod.instructions), list(getattr(f_mod, "instructions", []))
    if len(ie) != len(if_):
        raise Disagreement(f"{prefix}: attribute instructions", f"{len(ie)} != {len(if_)}")
    for k, (a, b) in enumerate(zip(ie, if_)):
        for name in fields:
            x, y = getattr(a, name), getattr(b, name, None)
            bad = (abs(x - y) > 1e-12 * max(1.0, abs(x))) if name == "path_weight" else x != y
            if bad:
                raise Disagreement(
                    f"{prefix}: instruction {name}", f"instruction {k}: e3nn {x!r} fastcg {y!r}"
                )


def load_weights(e_mod: Any, f_mod: Any, prefix: str) -> None:
    """e3nn's state_dict into the twin (strictly); on failure copy the tensors and report."""
    try:
        f_mod.load_state_dict(e_mod.state_dict(), strict=True)
    except Exception as exc:
        with torch.no_grad():
            for name in ("weight", "bias"):
                e, f = getattr(e_mod, name, None), getattr(f_mod, name, None)
                if isinstance(e, torch.Tensor) and isinstance(f, torch.Tensor) and e.numel():
                    f.copy_(e.reshape(f.shape))
        raise Disagreement(f"{prefix}: state_dict does not load strictly", _exc(exc)) from None


# --------------------------------------------------------------------------------------------
# runners: each returns a status ("agree", "both reject", ...) or raises Disagreement


def run_tp(case: Case, gen: torch.Generator, perturb: bool) -> str:
    e_mod, e_exc = build(getattr(o3, case.ctor), case, _optimize_einsums=False)
    own_right = isinstance(e_exc, NotImplementedError) and case.kwargs.get("compile_right")
    if own_right:
        # e3nn has no right() for uvu<v / u<vw: a capability it lacks, not an invalid
        # specification. fastcg has one: the forward is compared with e3nn built without it, and
        # fastcg's right() with fastcg's own forward (x1 @ right(x2) == forward(x1, x2)).
        plain = dataclasses.replace(case, kwargs={**case.kwargs, "compile_right": False})
        e_mod, e_exc = build(getattr(o3, case.ctor), plain, _optimize_einsums=False)
    if e_mod is not None and any(n < 0 for i in e_mod.instructions for n in i.path_shape):
        # e3nn "accepts" u<vw / uvu<v with mul2 = 0 < mul1 (path_shape (-1, ...), a negative
        # weight_numel): not a working module, so it counts as a rejection.
        e_mod, e_exc = None, ValueError(f"e3nn built negative path shapes: {e_mod.instructions}")
    f_mod, f_exc = build(getattr(fnn, case.ctor), case)
    if e_exc is not None and f_mod is not None:
        exercise(f_mod, case.inputs["batch"], gen)
    if not check_construction(e_mod, e_exc, f_mod, f_exc, "construct"):
        return "both reject"
    compare_attributes(
        e_mod,
        f_mod,
        (
            "irreps_in1",
            "irreps_in2",
            "irreps_out",
            "weight_numel",
            "internal_weights",
            "shared_weights",
            "output_mask",
        ),
        "module",
    )
    compare_instructions(
        e_mod,
        f_mod,
        ("i_in1", "i_in2", "i_out", "connection_mode", "has_weight", "path_shape", "path_weight"),
        "module",
    )
    problems = []
    try:
        load_weights(e_mod, f_mod, "module")
    except Disagreement as d:
        problems.append(d)
    status = "agree"
    inp = case.inputs
    batch, numel = inp["batch"], e_mod.weight_numel
    shape1 = shape2 = batch
    if inp.get("broadcast") == "x1":
        shape1 = [1] * len(batch)
    elif inp.get("broadcast") == "x2":
        shape2 = [1] * len(batch)
    x1 = randn(shape1 + [e_mod.irreps_in1.dim], gen)
    x2 = randn(shape2 + [e_mod.irreps_in2.dim], gen)
    explicit = numel > 0 and (not e_mod.internal_weights or inp["explicit_weight"])
    w = None
    if explicit:
        w = randn(([] if e_mod.shared_weights else batch) + [numel], gen)
    elif not e_mod.shared_weights and not e_mod.internal_weights:
        w = randn(batch + [0], gen)  # e3nn's forward needs the batch of per-sample weights
    leaves_e = [x1.clone().requires_grad_(), x2.clone().requires_grad_()]
    leaves_f = [x1.clone().requires_grad_(), x2.clone().requires_grad_()]
    names = ["x1", "x2"]
    we = wf = None
    if w is not None:
        we, wf = w.clone().requires_grad_(), w.clone().requires_grad_()
        leaves_e.append(we)
        leaves_f.append(wf)
        names.append("weight")
        if inp["weight_list"] and numel > 0:
            lead = [] if e_mod.shared_weights else batch
            sizes = [math.prod(i.path_shape) for i in e_mod.instructions if i.has_weight]
            shapes = [lead + list(i.path_shape) for i in e_mod.instructions if i.has_weight]
            we = [p.reshape(s) for p, s in zip(we.split(sizes, -1), shapes)]
            wf = [p.reshape(s) for p, s in zip(wf.split(sizes, -1), shapes)]
    elif numel > 0 and isinstance(getattr(f_mod, "weight", None), torch.nn.Parameter):
        leaves_e.append(e_mod.weight)
        leaves_f.append(f_mod.weight)
        names.append("weight")
    try:
        compare_calls(
            lambda: e_mod(leaves_e[0], leaves_e[1], we),
            lambda: f_mod(leaves_f[0], leaves_f[1], wf),
            leaves_e,
            leaves_f,
            names,
            gen,
            inp["double"],
            "forward",
            perturb,
        )
        if inp["right"] and own_right:
            check_own_right(f_mod, leaves_f, wf)
            status = "agree; right() checked against fastcg's forward (e3nn has none)"
        elif inp["right"]:
            try:
                run_right(e_mod, f_mod, leaves_e, leaves_f, names, we, wf, gen, inp["double"])
            except E3nnFails:  # e.g. per-sample weights of size 0; forward was compared
                status = "agree; right() skipped: e3nn's raises"
    except Disagreement as d:
        problems.append(d)
    if problems:
        raise (
            problems[0]
            if len(problems) == 1
            else Disagreement(problems[0].category, "; ".join(str(p) for p in problems))
        )
    return status


def exercise(f_mod: Any, batch: list[int], gen: torch.Generator) -> None:
    """Run a module fastcg accepted and e3nn rejected: it may fail, but must not crash."""
    f_in = [f_mod.f_in] if getattr(f_mod, "f_in", None) else []
    f_out = [f_mod.f_out] if getattr(f_mod, "f_out", None) else []
    shared = getattr(f_mod, "shared_weights", True)
    if hasattr(f_mod, "irreps_in1"):
        xs = [
            randn(batch + [f_mod.irreps_in1.dim], gen),
            randn(batch + [f_mod.irreps_in2.dim], gen),
        ]
    else:
        xs = [randn(batch + f_in + [f_mod.irreps_in.dim], gen)]
    w = randn(([] if shared else batch) + f_in + f_out + [max(f_mod.weight_numel, 0)], gen)
    args = [*xs, w]
    if getattr(f_mod, "bias_numel", 0) > 0:
        args.append(randn(f_out + [f_mod.bias_numel], gen))
    leaves = [t.requires_grad_() for t in args]

    def run() -> None:
        out = f_mod(*leaves)
        torch.autograd.grad(out, leaves, torch.ones_like(out), allow_unused=True)

    _try(run)


def check_own_right(f_mod: Any, leaves_f: list, wf: Any) -> None:
    """fastcg's ``right(x2, w)`` where e3nn has none: contracted with x1 it is the forward."""
    x1, x2 = leaves_f[0].detach(), leaves_f[1].detach()
    try:
        r = f_mod.right(x2, wf)
        out = f_mod(x1, x2, wf)
    except Exception as exc:
        raise Disagreement(f"right() raises ({type(exc).__name__})", _exc(exc)) from None
    compare("right() contracted with x1", torch.einsum("...i,...ij->...j", x1, r), out)


def run_right(
    e_mod: Any,
    f_mod: Any,
    leaves_e: list,
    leaves_f: list,
    names: list[str],
    we: Any,
    wf: Any,
    gen: torch.Generator,
    double: bool,
) -> None:
    """``right(x2, w)`` of both modules (x1 is not an input of it)."""
    if not callable(getattr(f_mod, "right", None)):
        raise Disagreement("right: fastcg has no right()")
    keep = [k for k, n in enumerate(names) if n != "x1"]
    compare_calls(
        lambda: e_mod.right(leaves_e[1], we),
        lambda: f_mod.right(leaves_f[1], wf),
        [leaves_e[k] for k in keep],
        [leaves_f[k] for k in keep],
        [names[k] for k in keep],
        gen,
        double,
        "right()",
        False,
    )


def run_linear(case: Case, gen: torch.Generator, perturb: bool) -> str:
    e_mod, e_exc = build(o3.Linear, case, _optimize_einsums=False)
    f_mod, f_exc = build(fnn.Linear, case)
    if e_exc is not None and f_mod is not None:
        exercise(f_mod, case.inputs["batch"], gen)
    if not check_construction(e_mod, e_exc, f_mod, f_exc, "construct"):
        return "both reject"
    compare_attributes(
        e_mod,
        f_mod,
        (
            "irreps_in",
            "irreps_out",
            "weight_numel",
            "bias_numel",
            "internal_weights",
            "shared_weights",
            "output_mask",
        ),
        "module",
    )
    compare_instructions(e_mod, f_mod, ("i_in", "i_out", "path_shape", "path_weight"), "module")
    problems = []
    try:
        load_weights(e_mod, f_mod, "module")
    except Disagreement as d:
        problems.append(d)
    inp = case.inputs
    batch, f_in, f_out = inp["batch"], case.kwargs.get("f_in"), case.kwargs.get("f_out")
    ff_in, ff_out = ([f_in] if f_in else []), ([f_out] if f_out else [])
    x = randn(batch + ff_in + [e_mod.irreps_in.dim], gen)
    leaves_e, leaves_f, names = [x.clone().requires_grad_()], [x.clone().requires_grad_()], ["x"]
    extra_e: list = [None, None]
    extra_f: list = [None, None]
    specs = (
        ("weight", e_mod.weight_numel, ([] if e_mod.shared_weights else batch) + ff_in + ff_out),
        ("bias", e_mod.bias_numel, ff_out),  # e3nn adds per-sample biases only for batch 1
    )
    for k, (name, numel, lead) in enumerate(specs):
        if numel == 0:
            continue
        if not e_mod.internal_weights or inp["explicit_weight"]:
            t = randn(lead + [numel], gen)
            extra_e[k], extra_f[k] = t.clone().requires_grad_(), t.clone().requires_grad_()
            leaves_e.append(extra_e[k])
            leaves_f.append(extra_f[k])
            names.append(name)
        elif isinstance(getattr(f_mod, name, None), torch.nn.Parameter):
            leaves_e.append(getattr(e_mod, name))
            leaves_f.append(getattr(f_mod, name))
            names.append(name)
    try:
        compare_calls(
            lambda: e_mod(leaves_e[0], *extra_e),
            lambda: f_mod(leaves_f[0], *extra_f),
            leaves_e,
            leaves_f,
            names,
            gen,
            inp["double"],
            "forward",
            perturb,
        )
    except Disagreement as d:
        problems.append(d)
    if problems:
        raise (
            problems[0]
            if len(problems) == 1
            else Disagreement(problems[0].category, "; ".join(str(p) for p in problems))
        )
    return "agree"


def sh_input(inp: dict, gen: torch.Generator, clean: bool) -> torch.Tensor:
    x = randn(inp["batch"] + [3], gen) * inp["scale"]
    if not clean and inp["zero_row"]:
        x[0] = 0.0
    if not clean and inp["nan_row"]:
        x[-1, ..., 1] = float("nan")
    return x


def run_sh(case: Case, gen: torch.Generator, perturb: bool) -> str:
    inp = case.inputs
    x_full, x_clean = sh_input(inp, gen, False), sh_input(inp, gen, True)
    if case.ctor == "spherical_harmonics":
        f_fn = getattr(fnn, "spherical_harmonics", None)
        if f_fn is None:
            return "skipped: no fastcg.nn.spherical_harmonics"
        ls, _, normalize = case.args
        kw = case.kwargs

        def e_call(x: torch.Tensor) -> torch.Tensor:
            return o3.spherical_harmonics(ls, x, normalize, **kw)

        def f_call(x: torch.Tensor) -> torch.Tensor:
            return f_fn(ls, x, normalize, **kw)

        # the function validates on call: compare rejections there
        e_val, e_exc = _try(lambda: e_call(x_full))
        f_val, f_exc = _try(lambda: f_call(x_full))
        if not check_construction(e_val, e_exc, f_val, f_exc, "call"):
            return "both reject"
    else:
        e_mod, e_exc = build(o3.SphericalHarmonics, case)
        f_mod, f_exc = build(fnn.SphericalHarmonics, case)
        if not check_construction(e_mod, e_exc, f_mod, f_exc, "construct"):
            return "both reject"
        compare_attributes(
            e_mod, f_mod, ("irreps_in", "irreps_out", "normalize", "normalization"), "module"
        )
        e_call, f_call = e_mod, f_mod
    normalize = case.args[-1]
    with torch.no_grad():
        compare_calls(
            lambda: e_call(x_full),
            lambda: f_call(x_full),
            [],
            [],
            [],
            gen,
            False,
            "all rows",
            perturb,
        )
    x = x_full if not normalize and not inp["nan_row"] else x_clean
    le, lf = [x.clone().requires_grad_()], [x.clone().requires_grad_()]
    compare_calls(
        lambda: e_call(le[0]),
        lambda: f_call(lf[0]),
        le,
        lf,
        ["x"],
        gen,
        inp["double"],
        "forward",
        False,
    )
    return "agree"


def _try(fn: Any) -> tuple[Any, BaseException | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(), None
    except Exception as exc:
        return None, exc


# --------------------------------------------------------------------------------------------
# driver


def draw(seed: int, k: int, args: argparse.Namespace) -> tuple[Case, torch.Generator]:
    """Case ``k`` of ``seed``: the same on every run and independent of the other cases."""
    rng = random.Random(f"fastcg-e3nn-fuzz:{seed}:{k}")
    gen = torch.Generator().manual_seed(rng.getrandbits(62))
    torch.manual_seed(rng.getrandbits(62))  # the modules' own random initial weights
    kinds = [k for k in KINDS if k in args.kinds]
    kind = rng.choices(kinds, [KINDS[k] for k in kinds])[0]
    if kind == "tp":
        case = gen_tp(rng, args.negative_indices)
    elif kind == "fctp":
        case = gen_fctp(rng)
    elif kind == "etp":
        case = gen_etp(rng)
    elif kind == "linear":
        case = gen_linear(rng)
    else:
        case = gen_sh(rng, has_function=True)
    return case, gen


RUNNERS = {"tp": run_tp, "fctp": run_tp, "etp": run_tp, "linear": run_linear, "sh": run_sh}


def run_case(seed: int, k: int, args: argparse.Namespace) -> dict:
    case, gen = draw(seed, k, args)
    head = {
        "seed": seed,
        "case": k,
        "kind": case.kind,
        "call": case.call(),
        "inputs": case.inputs,
        "tags": case.tags,
    }
    emit({"start": k, **head})
    if args.abort_at == k:
        os.abort()  # --abort-at: the harness's own check that a crash is caught
    try:
        try:
            return {**head, "status": RUNNERS[case.kind](case, gen, args.perturb)}
        except E3nnFails as exc:
            if case.inputs.get("batch") in ([1], None):
                raise
            # e3nn's own forward fails on some batch shapes (a bias-only Linear output with
            # batch != 1, zero-path outputs with a 2-d batch): compare on one sample instead.
            case.inputs = {**case.inputs, "batch": [1], "broadcast": None}
            status = RUNNERS[case.kind](case, gen, args.perturb)
            return {**head, "status": status, "detail": f"retried with batch [1]: {exc}"}
    except E3nnFails as exc:
        return {**head, "status": "skipped: e3nn's forward raises", "detail": str(exc)}
    except Disagreement as d:
        return {
            **head,
            "status": "disagree",
            "category": f"{case.kind}/{d.category}",
            "detail": d.detail,
        }
    except Exception as exc:  # a harness error is reported, not hidden
        return {
            **head,
            "status": "disagree",
            "category": f"{case.kind}/harness error",
            "detail": traceback.format_exc(limit=-3) if args.verbose else _exc(exc),
        }


def emit(obj: dict) -> None:
    print(json.dumps(obj, default=str), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the cases, print JSON lines; 0 when fastcg agrees with e3nn on every case."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--cases", type=int, default=250)
    p.add_argument("--only", type=int, action="append", help="run only these case indices")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma list of " + ",".join(KINDS))
    p.add_argument(
        "--negative-indices",
        action="store_true",
        help="also draw negative instruction indices (Python indexing in e3nn)",
    )
    p.add_argument("--abort-at", type=int, default=-1, help=argparse.SUPPRESS)  # self-test
    p.add_argument("--perturb", action="store_true", help=argparse.SUPPRESS)  # self-test
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.kinds = args.kinds.split(",")
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # tiny tensors; the harness runs several workers side by side
    counts: dict[str, int] = {}
    cases = args.only if args.only else range(args.cases)
    for k in cases:
        res = run_case(args.seed, k, args)
        counts[res["status"]] = counts.get(res["status"], 0) + 1
        emit(res)
    summary = {"seed": args.seed, "cases": len(cases), "counts": counts, "compared": COMPARED[0]}
    emit({"summary": summary})
    return 1 if counts.get("disagree") else 0


if __name__ == "__main__":
    sys.exit(main())
