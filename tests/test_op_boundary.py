"""The registered-op boundary (``torch.ops.fastcg.*``, ``torch.ops.fastcg_triton.*``), called
directly as TorchScript, C++ or a careless caller would: an operand on another device or a
corrupted descriptor table is a RuntimeError naming the argument, never a crash and never an
uninitialised result.

Calls that could crash the process (the C++ kernels fed meta tensors or corrupted tables) run in
one child process, so a crash fails the test instead of killing the test run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import namespaces

import fastcg
from fastcg.ops.symmetric_contraction import symmetric_contraction_descriptor

ROOT = Path(__file__).resolve().parent.parent
F64 = torch.float64
LONG = torch.long


def op_args() -> dict[str, tuple]:
    """Valid arguments of every op on CPU: B = 4 rows, N = 3 nodes, E = 5 edges, float64."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, dtype=F64, generator=g)

    ins = [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True), (1, 1, 0, "uvw", True)]
    tp = fastcg.tensor_product_descriptor("2x0e+1x1o", "1x0e+1x1o", "2x0e+2x1o", ins)
    tables, d1, d2, dout, wn = tp.tensors(), tp.dim1, tp.dim2, tp.dim_out, tp.weight_numel
    x1, x2, w = rand(4, d1), rand(4, d2), rand(4, wn)
    x, y, we = rand(3, d1), rand(5, d2), rand(5, wn)
    src, dst = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([1, 2, 0, 0, 2])
    radial, radial_w = rand(5, 2), rand(2, wn)
    lin = fastcg.linear_descriptor("2x0e+1x1o", "3x0e+2x1o")
    lt, lx = lin.tensors(), rand(4, lin.dim_in)
    lw, species = rand(3, lin.weight_numel), torch.tensor([0, 2, 1, 1])
    sc = symmetric_contraction_descriptor("0e+1o", "0e+1o", 2)
    st, sx = sc.tensors(), rand(3, 2, sc.dim_in)
    sw, ssp = rand(2, sc.weight_numel, 2), torch.tensor([0, 1, 1])
    sg, sgg = rand(3, 2 * sc.dim_out), (rand(*sx.shape), rand(*sw.shape))
    radial_args = (x, y, radial, radial_w, src, dst, *tables)
    cotangents = (rand(3, d1), rand(5, d2), rand(5, 2), rand(2, wn))  # of x, y, radial, radial_w
    r, table = torch.linspace(0.1, 1.9, 5, dtype=F64), rand(3, 2, wn)  # lengths inside [0, 2]
    tabulated_args = (x, y, r, table, 1.0, src, dst, *tables)
    v = rand(5, 3)
    return {
        "spherical_harmonics": (v, 2, True, "component"),
        "spherical_harmonics_backward": (rand(5, 9), v, 2, True, "component"),
        "spherical_harmonics_double_backward": (rand(5, 3), rand(5, 9), v, 2, True, "component"),
        "tensor_product": (x1, x2, w, *tables, dout),
        "tensor_product_backward": (rand(4, dout), x1, x2, w, *tables, [True] * 3),
        "conv": (x, y, we, src, dst, 3, *tables, dout),
        "conv_backward": (rand(3, dout), x, y, we, src, dst, *tables, [True] * 3),
        "conv_radial": (*radial_args[:6], 3, *tables, dout),
        "conv_radial_backward": (rand(3, dout), *radial_args, [True] * 4),
        "conv_radial_double_backward": (
            rand(3, dout),
            *radial_args[:4],
            *cotangents,
            src,
            dst,
            *tables,
            [True] * 5,
        ),
        "conv_tabulated": (*tabulated_args[:7], 3, *tables, dout),
        "conv_tabulated_backward": (rand(3, dout), *tabulated_args, [True] * 3),
        "scatter_sum": (rand(5, 2), dst, 3),
        "linear": (lx, lw, species, *lt, lin.dim_out),
        "linear_backward": (rand(4, lin.dim_out), lx, lw, species, *lt, [True] * 2),
        "symmetric_contraction": (sx, ssp, sw, *st),
        "symmetric_contraction_backward": (sg, sx, ssp, sw, *st, [True] * 2),
        "symmetric_contraction_double_backward": (sg, sx, ssp, sw, *sgg, *st, [True] * 3),
    }


