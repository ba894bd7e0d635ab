"""Bad inputs raise ValueError / TypeError / IndexError naming the argument, never crash."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import descriptor

import fastcg

F64 = torch.float64


def arg(name: str) -> str:
    """Regex matching the argument name as a whole word ("x" must not match "x1")."""
    return rf"(?<![\w.]){name}(?!\w)"


# ------------------------------------------------------------------------- tensor_product


def tp_inputs(case="mixed", batch=5):
    desc = descriptor(case)
    x1 = torch.randn(batch, desc.dim1, dtype=F64)
    x2 = torch.randn(batch, desc.dim2, dtype=F64)
    w = torch.randn(batch, desc.weight_numel, dtype=F64)
    return desc, x1, x2, w


TP_BAD = {
    "x1 feature dim": (lambda d, a, b, w: (a[:, :-1], b, w, d), ValueError, "x1"),
    "x2 feature dim": (lambda d, a, b, w: (a, torch.cat([b, b], -1), w, d), ValueError, "x2"),
    "x1 zero dims": (lambda d, a, b, w: (torch.tensor(1.0, dtype=F64), b, w, d), ValueError, "x1"),
    "x2 dtype": (lambda d, a, b, w: (a, b.float(), w, d), TypeError, "x2"),
    "x1 dtype": (lambda d, a, b, w: (a.float(), b, w, d), TypeError, "x2|x1"),
    "x1 integer": (lambda d, a, b, w: (a.long(), b.long(), w, d), TypeError, "x1"),
    "x2 integer": (lambda d, a, b, w: (a, b.long(), w, d), TypeError, "x2"),
    "weights numel": (lambda d, a, b, w: (a, b, w[:, 1:], d), ValueError, "weights"),
    "weights shared numel": (lambda d, a, b, w: (a, b, w[0, 1:], d), ValueError, "weights"),
    "weights missing": (lambda d, a, b, w: (a, b, None, d), ValueError, "weights"),
    "weights dtype": (lambda d, a, b, w: (a, b, w.float(), d), TypeError, "weights"),
    "weights integer": (lambda d, a, b, w: (a, b, w.long(), d), TypeError, "weights"),
    "weights batch": (lambda d, a, b, w: (a, b, w[:3], d), ValueError, "weights|broadcast|batch"),
    "batch mismatch": (lambda d, a, b, w: (a, b[:3], w, d), ValueError, "broadcast|batch|x2"),
    "x2 device": (lambda d, a, b, w: (a, b.to("meta"), w, d), ValueError, "x2"),
}  # fmt: skip


@pytest.mark.parametrize("bad", list(TP_BAD))
def test_tensor_product(bad, backend):
    make, error, name = TP_BAD[bad]
    args = make(*tp_inputs())
    with pytest.raises(error, match=arg(name) if "|" not in name else name):
        fastcg.tensor_product(*args)


def test_tensor_product_weights_on_unweighted(backend):
    desc, x1, x2, _ = tp_inputs("unweighted")
    with pytest.raises(ValueError, match=arg("weights")):
        fastcg.tensor_product(x1, x2, torch.randn(5, 3, dtype=F64), desc)


# ----------------------------------------------------------------------------------- conv


def conv_inputs():
    desc = descriptor("uvu")
    x = torch.randn(4, desc.dim1, dtype=F64)
    y = torch.randn(6, desc.dim2, dtype=F64)
    w = torch.randn(6, desc.weight_numel, dtype=F64)
    src = torch.tensor([0, 1, 2, 3, 0, 1])
    dst = torch.tensor([1, 2, 3, 0, 0, 2])
    return x, y, w, src, dst, 4, desc


def _replace(i, value):
    def make(*args):
        args = list(args)
        args[i] = value(args[i]) if callable(value) else value
        return args

    return make


CONV_BAD = {
    "x feature dim": (_replace(0, lambda x: x[:, 1:]), ValueError, "x"),
    "x 3-D": (_replace(0, lambda x: x[None]), ValueError, "x"),
    "x 1-D": (_replace(0, lambda x: x[0]), ValueError, "x"),
    "x integer": (_replace(0, lambda x: x.long()), TypeError, "x"),
    "edge_attr feature dim": (_replace(1, lambda y: y[:, 1:]), ValueError, "edge_attr"),
    "edge_attr 1-D": (_replace(1, lambda y: y[0]), ValueError, "edge_attr"),
    "edge_attr dtype": (_replace(1, lambda y: y.float()), TypeError, "edge_attr"),
    "edge_attr count": (_replace(1, lambda y: y[:5]), ValueError, "src|dst|edge_attr"),
    "weights numel": (_replace(2, lambda w: w[:, 1:]), ValueError, "weights"),
    "weights edges": (_replace(2, lambda w: w[:5]), ValueError, "weights"),
    "weights 3-D": (_replace(2, lambda w: w[None]), ValueError, "weights"),
    "weights dtype": (_replace(2, lambda w: w.float()), TypeError, "weights"),
    "weights missing": (_replace(2, None), ValueError, "weights"),
    "src out of range": (_replace(3, torch.tensor([0, 1, 2, 4, 0, 1])), IndexError, "src"),
    "src negative": (_replace(3, torch.tensor([0, 1, -1, 3, 0, 1])), IndexError, "src"),
    "src float": (_replace(3, lambda s: s.double()), TypeError, "src"),
    "src bool": (_replace(3, lambda s: s > 0), TypeError, "src"),
    "src 2-D": (_replace(3, lambda s: s[None]), ValueError, "src"),
    "src length": (_replace(3, lambda s: s[:5]), ValueError, "src"),
    "dst out of range": (_replace(4, torch.tensor([1, 2, 3, 0, 0, 4])), IndexError, "dst"),
    "dst negative": (_replace(4, torch.tensor([1, 2, 3, 0, -3, 2])), IndexError, "dst"),
    "dst float": (_replace(4, lambda s: s.float()), TypeError, "dst"),
    "dst length": (_replace(4, lambda s: s[:4]), ValueError, "dst"),
    "num_nodes negative": (_replace(5, -1), ValueError, "num_nodes"),
    "num_nodes too small": (_replace(5, 2), IndexError, "dst"),
    "src device": (_replace(3, lambda s: s.to("meta")), ValueError, "src"),
}  # fmt: skip


@pytest.mark.parametrize("bad", list(CONV_BAD))
def test_conv(bad, backend):
    make, error, name = CONV_BAD[bad]
    args = make(*conv_inputs())
    with pytest.raises(error, match=arg(name) if "|" not in name else name):
        fastcg.conv(*args)


# ---------------------------------------------------------------------------- scatter_sum

SCATTER_BAD = {
    "src integer": ((torch.ones(4, 2, dtype=torch.long), torch.tensor([0, 1, 1, 0]), 2),
                    TypeError, "src"),
    "src 0-D": ((torch.tensor(1.0), torch.tensor([0]), 2), ValueError, "src"),
    "index out of range": ((torch.ones(4, 2), torch.tensor([0, 1, 2, 0]), 2), IndexError, "index"),
    "dim_size too small": ((torch.ones(4, 2), torch.tensor([0, 5, 1, 0]), 5), IndexError, "index"),
    "index negative": ((torch.ones(4, 2), torch.tensor([0, -1, 1, 0]), 2), IndexError, "index"),
    "index float": ((torch.ones(4, 2), torch.tensor([0.0, 1.0, 1.0, 0.0]), 2), TypeError, "index"),
    "index length": ((torch.ones(4, 2), torch.tensor([0, 1, 1]), 2), ValueError, "index"),
    "index 2-D": ((torch.ones(4, 2), torch.zeros(4, 1, dtype=torch.long), 2), ValueError, "index"),
    "dim_size negative": ((torch.ones(0, 2), torch.zeros(0, dtype=torch.long), -1), ValueError,
                          "dim_size"),
}  # fmt: skip


@pytest.mark.parametrize("bad", list(SCATTER_BAD))
def test_scatter_sum(bad, backend):
    args, error, name = SCATTER_BAD[bad]
    with pytest.raises(error, match=arg(name)):
        fastcg.scatter_sum(*args)


# --------------------------------------------------------------------------------- linear


def linear_inputs():
    desc = fastcg.linear_descriptor("2x0e+1x1o", "3x0e+2x1o")
    x = torch.randn(5, desc.dim_in, dtype=F64)
    w = torch.randn(desc.weight_numel, dtype=F64)
    ws = torch.randn(3, desc.weight_numel, dtype=F64)
    return desc, x, w, ws


LINEAR_BAD = {
    "x feature dim": (lambda d, x, w, ws: (x[:, 1:], w, d, None), ValueError, "x"),
    "x integer": (lambda d, x, w, ws: (x.long(), w, d, None), TypeError, "x"),
    "weights numel": (lambda d, x, w, ws: (x, w[1:], d, None), ValueError, "weights"),
    "weights dtype": (lambda d, x, w, ws: (x, w.float(), d, None), TypeError, "weights"),
    "weights integer": (lambda d, x, w, ws: (x, w.long(), d, None), TypeError, "weights"),
    "weights 2-D without species": (lambda d, x, w, ws: (x, ws, d, None), ValueError, "weights"),
    "weights 1-D with species": (lambda d, x, w, ws: (x, w, d, torch.zeros(5, dtype=torch.long)),
                                 ValueError, "weights|species"),
    "species numel": (lambda d, x, w, ws: (x, ws[:, 1:], d, torch.zeros(5, dtype=torch.long)),
                      ValueError, "weights"),
    "species out of range": (lambda d, x, w, ws: (x, ws, d, torch.tensor([0, 1, 2, 3, 0])),
                             IndexError, "species"),
    "species negative": (lambda d, x, w, ws: (x, ws, d, torch.tensor([0, 1, -2, 1, 0])),
                         IndexError, "species"),
    "species float": (lambda d, x, w, ws: (x, ws, d, torch.zeros(5)), TypeError, "species"),
    "species length": (lambda d, x, w, ws: (x, ws, d, torch.zeros(4, dtype=torch.long)),
                       ValueError, "species"),
}  # fmt: skip


@pytest.mark.parametrize("bad", list(LINEAR_BAD))
def test_linear(bad, backend):
    make, error, name = LINEAR_BAD[bad]
    args = make(*linear_inputs())
    with pytest.raises(error, match=arg(name) if "|" not in name else name):
        fastcg.linear(*args)


# --------------------------------------------------------------------- spherical_harmonics

SH_BAD = {
    "lmax negative": ((torch.randn(4, 3), -1, True, "component"), ValueError, "lmax"),
    "lmax not an int": ((torch.randn(4, 3), 2.5, True, "component"), TypeError, "lmax"),
    "normalization": ((torch.randn(4, 3), 2, True, "unit"), ValueError, "normalization"),
    "vectors last dim": ((torch.randn(4, 4), 2, True, "norm"), ValueError, "vectors"),
    "vectors 2 components": ((torch.randn(4, 2), 2, True, "norm"), ValueError, "vectors"),
    "vectors 0-D": ((torch.tensor(1.0), 2, True, "norm"), ValueError, "vectors"),
    "vectors integer": ((torch.ones(4, 3, dtype=torch.long), 2, True, "norm"), TypeError,
                        "vectors"),
}  # fmt: skip


@pytest.mark.parametrize("bad", list(SH_BAD))
def test_spherical_harmonics(bad, backend):
    args, error, name = SH_BAD[bad]
    with pytest.raises(error, match=arg(name)):
        fastcg.spherical_harmonics(*args)


# ----------------------------------------------------------------------------- descriptors

DESC_BAD = {
    "unknown mode": (("1x1o", "1x1o", "1x0e", [(0, 0, 0, "uvx", True)]), {}, ValueError,
                     "uvx"),
    "i1 out of range": (("1x1o", "1x1o", "1x0e", [(1, 0, 0, "uvw", True)]), {}, ValueError,
                        "irreps_in1"),
    "i2 out of range": (("1x1o", "1x1o", "1x0e", [(0, 3, 0, "uvw", True)]), {}, ValueError,
                        "irreps_in2"),
    "i_out out of range": (("1x1o", "1x1o", "1x0e", [(0, 0, 1, "uvw", True)]), {}, ValueError,
                           "irreps_out"),
    "negative index": (("1x1o", "1x1o", "1x0e", [(-1, 0, 0, "uvw", True)]), {}, ValueError,
                       "irreps_in1"),
    "parity": (("1x1o", "1x1o", "1x0o", [(0, 0, 0, "uvw", True)]), {}, ValueError, "1o"),
    "triangle": (("1x1o", "1x1o", "1x3e", [(0, 0, 0, "uvw", True)]), {}, ValueError, "3e"),
    "uvu multiplicity": (("2x1o", "1x1o", "3x0e", [(0, 0, 0, "uvu", True)]), {}, ValueError,
                         "uvu"),
    "uuu multiplicity": (("2x1o", "3x1o", "2x0e", [(0, 0, 0, "uuu", True)]), {}, ValueError,
                         "uuu"),
    "irrep_normalization": (("1x1o", "1x1o", "1x0e", [(0, 0, 0, "uvw", True)]),
                            {"irrep_normalization": "unit"}, ValueError, "irrep_normalization"),
    "path_normalization": (("1x1o", "1x1o", "1x0e", [(0, 0, 0, "uvw", True)]),
                           {"path_normalization": "sum"}, ValueError, "path_normalization"),
}  # fmt: skip


@pytest.mark.parametrize("bad", list(DESC_BAD))
def test_tensor_product_descriptor(bad):
    args, kwargs, error, match = DESC_BAD[bad]
    with pytest.raises(error, match=match):
        fastcg.tensor_product_descriptor(*args, **kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("2x0e+1x1o", "1x1o", [(0, 0)]), {}),  # 0e -> 1o
        (("2x0e+1x1o", "1x1o", [(2, 0)]), {}),  # no input block 2
        (("2x0e+1x1o", "1x1o", [(1, 1)]), {}),  # no output block 1
        (("2x0e", "1x0e"), {"path_normalization": "sum"}),
    ],
)
def test_linear_descriptor(args, kwargs):
    with pytest.raises(ValueError):
        fastcg.linear_descriptor(*args, **kwargs)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        with fastcg.use_backend("tpu"):
            pass


# ------------------------------------------------------------------ registered ops directly

_DIRECT = """
import json, torch, fastcg
from fastcg.descriptors import tensor_product_descriptor
ins = [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True), (1, 1, 0, "uvw", True)]
d = tensor_product_descriptor("2x0e+1x1o", "1x0e+1x1o", "2x0e+2x1o", ins)
p, i, v = d.tensors()
ops = torch.ops.fastcg
f = torch.float64
x1 = torch.randn(4, d.dim1, dtype=f)
x2 = torch.randn(4, d.dim2, dtype=f)
w = torch.randn(4, d.weight_numel, dtype=f)
idx3 = torch.zeros(3, dtype=torch.long)
cases = {
    "tp batch mismatch": lambda: ops.tensor_product(x1, x2[:3], w, p, i, v, d.dim_out),
    "tp dtype mismatch": lambda: ops.tensor_product(x1, x2.float(), w, p, i, v, d.dim_out),
    "tp x1 1-D": lambda: ops.tensor_product(x1[0], x2, w, p, i, v, d.dim_out),
    "tp x1 too narrow": lambda: ops.tensor_product(x1[:, :2], x2, w, p, i, v, d.dim_out),
    "tp weights too short": lambda: ops.tensor_product(x1, x2, w[:, :2], p, i, v, d.dim_out),
    "sh vectors 4 wide": lambda: ops.spherical_harmonics(torch.randn(3, 4), 2, True, "norm"),
    "sh lmax 20": lambda: ops.spherical_harmonics(torch.randn(3, 3), 20, True, "norm"),
    "scatter index length": lambda: ops.scatter_sum(torch.randn(5, 2), idx3, 2),
}
# the same calls with good arguments work, so the errors below are the entry checks' own
ops.tensor_product(x1, x2, w, p, i, v, d.dim_out)
ops.spherical_harmonics(torch.randn(3, 3), 2, True, "norm")
ops.scatter_sum(torch.randn(5, 2), torch.zeros(5, dtype=torch.long), 2)
result = {}
for name, fn in cases.items():
    try:
        fn()
        result[name] = "no error"
    except (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError) as e:
        result[name] = "ok"
print(json.dumps(result))
"""


def test_registered_ops_reject_bad_shapes_without_crashing():
    """The C++ kernels' entry checks (cheap invariants): errors, no segfault, no silent reads.

    Runs in a subprocess so that a crash fails this test instead of killing the worker.
    """
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_DIRECT)], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, f"crashed (rc={proc.returncode}): {proc.stderr[-2000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {k: "ok" for k in result}, result
