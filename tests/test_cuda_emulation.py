"""The CUDA kernels' bodies, run on the host: verification of their logic without a GPU.

Each csrc/cuda/*.cu holds its kernels between ``namespace {`` and a "host side" marker. They are
extracted into one header, compiled as plain C++ with ``__global__`` dropped and a serial loop for
the grid (tests/cuda_emulation/glue.cpp mirrors the launches), and compared in float64 (the conv
also in float32) with the C++ CPU kernels, which the other tests compare with e3nn and the
reference. The atomic conv's atomicAdd is a shim that logs where it adds, so a shared output
written with a plain ``+=`` (a race on a GPU) fails here too. What this cannot see: the real
launch configuration, memory spaces, the atomics' run-to-run ordering, and the .cu files' host
code itself.
"""

import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_close, descriptor

import fastcg
from fastcg.ops.symmetric_contraction import symmetric_contraction_descriptor

ROOT = Path(__file__).resolve().parent.parent
KERNEL_FILES = ["symmetric_contraction", "linear", "scatter", "tensor_product", "conv"]
MARKER = "// ---- host side"
PRELUDE = """#include <torch/extension.h>
#include <cassert>
#include <unordered_set>
#include "core/linear.h"
#include "core/scatter.h"
#include "core/symmetric_contraction.h"
#include "core/tp.h"
static int64_t g_tid;
inline int64_t thread_index() { return g_tid; }
#define __global__
#define __device__
#define __forceinline__ inline
#define CUDA_KERNEL_ASSERT(c) assert(c)
#define LAUNCH(n, call) for (g_tid = 0; g_tid < (n); ++g_tid) call
// atomicAdd of the atomic conv: exact in the serial grid; it logs the addresses it adds into, so
// glue.cpp's atomic_audit can tell a shared output written with a plain += (a race on a GPU).
static std::unordered_set<const void*> g_atomic_hits;
template <typename T>
inline T atomicAdd(T* p, T v) {
  g_atomic_hits.insert(p);
  const T old = *p;
  *p = old + v;
  return old;
}
namespace fastcg {
inline std::pair<at::Tensor, at::Tensor> group_by(const at::Tensor& key, int64_t bins) {
  auto sorted = key.sort(true, 0, false);
  auto bounds = at::arange(bins + 1, key.options());
  return {std::get<1>(sorted), at::searchsorted(std::get<0>(sorted), bounds)};
}
struct TPTables { const int64_t* paths; int64_t P; const int64_t* ci; const double* cv; };
"""
F64 = torch.float64
ops = torch.ops.fastcg


def kernels_header() -> str:
    parts = [PRELUDE]
    for stem in KERNEL_FILES:
        text = (ROOT / "csrc" / "cuda" / f"{stem}.cu").read_text()
        start = text.index("namespace {\n") + len("namespace {\n")
        parts.append(text[start : text.index(MARKER)])
    return "\n".join(parts) + "\n}  // namespace fastcg\n"


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    from torch.utils.cpp_extension import is_ninja_available, load

    if shutil.which("c++") is None or not is_ninja_available():
        pytest.skip("no C++ compiler or ninja to build the host emulation")

    build = tmp_path_factory.mktemp("cuda_emulation")
    (build / "kernels.h").write_text(kernels_header())
    src = build / "glue.cpp"
    src.write_text((ROOT / "tests" / "cuda_emulation" / "glue.cpp").read_text())
    return load(
        "fastcg_cuda_emulation", [str(src)], build_directory=str(build),
        extra_include_paths=[str(ROOT / "csrc"), str(build)], extra_cflags=["-O1"],
    )  # fmt: skip


def close(ours, theirs):
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "args", [("0e+1o+2e", "0e+1o", 3), ("0e+1o+2e", "0e+1o+2e", (3, 2, 1)), ("0e+1o", "0e", 4)]
)
def test_symmetric_contraction(emu, args):
    d = symmetric_contraction_descriptor(*args)
    tabs = d.tensors()
    x, w = torch.randn(7, 5, d.dim_in, dtype=F64), torch.randn(3, d.weight_numel, 5, dtype=F64)
    sp = torch.tensor([2, 0, 1, 2, 2, 0, 1])
    g = torch.randn(7, 5 * d.dim_out, dtype=F64)
    close([emu.sc_fwd(x, sp, w, *tabs)], [ops.symmetric_contraction(x, sp, w, *tabs)])
    theirs = ops.symmetric_contraction_backward(g, x, sp, w, *tabs, [True, True])
    close(emu.sc_bwd(g, x, sp, w, *tabs), theirs)
    ggx, ggw = torch.randn_like(x), torch.randn_like(w)
    for t, v in ((ggx, ggw), (ggx, None), (None, ggw)):
        mask = [True, True, True]
        theirs = ops.symmetric_contraction_double_backward(g, x, sp, w, t, v, *tabs, mask)
        close(emu.sc_dbl(g, x, sp, w, t, v, *tabs), theirs)