def tensor_args(op) -> list[tuple[int, str]]:
    """(position, name) of the schema's Tensor and Tensor? arguments."""
    out = []
    for i, a in enumerate(op.default._schema.arguments):
        t = a.type
        if isinstance(t, torch.OptionalType):
            t = t.getElementType()
        if isinstance(t, torch.TensorType):
            out.append((i, a.name))
    return out


def word(name: str) -> str:
    return rf"(?<![\w.]){re.escape(name)}(?!\w)"


CASES = [
    (ns, name, pos, arg)
    for ns in namespaces()
    for name in op_args()
    if hasattr(getattr(torch.ops, ns), name)
    for pos, arg in tensor_args(getattr(torch.ops.fastcg, name))
    if len(tensor_args(getattr(torch.ops.fastcg, name))) > 1  # all on meta is a valid call
]


@pytest.mark.parametrize(
    ("ns", "name", "pos", "arg"), CASES, ids=[f"{c[0]}.{c[1]}.{c[3]}" for c in CASES]
)
def test_operand_on_meta_raises(ns, name, pos, arg):
    """One operand on meta among CPU ones reaches the fake (Meta) kernel: it must raise, naming
    the operand, instead of returning an uninitialised CPU tensor."""
    args = list(op_args()[name])
    args[pos] = args[pos].to("meta")
    with pytest.raises(RuntimeError, match=word(arg)):
        getattr(getattr(torch.ops, ns), name)(*args)


@pytest.mark.parametrize("ns", namespaces())
@pytest.mark.parametrize("name", list(op_args()))
def test_all_meta_gives_shapes(ns, name):
    """The fake kernels' checks accept valid operands: every operand on meta gives meta outputs of
    the CPU kernels' shapes and dtypes."""
    op = getattr(getattr(torch.ops, ns), name, None)
    if op is None:
        pytest.skip(f"{ns} has no {name}")
    args = op_args()[name]
    meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
    expected = getattr(torch.ops.fastcg, name)(*args)
    got = op(*meta)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    assert [(t.shape, t.dtype, t.device.type) for t in got] == [
        (t.shape, t.dtype, "meta") for t in expected
    ]


def test_float_operand_dtype_raises_in_fake_kernel():
    args = list(op_args()["conv"])
    args[1] = args[1].float()
    with pytest.raises(RuntimeError, match=word("edge_attr")):
        torch.ops.fastcg.conv(*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args])


# ---------------------------------------------------------------- the C++ kernels, in a child

_CHILD = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from test_op_boundary import op_args, tensor_args
ops = torch.ops.fastcg
results = {}


def expect_error(case, fn, name=None):
    try:
        fn()
    except (RuntimeError, IndexError) as e:  # IndexError: an index value out of range
        msg = str(e).splitlines()[0]
        results[case] = "ok" if name is None or name in msg else "unnamed: " + msg
    except Exception as e:
        results[case] = "wrong type: " + type(e).__name__ + ": " + str(e).splitlines()[0]
    else:
        results[case] = "no error"


# Each C++ kernel called directly (redispatch to its key, past the Meta kernel) with one operand
# on meta: it must refuse it before reading its (null) data.
base = op_args()
cpu = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
for name, args in base.items():
    op = getattr(ops, name).default
    op.redispatch(cpu, *args)  # valid arguments work: the errors below are the device checks'
    for pos, arg in tensor_args(getattr(ops, name)):
        bad = list(args)
        bad[pos] = bad[pos].to("meta")
        expect_error(f"device {name} {arg}", lambda: op.redispatch(cpu, *bad), arg)
"""

# Corrupted descriptor tables, each passed to every op that reads that table.
_TABLES = """
from fastcg.descriptors import LINEAR_COLUMNS, MODES, PATH_COLUMNS, LinCol, PathCol
from fastcg.descriptors import SC_ENTRY_COLUMNS, SC_MONO_COLUMNS, SC_PAIR_COLUMNS
TP_OPS = ["tensor_product", "tensor_product_backward", "conv", "conv_backward", "conv_radial",
          "conv_radial_backward", "conv_radial_double_backward", "conv_tabulated",
          "conv_tabulated_backward"]
