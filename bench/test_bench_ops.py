"""pytest-benchmark rows for the CPU ops at a small scale: `pytest bench --benchmark-only`.

Not collected by the test command (which runs `pytest tests`). Compares fastcg with e3nn in the
same run; bench/ops.py prints the full table.
"""

import pytest
import torch

import fastcg
from fastcg.irreps import o3

pytest.importorskip("pytest_benchmark")

import problems  # noqa: E402  (bench/ is on sys.path when pytest runs this folder)

SCALE = 0.05


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def conv_case():
    p = problems.CONV["conv-64x3"].scaled(SCALE)
    inp = problems.conv_inputs(p)
    tp = o3().TensorProduct(p.irreps_in, p.irreps_sh(), inp["irreps_out"], inp["instructions"],
                            shared_weights=False, internal_weights=False)  # fmt: skip
    inp["y"] = fastcg.spherical_harmonics(inp["vectors"], p.lmax_sh)
    return p, inp, tp


@pytest.mark.parametrize("lib", ["fastcg", "e3nn"])
def test_conv_forward(benchmark, conv_case, lib):
    p, inp, tp = conv_case
    x, y, w, src, dst = (inp[k] for k in ("x", "y", "weights", "src", "dst"))
    if lib == "fastcg":
        benchmark(fastcg.conv, x, y, w, src, dst, p.num_nodes, inp["descriptor"])
    else:
        benchmark(lambda: torch.zeros(p.num_nodes, tp.irreps_out.dim).index_add(
            0, dst, tp(x[src], y, w)))  # fmt: skip


@pytest.mark.parametrize("lib", ["fastcg", "e3nn", "sphericart"])
@pytest.mark.parametrize("lmax", [3, 6])
def test_spherical_harmonics_forward(benchmark, lib, lmax):
    v = torch.randn(int(100000 * SCALE), 3)
    if lib == "fastcg":
        benchmark(fastcg.spherical_harmonics, v, lmax)
    elif lib == "e3nn":
        benchmark(o3().spherical_harmonics, list(range(lmax + 1)), v, True, "component")
    else:
        sct = pytest.importorskip("sphericart.torch")
        benchmark(sct.SphericalHarmonics(lmax), v)
