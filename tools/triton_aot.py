"""Compile every Triton kernel configuration the dispatcher picks, for sm_80 / sm_90, no GPU.

The launchers run on tiny CPU tensors with the kernels swapped for recorders, so the recorded
constexpr sets are exactly what the dispatcher would launch for each benchmark problem (conv
forward atomic and CSR-segment, its three gradients, the tensor product, linear, scatter,
spherical harmonics and the symmetric contraction of MACE's product basis with all three
autograd orders). Each unique set is compiled with ``triton.compile`` for an explicit
``GPUTarget``; shared memory comes from the compiled metadata, registers and spills from
``ptxas -v`` on the PTX.

Fails (exit 1) when a kernel needs more shared memory than the target has (sm_80: 163 KiB,
sm_90: 227 KiB) or spills more than ``--max-spill`` bytes (default 64: the accumulators are
sized to stay in registers, see ``blocks`` in fastcg/triton/tensor_product.py; ptxas still
spills 8 bytes in one uvu weight-gradient configuration at 64 registers, which L1 absorbs).

    python tools/triton_aot.py --jobs 2 --float64   # all problems, both targets (make test-aot)
    python tools/triton_aot.py --quick    # one small problem, sm_80 (tests/triton/test_tools.py)
    python tools/triton_aot.py --only _sc_ --float64   # only kernels whose name has "_sc_"
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("tools/triton_aot.py compiles real kernels: run it without TRITON_INTERPRET=1")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fastcg  # noqa: E402
from fastcg.ops.symmetric_contraction import symmetric_contraction_descriptor  # noqa: E402
from fastcg.triton import conv as tconv  # noqa: E402
from fastcg.triton import linear as tlin  # noqa: E402
from fastcg.triton import scatter as tsc  # noqa: E402
from fastcg.triton import spherical_harmonics as tsh  # noqa: E402
from fastcg.triton import symmetric_contraction as tsym  # noqa: E402
from fastcg.triton import tensor_product as ttp  # noqa: E402

SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
KERNELS = {
    (ttp, "_tp_kernel"), (ttp, "_tp_wgrad_kernel"), (tlin, "_linear_kernel"),
    (tlin, "_linear_wgrad_kernel"), (tsc, "_scatter_kernel"), (tsh, "_sh_fwd_kernel"),
    (tsh, "_sh_bwd_kernel"), (tsh, "_sh_dbl_kernel"), (tsym, "_sc_rows_kernel"),
    (tsym, "_sc_wgrad_kernel"),
}  # fmt: skip
# MACE's product basis (channels, lmax of the input, correlation, elements): 128x(0e..3o) ->
# 128x0e+128x1o at correlation 3, 10 elements; --quick compiles a small one.
SC_PROBLEM = (128, 3, 3, 10)
SC_QUICK = (16, 1, 2, 2)
_DTYPE = {torch.float32: "fp32", torch.float64: "fp64", torch.int64: "i64", torch.int32: "i32",
          torch.bfloat16: "bf16", torch.float16: "fp16"}  # fmt: skip


class _Recorder:
    """Stands in for a @triton.jit kernel: records (kernel, signature, constexprs)."""

    def __init__(self, fn, seen: dict):
        self.fn, self.seen = fn, seen

    def __getitem__(self, grid):
        def launch(*args, **constexprs):
            sig = {}
            for name, a in zip(self.fn.arg_names, args):
                if isinstance(a, torch.Tensor):
                    sig[name] = "*" + _DTYPE[a.dtype]
                else:
                    sig[name] = "i64" if abs(int(a)) >= 2**31 else "i32"
            for name in constexprs:
                sig[name] = "constexpr"
            key = (self.fn.__name__, tuple(sorted(sig.items())), tuple(sorted(constexprs.items())))
            self.seen[key] = (self.fn, sig, constexprs)

        return launch


def problems(quick: bool) -> list[tuple[str, fastcg.TPDescriptor, int]]:
    """(name, conv descriptor, SH lmax): bench/problems.py when present, else MACE-like ones."""
    if not quick:  # --quick keeps the tiny fallback (a unit test's size)
        try:
            from bench import problems as bp  # noqa: PLC0415

            return [(p.name, p.descriptor, p.lmax) for p in bp.PROBLEMS]
        except Exception:  # noqa: BLE001  (another shape: use the fallback)
            pass
    out = []
    for mul in (16,) if quick else (128, 64):
        lmax = 1 if quick else 3
        ir1 = f"{mul}x0e+{mul}x1o" + ("" if quick else f"+{mul}x2e")
        out.append((f"mace_{mul}", _uvu(ir1, lmax), lmax))
    return out


def _uvu(irreps_in: str, lmax_sh: int) -> fastcg.TPDescriptor:
    """MACE's conv TP (every uvu path with l_out <= 3), as bench/problems.py builds it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import problems  # noqa: PLC0415

    return problems.ConvProblem("", irreps_in, lmax_sh, 3, 0, 0).descriptor