TP_TABLES = {  # position of (paths, cg_index, cg_value) and of the weights / dim_out
    "tensor_product": 3, "tensor_product_backward": 4, "conv": 6, "conv_backward": 6,
    "conv_radial": 7, "conv_radial_backward": 7, "conv_radial_double_backward": 11,
    "conv_tabulated": 8,
    "conv_tabulated_backward": 8,
}


def tp_call(name, paths=None, cg_index=None, cg_value=None, dim_out=None, weights=None):
    args = list(base[name])
    at = TP_TABLES[name]
    for k, t in enumerate((paths, cg_index, cg_value)):
        if t is not None:
            args[at + k] = t
    if dim_out is not None:  # the backward ops read dim_out from grad_out
        if name.endswith("backward"):
            args[0] = args[0][:, :dim_out].contiguous()
        else:
            args[-1] = dim_out
    if weights is not None:
        w_at = {"tensor_product": 2, "tensor_product_backward": 3, "conv": 2,
                "conv_backward": 3, "conv_radial": 3, "conv_radial_backward": 4}[name]
        args[w_at] = weights(args[w_at])
    return lambda: getattr(ops, name)(*args)


def tp_case(case, **kw):
    for name in TP_OPS:
        if "weights" in kw and name.startswith(("conv_radial", "conv_tabulated")):
            continue  # weights made by the op (radial @ radial_weight, a table): a shape check
        expect_error(f"{case} / {name}", tp_call(name, **kw))


paths, cg_index, cg_value = base["tensor_product"][3:6]
HUGE = 2**62  # products and sums with it overflow int64 unless the checks divide first
# a uvu path with mul2 = 1 (the channel-fastest plan) and a uvw path (per-row or batched)
modes = [MODES[m] for m in paths[:, PathCol.mode].tolist()]
FAST = next(q for q, m in enumerate(modes) if m == "uvu" and paths[q, PathCol.mul2] == 1)
UVW = modes.index("uvw")
for row in (FAST, UVW):
    for c, col in enumerate(PATH_COLUMNS):
        values = [10**6, HUGE, -1]
        if col == "w_off" and row == FAST:
            values = [10**6, HUGE]  # w_off < 0 is a valid "no weights" on uvu
        if col == "cg_end":
            values = [10**6, HUGE, -1, int(paths[row, PathCol.cg_begin]) - 1]
        for value in values:
            p = paths.clone()
            p[row, c] = value
            tp_case(f"paths[{row}, {col}] = {value}", paths=p)
# the segfault of issue 13: a uvw path without weights
p = paths.clone()
p[UVW, PathCol.w_off] = -1
tp_case("uvw path without weights", paths=p)
p = paths.clone()
# a huge multiplicity on both sides of a uvu path
p[FAST, PathCol.mul1], p[FAST, PathCol.mul_out] = HUGE, HUGE
tp_case("uvu mul1 = mul_out = 2^62", paths=p)
for row in (FAST, UVW):
    lo = int(paths[row, PathCol.cg_begin])
    l = paths[row, [PathCol.l1, PathCol.l2, PathCol.l3]].tolist()
    for k in range(3):
        for value in (-1, 2 * l[k] + 1, HUGE):
            ci = cg_index.clone()
            ci[lo, k] = value
            tp_case(f"cg_index[{lo}, {k}] = {value} (path {row})", cg_index=ci)
tp_case("paths int32", paths=paths.int())
tp_case("paths 12 columns", paths=paths[:, : len(PATH_COLUMNS) - 1].contiguous())
tp_case("paths 1-D", paths=paths.flatten())
tp_case("paths non-contiguous", paths=paths.t().contiguous().t())
tp_case("cg_index int32", cg_index=cg_index.int())
tp_case("cg_index 2 columns", cg_index=cg_index[:, :2].contiguous())
tp_case("cg_value float32", cg_value=cg_value.float())
tp_case("cg_value one short", cg_value=cg_value[:-1])
tp_case("dim_out one short", dim_out=int(base["tensor_product"][-1]) - 1)
for name in ("tensor_product", "conv", "conv_radial"):
    expect_error(f"dim_out negative / {name}", tp_call(name, dim_out=-1))
