"""Registers, shared memory and spills of every CUDA kernel, from ptxas, with no GPU present.

Compiles each ``csrc/cuda/*.cu`` (or the files given) to a cubin per architecture with nvcc and
``-Xptxas -v``, using setup.py's nvcc flags and torch's include paths, prints one row per kernel
and exits with status 1 when a kernel spills more than ``--max-spill`` bytes (stores plus loads;
default 0: the kernels are simple loops whose state fits in registers, so any spill is a
regression worth a look). Known exceptions: the spherical-harmonics backward / double backward
kernels spill at high l (e.g. sh_dbl_kernel<8, double>: ~17 KB of spill traffic per thread on
sm_80); ``--allow REGEX`` exempts kernels whose demangled name matches.

    python tools/cuda_resources.py                      # every file, sm_80 and sm_90
    python tools/cuda_resources.py --allow 'sh_(bwd|dbl)_kernel'
    python tools/cuda_resources.py csrc/cuda/scatter.cu --arch 80
"""

from __future__ import annotations

import argparse
import ast
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# torch's own nvcc defines (torch.utils.cpp_extension.COMMON_NVCC_FLAGS) and C++ standard.
TORCH_FLAGS = [
    "-std=c++20",
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "-DTORCH_API_INCLUDE_EXTENSION_H",
    "-DTORCH_EXTENSION_NAME=_C",
]


@dataclass
class Kernel:
    file: str
    arch: str
    name: str
    registers: int = 0
    smem: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0

    @property
    def spill(self) -> int:
        return self.spill_stores + self.spill_loads


def setup_nvcc_flags() -> list[str]:
    """NVCC_FLAGS of setup.py, read without running it (importing setup.py would build)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "NVCC_FLAGS" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise RuntimeError("setup.py has no NVCC_FLAGS list")


def include_flags() -> list[str]:
    """torch's CUDA include paths, csrc, and the CUDA library headers pip wheels ship."""
    from torch.utils import cpp_extension

    dirs = cpp_extension.include_paths(device_type="cuda") + [str(ROOT / "csrc")]
    spec = importlib.util.find_spec("nvidia")
    for root in list(spec.submodule_search_locations) if spec else []:
        dirs += glob.glob(os.path.join(root, "cu*", "include"))
    return [f"-I{d}" for d in dirs]


def nvcc() -> str:
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME or os.environ.get("CUDA_HOME")
    path = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    if not path or not os.path.exists(path):
        raise FileNotFoundError("nvcc not found (set CUDA_HOME)")
    return path


def compile_report(source: Path, arch: str, flags: list[str], tmp: str) -> str:
    """ptxas's verbose report for one file and one architecture (cubin only, no host code)."""
    out = os.path.join(tmp, f"{source.stem}.sm_{arch}.cubin")
    cmd = [nvcc(), "-cubin", f"-arch=sm_{arch}", "-Xptxas", "-v", *flags, str(source), "-o", out]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source} for sm_{arch}:\n{res.stderr[-4000:]}")
    return res.stderr + res.stdout


ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)'")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers")
SMEM = re.compile(r"(\d+) bytes smem")


def parse(report: str, file: str, arch: str) -> list[Kernel]:
    """One Kernel per entry function in a ptxas -v report."""
    kernels: list[Kernel] = []
    for line in report.splitlines():
        if m := ENTRY.search(line):
            kernels.append(Kernel(file, arch, m.group(1)))
        elif kernels and (m := FRAME.search(line)):
            k = kernels[-1]
            k.stack, k.spill_stores, k.spill_loads = (int(g) for g in m.groups())
        elif kernels and (m := USED.search(line)):
            kernels[-1].registers = int(m.group(1))
            if s := SMEM.search(line):
                kernels[-1].smem = int(s.group(1))
    return kernels


def demangle(names: list[str]) -> list[str]:
    """Readable kernel names (c++filt when present), without the fastcg namespaces."""
    tool = shutil.which("c++filt")
    if tool and names:
        res = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
        if res.returncode == 0:
            names = res.stdout.splitlines()
    return [re.sub(r"fastcg::|\(anonymous namespace\)::|\(.*\)$", "", n) for n in names]


def table(kernels: list[Kernel]) -> str:
    names = demangle([k.name for k in kernels])
    rows = [("file", "arch", "kernel", "regs", "smem", "stack", "spill st", "spill ld")]
    rows += [
        (k.file, k.arch, n, k.registers, k.smem, k.stack, k.spill_stores, k.spill_loads)
        for k, n in zip(kernels, names)
    ]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="default: csrc/cuda/*.cu")
    ap.add_argument("--arch", action="append", help="compute capability digits (default 80, 90)")
    ap.add_argument("--max-spill", type=int, default=0, help="bytes of spill stores + loads")
    ap.add_argument("--allow", help="regex of kernel names exempt from the spill bound")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    files = [Path(f).resolve() for f in args.files] or sorted((ROOT / "csrc/cuda").glob("*.cu"))
    archs = args.arch or ["80", "90"]
    flags = setup_nvcc_flags() + TORCH_FLAGS + include_flags()
    jobs = [(f, a) for f in files for a in archs]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        reports = list(pool.map(lambda j: compile_report(j[0], j[1], flags, tmp), jobs))
    kernels = [k for (f, a), r in zip(jobs, reports) for k in parse(r, f.name, f"sm_{a}")]
    print(table(kernels))
    names = demangle([k.name for k in kernels])
    allow = re.compile(args.allow) if args.allow else None
    bad = [
        (k, n)
        for k, n in zip(kernels, names)
        if k.spill > args.max_spill and not (allow and allow.search(n))
    ]
    for k, n in bad:
        print(f"SPILL {k.file} {k.arch} {n}: {k.spill} bytes > {args.max_spill}", file=sys.stderr)
    return 1 if bad or not kernels else 0


if __name__ == "__main__":
    sys.exit(main())