def record(quick: bool, dtypes) -> dict:
    """Run every launcher the ops use on tiny tensors and collect the kernel configurations."""
    seen: dict = {}
    saved = {}
    for mod, name in KERNELS:
        saved[(mod, name)] = getattr(mod, name)
        setattr(mod, name, _Recorder(getattr(mod, name), seen))
    try:
        for _, d, lmax in problems(quick):
            for dt in dtypes:
                _exercise(d, lmax, dt)
        for dt in dtypes:
            _exercise_sc(*(SC_QUICK if quick else SC_PROBLEM), dt)
    finally:
        for (mod, name), fn in saved.items():
            setattr(mod, name, fn)
    return seen


def _exercise(d: fastcg.TPDescriptor, lmax: int, dt: torch.dtype) -> None:
    n, e = 3, 6
    tables = d.tensors()
    x, y = torch.randn(n, d.dim1, dtype=dt), torch.randn(e, d.dim2, dtype=dt)
    w = torch.randn(e, d.weight_numel, dtype=dt)
    src, dst = torch.randint(0, n, (e,)), torch.randint(0, n, (e,))
    g = torch.randn(n, d.dim_out, dtype=dt)
    for dd in (dst, dst.sort().values):  # atomic and CSR-segment variants
        tconv.conv(x, y, w, src, dd, n, *tables, d.dim_out)
        tconv.conv_backward(g, x, y, w, src, dd, *tables, [True, True, True])
    xe = torch.randn(e, d.dim1, dtype=dt)
    ttp.tensor_product_backward(torch.randn(e, d.dim_out, dtype=dt), xe, y, w[0], *tables,
                                [True, True, True])  # fmt: skip
    ld = fastcg.linear_descriptor(d.irreps_in1, d.irreps_in1)
    lt = ld.tensors()
    wl = torch.randn(ld.weight_numel, dtype=dt)
    tlin.linear(x, wl, None, *lt, ld.dim_out)
    tlin.linear_backward(x, x, wl, None, *lt, [True, True])
    tsc.scatter_sum(y, dst, n)
    tsc.scatter_sum(y, dst.sort().values, n)
    v = torch.randn(e, 3, dtype=dt)
    for normalize in (True, False):
        tsh.spherical_harmonics(v, lmax, normalize, "component")
        tsh.spherical_harmonics_backward(torch.randn(e, (lmax + 1) ** 2, dtype=dt), v, lmax,
                                         normalize, "component")  # fmt: skip
        tsh.spherical_harmonics_double_backward(v, torch.randn(e, (lmax + 1) ** 2, dtype=dt), v,
                                                lmax, normalize, "component")  # fmt: skip


def _exercise_sc(channels: int, lmax: int, corr: int, elements: int, dt: torch.dtype) -> None:
    """Symmetric contraction forward, backward and double backward (every cotangent subset)."""
    irreps_in = "+".join(f"{channels}x{l}{'eo'[l % 2]}" for l in range(lmax + 1))
    d = symmetric_contraction_descriptor(irreps_in, f"{channels}x0e+{channels}x1o", corr)
    n = 4
    x = torch.randn(n, channels, d.dim_in, dtype=dt)
    species = torch.arange(n) % elements
    w = torch.randn(elements, d.weight_numel, channels, dtype=dt)
    g = torch.randn(n, channels * d.dim_out, dtype=dt)
    tables = d.tensors()
    tsym.symmetric_contraction(x, species, w, *tables)
    tsym.symmetric_contraction_backward(g, x, species, w, *tables, [True, True])
    for ggx, ggw in ((x, w), (x, None), (None, w)):
        tsym.symmetric_contraction_double_backward(g, x, species, w, ggx, ggw, *tables,
                                                   [True, True, True])  # fmt: skip