tp_case("weights one short", weights=lambda w: w[..., :-1].contiguous())
tp_case("weights float32", weights=lambda w: w.float())
for name in ("conv_radial", "conv_radial_backward", "conv_radial_double_backward"):
    args = list(base[name])
    at = 3 if name == "conv_radial" else 4
    args[at] = args[at][:, :-1].contiguous()
    expect_error(f"radial_weight one short / {name}", lambda: getattr(ops, name)(*args))
# the cotangents of conv_radial_backward's outputs: their primal's shape
for k, name in enumerate(("grad_grad_x", "grad_grad_edge_attr", "grad_grad_radial",
                          "grad_grad_radial_weight")):  # fmt: skip
    args = list(base["conv_radial_double_backward"])
    args[5 + k] = args[5 + k][:-1].contiguous()
    expect_error(f"{name} one row short", lambda: ops.conv_radial_double_backward(*args), name)
    args[5 + k] = args[5 + k].float()
    expect_error(f"{name} float32", lambda: ops.conv_radial_double_backward(*args), name)

# linear: paths int64 [P, 6] (mul_in, mul_out, ir_dim, off_in, off_out, w_off), path_coeff [P]
lpaths, lcoeff = base["linear"][3:5]


def lin_case(case, paths=lpaths, coeff=lcoeff, weights=None, dim_out=None):
    for name in ("linear", "linear_backward"):
        for species in (True, False):
            args = list(base[name])
            at = 3 if name == "linear" else 4
            args[at], args[at + 1] = paths, coeff
            w_at, s_at = at - 2, at - 1
            if not species:
                args[w_at], args[s_at] = args[w_at][0], None
            if weights is not None:
                args[w_at] = weights(args[w_at])
            if dim_out is not None:  # linear_backward reads dim_out from grad_out
                if name == "linear":
                    args[-1] = dim_out
                else:
                    args[0] = args[0][:, :dim_out].contiguous()
            expect_error(f"{case} / {name} species={species}",
                         lambda: getattr(ops, name)(*args))


for c, col in enumerate(LINEAR_COLUMNS):
    for value in (10**6, HUGE, -1) + ((0,) if col == "ir_dim" else ()):
        p = lpaths.clone()
        p[1, c] = value
        lin_case(f"linear paths[1, {col}] = {value}", paths=p)
p = lpaths.clone()
p[0, LinCol.mul_in], p[0, LinCol.mul_out] = HUGE, HUGE
lin_case("linear mul_in = mul_out = 2^62", paths=p)
lin_case("linear paths int32", paths=lpaths.int())
lin_case("linear paths 5 columns", paths=lpaths[:, : len(LINEAR_COLUMNS) - 1].contiguous())
lin_case("linear path_coeff one short", coeff=lcoeff[:-1])
lin_case("linear path_coeff float32", coeff=lcoeff.float())
lin_case("linear weights one short", weights=lambda w: w[..., :-1].contiguous())
lin_case("linear dim_out one short", dim_out=int(base["linear"][-1]) - 1)

# symmetric contraction: monomials [M, 2], pairs [P, 2], entries [E, 2], coeff [E], out_cols
SC_OPS = {"symmetric_contraction": 3, "symmetric_contraction_backward": 4,
          "symmetric_contraction_double_backward": 6}
sc_tables = base["symmetric_contraction"][3:8]


def sc_case(case, k, table, weights=None):
    for name, at in SC_OPS.items():
        args = list(base[name])
        if table is not None:
            args[at + k] = table
        if weights is not None:
            w_at = at - 1 if name != "symmetric_contraction_double_backward" else 3
            args[w_at] = weights(args[w_at])
            if name == "symmetric_contraction_double_backward":
                args[5] = weights(args[5])
        expect_error(f"{case} / {name}", lambda: getattr(ops, name)(*args))


