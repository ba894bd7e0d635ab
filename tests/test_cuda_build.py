"""The CUDA C++ kernels are built and registered whenever torch and nvcc allow, even with no GPU
(``make test`` builds them with FASTCG_BUILD_CUDA=1; setup.py leaves them out elsewhere)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

import fastcg
from fastcg import backend

ROOT = Path(__file__).resolve().parent.parent
CUDA_BUILD = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
CUDA_OPS = [  # every op has a CUDA C++ kernel
    "spherical_harmonics",
    "spherical_harmonics_backward",
    "spherical_harmonics_double_backward",
    "scatter_sum",
    "tensor_product",
    "tensor_product_backward",
    "conv",
    "conv_backward",
    "linear",
    "linear_backward",
    "symmetric_contraction",
    "symmetric_contraction_backward",
    "symmetric_contraction_double_backward",
]
needs_cuda_build = pytest.mark.skipif(
    not CUDA_BUILD, reason="CPU-only torch or no nvcc: no CUDA sources built"
)


@needs_cuda_build
@pytest.mark.parametrize("op", CUDA_OPS)
def test_cuda_kernel_registered(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastcg::{op}", "CUDA"), (
        "fastcg was built without its CUDA kernels: `make test` builds them, or "
        "FASTCG_BUILD_CUDA=1 python setup.py build_ext --inplace"
    )


def test_library_imports_and_runs_on_cpu_without_a_gpu():
    assert fastcg.spherical_harmonics(torch.zeros(2, 3), 2).shape == (2, 9)


def resource_tool():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import cuda_resources
    finally:
        sys.path.pop(0)
    return cuda_resources


@needs_cuda_build
def test_ptxas_resources_of_every_kernel():
    """tools/cuda_resources.py on every csrc/cuda file for sm_80 and sm_90: no kernel spills, but
    for the exemptions of its KNOWN_SPILLS table, each up to its byte bound. About 3.5 minutes on
    2 cores from scratch; the tool caches ptxas reports, so reruns with unchanged kernels take
    seconds."""
    cmd = [sys.executable, "tools/cuda_resources.py"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert res.returncode == 0, res.stdout + res.stderr
    rows = [re.split(r"\s{2,}", line.strip()) for line in res.stdout.splitlines()[1:]]
    files = {p.name for p in (ROOT / "csrc" / "cuda").glob("*.cu")}
    for arch in ("sm_80", "sm_90"):
        assert files <= {r[0] for r in rows if r[1] == arch}, f"a file has no kernel on {arch}"
    atomic = [r for r in rows if "atomic_kernel" in r[2]]
    assert len(atomic) == 2 * 6, "conv_fwd_atomic_kernel x 2 dtypes, conv_bwd_atomic x 4"
    assert all(r[6:8] == ["0", "0"] for r in atomic), atomic


def test_resource_report_parser():
    cuda_resources = resource_tool()
    report = (
        "ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z1kPf\n"
        "    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 40 registers, used 1 barriers, 1024 bytes smem, 364 bytes cmem[0]\n"
    )
    (k,) = cuda_resources.parse(report, "a.cu", "sm_90")
    assert (k.name, k.registers, k.smem, k.stack, k.spill) == ("_Z1kPf", 40, 1024, 8, 16)


def test_resource_spill_bounds():
    """An exemption is a name pattern with an optional byte bound; the first match applies."""
    tool = resource_tool()
    allow = tool.parse_allow(["^k<8>$=16", "^k<7>$"])
    assert allow == {"^k<8>$": 16, "^k<7>$": None}
    ks = [tool.Kernel("a.cu", "sm_80", n, spill_stores=s) for n, s in
          [("k<8>", 16), ("k<8>", 17), ("k<7>", 10**6), ("k<6>", 1), ("k<5>", 0)]]  # fmt: skip
    bad = tool.violations(ks, [k.name for k in ks], 0, allow)
    assert [m.split(":")[0] for m in bad] == ["SPILL a.cu sm_80 k<8>", "SPILL a.cu sm_80 k<6>"]
    for pattern in tool.KNOWN_SPILLS:  # narrow: one kernel template, listed instantiations
        assert pattern.startswith("^void sh_") and pattern.endswith(">$"), pattern


# Automatic selection on CUDA tensors is decided per op, so it can be tested without a GPU by
# pretending which ops have kernels.
@pytest.fixture
def only_tensor_product_has_cuda(monkeypatch):
    monkeypatch.setattr(backend, "_triton_namespace", lambda: None)
    monkeypatch.setattr(backend, "_has_cuda_kernels", lambda op="": op == "tensor_product")


def test_automatic_backend_skips_ops_without_cuda_kernels(only_tensor_product_has_cuda):
    assert backend.namespace(True, "tensor_product") == "fastcg"
    assert backend.namespace(True, "symmetric_contraction") == "reference"
    assert backend.namespace(False, "symmetric_contraction") == "fastcg"


def test_forced_cuda_backend_needs_a_kernel_for_the_op(only_tensor_product_has_cuda):
    with fastcg.use_backend("cuda"):
        assert backend.namespace(True, "tensor_product") == "fastcg"
        with pytest.raises(ValueError, match="symmetric_contraction"):
            backend.namespace(True, "symmetric_contraction")


def test_automatic_backend_prefers_triton_only_for_its_ops(monkeypatch):
    monkeypatch.setattr(backend, "_triton_namespace", lambda: "fastcg_triton")
    monkeypatch.setattr(backend, "_triton_has", lambda ns, op: op == "conv")
    monkeypatch.setattr(backend, "_has_cuda_kernels", lambda op="": op != "symmetric_contraction")
    assert backend.namespace(True, "conv") == "fastcg_triton"
    assert backend.namespace(True, "linear") == "fastcg"
    assert backend.namespace(True, "symmetric_contraction") == "reference"


@needs_cuda_build
@pytest.mark.parametrize("op", [op for op in CUDA_OPS if not op.endswith("backward")])
def test_cuda_backend_selects_the_built_kernels(op, monkeypatch):
    monkeypatch.setattr(backend, "_triton_namespace", lambda: None)
    with fastcg.use_backend("cuda"):
        assert backend.namespace(True, op) == "fastcg"
    assert backend.namespace(True, op) == "fastcg"