def _ptxas() -> str:
    for p in (Path(triton.__file__).parent / "backends/nvidia/bin/ptxas",
              Path("/usr/local/cuda/bin/ptxas")):  # fmt: skip
        if p.exists():
            return str(p)
    raise FileNotFoundError("no ptxas found (triton ships one in backends/nvidia/bin)")


def compile_one(fn, sig: dict, constexprs: dict, arch: int) -> dict:
    """Compile for sm_<arch>; shared memory from Triton, registers/spills from ptxas -v."""
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
    k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(k.asm["ptx"])
    arch_name = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    res = subprocess.run(
        [_ptxas(), "-v", f"--gpu-name={arch_name}", f.name, "-o", os.devnull],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    os.unlink(f.name)
    info = res.stderr
    regs = max((int(m) for m in re.findall(r"Used (\d+) registers", info)), default=0)
    spill = sum(int(m) for m in re.findall(r"(\d+) bytes spill (?:stores|loads)", info))
    return {"shared": k.metadata.shared, "regs": regs, "spill": spill}


_JOBS: list = []  # (fn, sig, constexprs, arch), filled before the pool forks


def _compile_job(i: int) -> dict:
    fn, sig, cx, arch = _JOBS[i]
    return compile_one(fn, sig, cx, arch)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small problem, sm_80, float32")
    ap.add_argument("--arch", type=int, nargs="*", default=None, help="compute capabilities")
    ap.add_argument("--max-spill", type=int, default=64, help="allowed spill bytes per kernel")
    ap.add_argument("--float64", action="store_true", help="also compile the float64 variants")
    ap.add_argument("--only", default="", help="compile only kernels whose name contains this")
    ap.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    ap.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = ap.parse_args()
    archs = args.arch or ([80] if args.quick else [80, 90])
    dtypes = [torch.float32] + ([torch.float64] if args.float64 else [])
    configs = {k: v for k, v in record(args.quick, dtypes).items() if args.only in k[0]}
    rows = [(key, arch) for key in sorted(configs, key=str) for arch in archs]
    _JOBS[:] = [(*configs[key], arch) for key, arch in rows]
    if args.jobs > 1:  # fork: the workers inherit _JOBS (JIT functions do not pickle)
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
            results = pool.map(_compile_job, range(len(rows)))
    else:
        results = map(_compile_job, range(len(rows)))
    failures, table = 0, []
    print(f"{'kernel':<22} {'dtype':<5} {'constexprs':<58} {'sm':>3} {'smem B':>7} {'regs':>4} "
          f"{'spill':>5}")  # fmt: skip
    for (key, arch), r in zip(rows, results):
        (name, _, consts), (fn, sig, _) = key, configs[key]
        bad = r["shared"] > SMEM_LIMIT[arch] or r["spill"] > args.max_spill
        failures += bad
        short = ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in consts)
        dt = sig[fn.arg_names[0]].lstrip("*")  # the first argument's element type
        print(f"{name:<22} {dt:<5} {short[:58]:<58} {arch:>3} {r['shared']:>7} {r['regs']:>4} "
              f"{r['spill']:>5}{'  FAIL' if bad else ''}", flush=True)  # fmt: skip
        table.append(f"| {name} | {dt} | {short} | sm_{arch} | {r['shared']} | {r['regs']} | "
                     f"{r['spill']} |")  # fmt: skip
    summary = f"{len(configs)} configurations x {len(archs)} targets, {failures} over the limits"
    print(summary)
    if args.markdown:
        head = ["# Triton kernels: compiled resources (`python tools/triton_aot.py "
                + " ".join(sys.argv[1:]) + "`)", "", summary, "",
                "| kernel | dtype | constexprs | target | smem B | registers | spill B |",
                "|---|---|---|---|---:|---:|---:|"]  # fmt: skip
        args.markdown.write_text("\n".join(head + table) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
