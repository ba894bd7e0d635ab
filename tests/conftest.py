"""Shared test fixtures: backends, dtypes, seeded RNG, tensor-product cases and e3nn oracles.

The tolerance table, ``assert_close``, ``default_dtype``, rotations and e3nn's mode rules are
``fastcg.testing``'s (shared with ``fastcg check`` and the e3nn twins), re-exported here.

Every test compares fastcg with e3nn (or a plain torch computation), never with fastcg itself.
"""

from __future__ import annotations

import functools
import os
import random

import pytest
import torch

import fastcg
from fastcg.irreps import o3 as _import_o3
from fastcg.testing import assert_close, default_dtype, full_instructions, mode_allowed
from fastcg.testing import random_rotation as rotation
from fastcg.testing import wigner_D as D

o3 = _import_o3()  # e3nn.o3, imported so that e3nn 0.4.4 also loads on torch >= 2.6

# Under pytest-xdist every worker is a process: one intra-op thread each, or OpenMP threads of
# the workers spin against each other on a small machine (a 1 s gradcheck took 22 s with 2 x 2
# threads on 2 cores). Tests of threaded kernels set their own thread counts.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

BACKENDS = ("reference", "cpu")
DTYPES = (torch.float32, torch.float64)
__all__ = ["D", "assert_close", "default_dtype", "rotation"]  # what the test files import