@pytest.mark.parametrize("species", [False, True])
def test_linear(emu, species):
    d = fastcg.linear_descriptor("3x0e+2x1o+1x2e+1x1o", "2x0e+3x1o+1x2e")
    p, c = d.tensors()
    x, g = torch.randn(6, d.dim_in, dtype=F64), torch.randn(6, d.dim_out, dtype=F64)
    sp = torch.tensor([2, 0, 2, 1, 0, 2]) if species else None
    w = torch.randn(*([3] if species else []), d.weight_numel, dtype=F64)
    close([emu.lin_fwd(x, w, sp, p, c, d.dim_out)], [ops.linear(x, w, sp, p, c, d.dim_out)])
    close(emu.lin_bwd(g, x, w, sp, p, c), ops.linear_backward(g, x, w, sp, p, c, [True, True]))


def test_scatter_sum(emu):
    src, index = torch.randn(9, 4, dtype=F64), torch.tensor([3, 0, 3, 1, 0, 3, 5, 5, 0])
    close([emu.scat(src, index, 7)], [ops.scatter_sum(src, index, 7)])


TP_CASES = ["mixed", "uvw", "uvu", "uuu", "uvv", "uuw", "unweighted"]


@pytest.mark.parametrize("case", TP_CASES)
@pytest.mark.parametrize("shared", [False, True], ids=["per_row", "shared"])
def test_tensor_product(emu, case, shared):
    d = descriptor(case)
    p, ci, cv = d.tensors()
    tb = (p, ci, cv.to(F64))
    x1, x2 = torch.randn(6, d.dim1, dtype=F64), torch.randn(6, d.dim2, dtype=F64)
    w = torch.randn(*([] if shared else [6]), d.weight_numel, dtype=F64)
    g = torch.randn(6, d.dim_out, dtype=F64)
    close([emu.tp_fwd(x1, x2, w, *tb, d.dim_out)], [ops.tensor_product(x1, x2, w, *tb, d.dim_out)])
    theirs = ops.tensor_product_backward(g, x1, x2, w, *tb, [True, True, True])
    close(emu.tp_bwd(g, x1, x2, w, *tb, 4), theirs)  # rows in chunks of 4 for shared weights


def conv_edges(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(src, dst) over 5 nodes: several edges per receiver, node 4 receives nothing."""
    src = torch.tensor([0, 2, 1, 2, 3, 0, 1, 3, 2, 4, 4])
    dst = torch.tensor([1, 0, 3, 1, 0, 2, 1, 2, 3, 1, 0])
    if kind == "sorted":
        dst, perm = dst.sort(stable=True)
        src = src[perm]
    return (src[:0], dst[:0]) if kind == "empty" else (src, dst)


def audit(emu, shared: list[torch.Tensor]):
    missed, stray = emu.atomic_audit(shared)
    assert missed == 0, f"{missed} elements of shared outputs written without atomicAdd"
    assert stray == 0, f"{stray} atomicAdds into outputs a single thread owns"


@pytest.mark.parametrize("edges", ["unsorted", "sorted", "empty"])
@pytest.mark.parametrize("atomic", [False, True], ids=["deterministic", "atomic"])
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("shared", [False, True], ids=["per_edge", "shared"])
@pytest.mark.parametrize("case", TP_CASES)
def test_conv(emu, case, shared, dtype, atomic, edges):
    """Both kernel variants against the CPU conv: forward and backward, shared and per-edge
    weights (shared grad_weights in chunks of 2 nodes on the deterministic path)."""
    d = descriptor(case)
    p, ci, cv = d.tensors()
    tb = (p, ci, cv.to(F64))
    src, dst = conv_edges(edges)
    E = len(src)
    x, y = torch.randn(5, d.dim1, dtype=dtype), torch.randn(E, d.dim2, dtype=dtype)
    w = torch.randn(*([] if shared else [E]), d.weight_numel, dtype=dtype)
    out = emu.conv_fwd(x, y, w, src, dst, 5, *tb, d.dim_out, atomic)
    if atomic and edges == "sorted":  # dst-sorted edges: the per-node sum, bit for bit
        assert emu.atomic_audit([])[1] == 0, "dst-sorted edges took the atomic kernel"
        assert torch.equal(out, emu.conv_fwd(x, y, w, src, dst, 5, *tb, d.dim_out, False))
    elif atomic:
        audit(emu, [out])
    assert_close(out, ops.conv(x, y, w, src, dst, 5, *tb, d.dim_out))
    g = torch.randn(5, d.dim_out, dtype=dtype)
    ours = emu.conv_bwd(g, x, y, w, src, dst, *tb, 2, atomic)
    if atomic:
        audit(emu, [ours[0], ours[2]] if shared else [ours[0]])
    theirs = ops.conv_backward(g, x, y, w, src, dst, *tb, [True, True, True])
    for a, b in zip(ours, theirs, strict=True):
        assert_close(a, b)