SC_COLS = {0: ("monomials", SC_MONO_COLUMNS), 1: ("pairs", SC_PAIR_COLUMNS),
           2: ("entries", SC_ENTRY_COLUMNS), 4: ("out_cols", ("start", "dim"))}  # fmt: skip
for k, (tname, cols) in SC_COLS.items():
    t = sc_tables[k]
    for c, col in enumerate(cols):
        row = t.shape[0] - 1
        values = [10**6, HUGE, -2]
        if tname == "monomials" and col == "parent":
            values = [row, 10**6, -2]  # a parent must come before its child
        if tname == "out_cols" and col == "dim":
            values = [0, 10**6, HUGE, -1]
        for value in values:
            bad = t.clone()
            bad[row, c] = value
            sc_case(f"{tname}[{row}, {col}] = {value}", k, bad)
    sc_case(f"{tname} int32", k, t.int())
    sc_case(f"{tname} 3 columns", k, torch.cat([t, t[:, :1]], 1))
sc_case("coeff one short", 3, sc_tables[3][:-1])
sc_case("coeff float32", 3, sc_tables[3].float())
sc_case("weights one row short", 0, None, weights=lambda w: w[:, :-1].contiguous())

# index and size arguments
x, y, we, src, dst = base["conv"][:5]
for case, s, d, n in [("src >= x rows", src + 3, dst, 3), ("src negative", src - 3, dst, 3),
                      ("dst >= num_nodes", src, dst + 3, 3), ("dst negative", src, dst - 3, 3),
                      ("num_nodes negative", src, dst, -1), ("src int32", src.int(), dst, 3)]:
    args = list(base["conv"])
    args[3], args[4], args[5] = s, d, n
    expect_error(f"conv {case}", lambda: ops.conv(*args))
    args = list(base["conv_radial"])
    args[4], args[5], args[6] = s, d, n
    expect_error(f"conv_radial {case}", lambda: ops.conv_radial(*args))
e = base["scatter_sum"][0]
for case, index, n in [("index >= dim_size", dst + 3, 3), ("index negative", dst - 3, 3),
                       ("index int32", dst.int(), 3), ("index short", dst[:-1], 3),
                       ("dim_size negative", dst, -1)]:
    expect_error(f"scatter_sum {case}", lambda: ops.scatter_sum(e, index, n))
sp = base["symmetric_contraction"][1]
for case, s in [("species >= num_species", sp + 2), ("species negative", sp - 2)]:
    args = list(base["symmetric_contraction"])
    args[1] = s
    expect_error(f"symmetric_contraction {case}", lambda: ops.symmetric_contraction(*args))
    args = list(base["linear"])
    args[2] = torch.cat([s, s])[:4]
    expect_error(f"linear {case}", lambda: ops.linear(*args))
v = base["spherical_harmonics"][0]
for case, lmax, norm in [("lmax negative", -1, "norm"), ("lmax 2^62", HUGE, "norm"),
                         ("normalization", 2, "unit")]:
    expect_error(f"spherical_harmonics {case}",
                 lambda: ops.spherical_harmonics(v, lmax, True, norm))
g = base["spherical_harmonics_backward"][0]
expect_error("spherical_harmonics_backward grad_sh for lmax 1",
             lambda: ops.spherical_harmonics_backward(g[:, :4].contiguous(), v, 2, True, "norm"))
"""


def test_kernels_refuse_bad_devices_and_tables_without_crashing():
    """Every C++ kernel, given an operand on another device or a corrupted table (each column out
    of range, negative, overflowing; cg rows and indices out of range; wrong weight numel; wrong
    table dtype or shape), raises a RuntimeError (IndexError for an index value out of range) in
    one child process, which must not crash."""
    code = textwrap.dedent(_CHILD) + textwrap.dedent(_TABLES) + "print(json.dumps(results))\n"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "tests")], capture_output=True, text=True,
        timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, f"crashed (rc={proc.returncode}): {proc.stderr[-3000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = {k: v for k, v in results.items() if v != "ok"}
    assert not bad, bad
    assert len(results) > 400, len(results)  # the cases above ran