@pytest.fixture(autouse=True)
def _seed():
    """Seeded RNG for every test (torch's, which rotations draw from, and Python's random)."""
    torch.manual_seed(0)
    random.seed(0)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test under ``fastcg.use_backend(name)`` for each backend."""
    with fastcg.use_backend(request.param):
        yield request.param


@pytest.fixture(params=[None, "40"], ids=["one_block", "many_blocks"])
def chunk(request, monkeypatch):
    """The conv_radial / conv_tabulated weight blocks (FASTCG_CONV_RADIAL_CHUNK, in weight
    elements): the default, or a few edges per block (small inputs then take many blocks)."""
    if request.param is None:
        monkeypatch.delenv("FASTCG_CONV_RADIAL_CHUNK", raising=False)
    else:
        monkeypatch.setenv("FASTCG_CONV_RADIAL_CHUNK", request.param)
    return request.param


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return request.param


# ---------------------------------------------------------------------------------------------
# Tensor-product cases: (irreps_in1, irreps_in2, irreps_out, instructions, in1_var, in2_var,
# out_var). They cover every mode, mixed parity and multiplicities, weighted and unweighted paths,
# several paths into one output block, repeated output irreps, user path weights and variances.


def _random_case(seed: int) -> tuple:
    rng = random.Random(seed)

    def irreps(n: int) -> str:
        return "+".join(
            f"{rng.randint(1, 3)}x{rng.randint(0, 2)}{rng.choice('eo')}" for _ in range(n)
        )

    ir1, ir2 = irreps(rng.randint(1, 3)), irreps(rng.randint(1, 2))
    outs = sorted({str(r) for _, r1 in o3.Irreps(ir1) for _, r2 in o3.Irreps(ir2) for r in r1 * r2})
    muls = {m for m, _ in o3.Irreps(ir1)}
    iro = "+".join(f"{rng.choice(sorted(muls))}x{r}" for r in outs if int(r[0]) <= 3)
    modes = ["uvu", "uvw", "uuu", "uvv", "uuw"]
    rng.shuffle(modes)
    ins = [
        (*i[:4], rng.random() < 0.8 or i[3] == "uvw")
        for i in full_instructions(ir1, ir2, iro, modes)
    ]
    ins = [i for i in ins if mode_allowed(i[3], *_muls(ir1, ir2, iro, i), i[4])]
    return ir1, ir2, iro, ins, None, None, None


def _muls(ir1, ir2, iro, ins):
    return o3.Irreps(ir1)[ins[0]].mul, o3.Irreps(ir2)[ins[1]].mul, o3.Irreps(iro)[ins[2]].mul


TP_CASES: dict[str, tuple] = {
    "uvw": (
        "2x0e+2x1o+1x2e", "1x0e+2x1o+1x2e", "2x0e+1x0o+2x1o+2x1e+1x2e+1x2o",
        full_instructions("2x0e+2x1o+1x2e", "1x0e+2x1o+1x2e", "2x0e+1x0o+2x1o+2x1e+1x2e+1x2o",
                          ["uvw"]),
        None, None, None,
    ),
    "uvu": (  # NequIP / MACE interaction: features x spherical harmonics
        "3x0e+2x1o+1x2e", "1x0e+1x1o+1x2e", "3x0e+2x0o+2x1o+3x1o+2x1e+1x2e+2x2e+1x2o",
        full_instructions("3x0e+2x1o+1x2e", "1x0e+1x1o+1x2e",
                          "3x0e+2x0o+2x1o+3x1o+2x1e+1x2e+2x2e+1x2o", ["uvu"]),
        None, None, None,
    ),
    "uuu": (
        "2x0e+2x1o+2x2e", "2x0e+2x1o+2x1e", "2x0e+2x0o+2x1o+2x1e+2x2e+2x2o",
        [(*i[:4], n % 2 == 0) for n, i in enumerate(full_instructions(
            "2x0e+2x1o+2x2e", "2x0e+2x1o+2x1e", "2x0e+2x0o+2x1o+2x1e+2x2e+2x2o", ["uuu"]))],
        None, None, None,
    ),
    "uvv": (
        "2x0e+1x1o", "3x0e+2x1o+1x1e", "3x0e+1x0o+2x1o+2x1e+1x1o+1x2e",
        full_instructions("2x0e+1x1o", "3x0e+2x1o+1x1e", "3x0e+1x0o+2x1o+2x1e+1x1o+1x2e",
                          ["uvv"]),
        None, None, None,
    ),
    "uuw": (
        "2x0e+2x1o", "2x0e+2x1e", "3x0e+1x0o+2x1o+1x1e+2x2o",
        full_instructions("2x0e+2x1o", "2x0e+2x1e", "3x0e+1x0o+2x1o+1x1e+2x2o", ["uuw"]),
        None, None, None,
    ),
    "mixed": (  # every mode in one product, unweighted paths, user path weights, variances
        "2x0e+1x1o+2x1e+0x2e", "1x0e+2x1o", "2x0e+1x1o+2x1e+2x1o+1x0e+2x0o",
        [
            (0, 0, 0, "uvw", True, 0.5),
            (2, 1, 5, "uvw", True),
            (1, 1, 0, "uvv", False),
            (2, 0, 2, "uvu", True, 2.0),
            (1, 1, 2, "uvw", True),
            (0, 1, 3, "uvv", False),
            (2, 1, 3, "uvv", True),
            (1, 0, 1, "uvw", True),
            (1, 1, 4, "uvw", True),
            (2, 1, 5, "uuu", False),
            (0, 1, 3, "uuw", True),
            (3, 1, 3, "uvw", True),  # empty 0x2e block: e3nn skips the path
        ],
        [1.0, 2.0, 0.5, 1.0], [1.5, 0.7], [1.0, 1.0, 2.0, 1.0, 0.5, 1.0],
    ),
    "unweighted": (
        "2x0e+2x1o", "2x0e+2x1o", "2x0e+2x1o+2x1e+1x0e",
        [(0, 0, 0, "uuu", False), (1, 1, 0, "uuu", False), (0, 1, 1, "uvu", False),
         (1, 1, 2, "uuu", False), (1, 1, 3, "uuw", False), (1, 0, 1, "uvv", False)],
        None, None, None,
    ),
    # seeds picked for >= 5 paths, >= 3 modes and an unweighted path each
    **{f"random{seed}": _random_case(seed) for seed in (25, 30, 50, 52)},
}  # fmt: skip

# Small cases for gradcheck / gradgradcheck: few channels, every mode, unweighted paths.
SMALL_CASES: dict[str, tuple] = {
    "small_uvu": (
        "2x0e+1x1o", "1x0e+1x1o", "2x0e+2x1o+1x1e+1x0e",
        [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True), (1, 1, 2, "uvu", True),
         (1, 1, 3, "uvu", False)],
        None, None, None,
    ),
    "small_uvw": (
        "1x0e+1x1o", "1x1o+1x0e", "2x1o+1x0e+1x1e",
        [(0, 0, 0, "uvw", True), (1, 1, 0, "uvw", True), (1, 0, 1, "uvw", True),
         (1, 0, 2, "uvw", True)],
        None, None, None,
    ),
    "small_modes": (
        "2x1o", "2x1e+1x0e", "2x1o+2x0o+1x1o+1x2o",
        [(0, 0, 0, "uuu", True), (0, 0, 1, "uuw", True), (0, 1, 0, "uvu", False),
         (0, 0, 2, "uuw", False), (0, 0, 3, "uvw", True), (0, 1, 2, "uvv", True)],
        None, None, None,
    ),
}  # fmt: skip

NORMALIZATIONS = [
    ("component", "element"),
    ("norm", "path"),
    ("component", "path"),
    ("norm", "element"),
    ("none", "none"),
]


@functools.cache
def e3nn_tp(case: str, irrep_norm="component", path_norm="element", shared=False):
    """float64 ``e3nn.o3.TensorProduct`` of a case, weights passed explicitly."""
    ir1, ir2, iro, ins, v1, v2, vo = {**TP_CASES, **SMALL_CASES}[case]
    with default_dtype(torch.float64):
        return o3.TensorProduct(
            ir1, ir2, iro, ins, in1_var=v1, in2_var=v2, out_var=vo,
            irrep_normalization=irrep_norm, path_normalization=path_norm,
            internal_weights=False, shared_weights=shared,
        )  # fmt: skip


@functools.cache
def descriptor(case: str, irrep_norm="component", path_norm="element") -> fastcg.TPDescriptor:
    """fastcg descriptor built from the same arguments as :func:`e3nn_tp`."""
    ir1, ir2, iro, ins, v1, v2, vo = {**TP_CASES, **SMALL_CASES}[case]
    return fastcg.tensor_product_descriptor(
        ir1, ir2, iro, ins, in1_var=v1, in2_var=v2, out_var=vo,
        irrep_normalization=irrep_norm, path_normalization=path_norm,
    )  # fmt: skip


def run_e3nn(tp, x1, x2, w):
    """e3nn in float64 (inputs cast), whatever dtype the inputs have."""
    f64 = torch.float64
    if tp.weight_numel == 0:
        return tp(x1.to(f64), x2.to(f64))
    return tp(x1.to(f64), x2.to(f64), w.to(f64))


def namespaces() -> list[str]:
    """The op namespaces built here: fastcg, and fastcg_triton where Triton imports."""
    out = ["fastcg"]
    try:
        import fastcg.triton  # noqa: F401
    except ImportError:
        pass
    else:
        out.append("fastcg_triton")
    return out
