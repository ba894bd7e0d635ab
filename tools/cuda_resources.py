"""Registers, shared memory and spills of every CUDA kernel, from ptxas, with no GPU present.

Compiles each ``csrc/cuda/*.cu`` (or the files given) to a cubin per architecture with nvcc and
``-Xptxas -v``, using setup.py's nvcc flags and torch's include paths, prints one row per kernel
and exits with status 1 when a kernel spills more than ``--max-spill`` bytes (stores plus loads
per thread; default 0: the kernels are simple loops whose state fits in registers, so any spill
is a regression worth a look). The known exceptions are KNOWN_SPILLS below, each a narrow name
pattern with its own byte bound; ``--allow REGEX[=BYTES]`` adds one, ``--strict`` drops them.
ptxas reports are cached under build/cuda_resources, keyed by the sources, flags and compiler, so
a rerun with unchanged kernels takes a second instead of minutes (``--no-cache``).

    python tools/cuda_resources.py                      # every file, sm_80 and sm_90
    python tools/cuda_resources.py --markdown bench/cuda_resources.md
    python tools/cuda_resources.py csrc/cuda/scatter.cu --arch 80 --allow 'scatter=64'
"""

from __future__ import annotations

import argparse
import ast
import functools
import glob
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
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


# Kernels allowed to spill: demangled-name pattern -> bound on spill stores + loads (bytes per
# thread), the larger of sm_80 and sm_90 with nvcc 13.0, one instantiation per entry. The
# spherical-harmonics backward and double backward keep all of a vector's l-blocks live at once
# (csrc/core/sh_eval.h), which at high l outgrows the 255 registers a thread may use; every other
# kernel spills nothing.
KNOWN_SPILLS = {
    r"^void sh_bwd_kernel<7, double>$": 1056,
    r"^void sh_bwd_kernel<8, double>$": 2232,
    r"^void sh_dbl_kernel<7, float>$": 1396,
    r"^void sh_dbl_kernel<8, float>$": 4400,
    r"^void sh_dbl_kernel<4, double>$": 168,
    r"^void sh_dbl_kernel<5, double>$": 2528,
    r"^void sh_dbl_kernel<6, double>$": 6448,
    r"^void sh_dbl_kernel<7, double>$": 11216,
    r"^void sh_dbl_kernel<8, double>$": 17888,
}
CACHE = ROOT / "build" / "cuda_resources"


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


def cache_key(source: Path, cmd: list[str], compiler: str) -> str:
    """Hash of what a report depends on: the command, nvcc's version, torch's version, the source
    and every header under csrc (the kernels include nothing else of this repository)."""
    import torch

    h = hashlib.sha256("\0".join([*cmd, compiler, torch.__version__]).encode())
    headers = sorted((ROOT / "csrc").rglob("*.h")) + sorted((ROOT / "csrc").rglob("*.cuh"))
    for f in [source, *headers]:
        h.update(f.read_bytes())
    return h.hexdigest()[:32]


def compile_report(source: Path, arch: str, flags: list[str], tmp: str, cache: bool) -> str:
    """ptxas's verbose report for one file and one architecture (cubin only, no host code)."""
    out = os.path.join(tmp, f"{source.stem}.sm_{arch}.cubin")
    cmd = [nvcc(), "-cubin", f"-arch=sm_{arch}", "-Xptxas", "-v", *flags, str(source), "-o", out]
    cached = CACHE / f"{source.stem}.sm_{arch}.{cache_key(source, cmd[:-1], nvcc_version())}.txt"
    if cache and cached.exists():
        return cached.read_text()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source} for sm_{arch}:\n{res.stderr[-4000:]}")
    if cache:
        CACHE.mkdir(parents=True, exist_ok=True)
        cached.write_text(res.stderr + res.stdout)
    return res.stderr + res.stdout


@functools.cache
def nvcc_version() -> str:
    """Last line of ``nvcc --version`` (e.g. 'Build cuda_13.0.r13.0/compiler.36424714_0')."""
    res = subprocess.run([nvcc(), "--version"], capture_output=True, text=True, check=True)
    return res.stdout.strip().splitlines()[-1]


def source_bytes(path: Path, seen: set[Path] | None = None) -> int:
    """Size of a source and the csrc headers it includes, transitively (a compile-time proxy)."""
    seen = set() if seen is None else seen
    if path in seen or not path.exists():
        return 0
    seen.add(path)
    text = path.read_text()
    heads = re.findall(r'^#include "([^"]+)"', text, re.M)
    return len(text) + sum(source_bytes(ROOT / "csrc" / h, seen) for h in heads)


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


def rows(kernels: list[Kernel]) -> list[tuple]:
    names = demangle([k.name for k in kernels])
    head = ("file", "arch", "kernel", "regs", "smem", "stack", "spill st", "spill ld")
    body = [
        (k.file, k.arch, n, k.registers, k.smem, k.stack, k.spill_stores, k.spill_loads)
        for k, n in zip(kernels, names)
    ]
    return [head, *body]


def table(kernels: list[Kernel]) -> str:
    rs = rows(kernels)
    widths = [max(len(str(r[i])) for r in rs) for i in range(len(rs[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rs)


def markdown(kernels: list[Kernel], allow: dict[str, int | None]) -> str:
    """The table as a Markdown page, with the compiler and the exemptions it was checked with."""
    head, *body = rows(kernels)
    lines = [
        "# CUDA kernel resources (ptxas)",
        "",
        "Generated by `python tools/cuda_resources.py --markdown bench/cuda_resources.md` with no "
        f"GPU ({nvcc_version()}; flags of setup.py). Registers per thread, static shared memory, "
        "stack frame and spill stores / loads in bytes per thread.",
        "",
        "Spills allowed (name pattern: bound on stores + loads): "
        + ", ".join(f"`{p}`: {'any' if b is None else b}" for p, b in allow.items())
        + "; every other kernel must spill 0 bytes.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i < 3 else "--:" for i in range(len(head))) + "|",
    ]
    # Kernel names in code spans: a bare <float> would be read as an HTML tag.
    lines += ["| " + " | ".join(f"`{c}`" if i == 2 else str(c) for i, c in enumerate(r)) + " |"
              for r in body]  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_allow(specs: list[str]) -> dict[str, int | None]:
    """``REGEX[=BYTES]`` -> {regex: bound or None (any amount)}."""
    out: dict[str, int | None] = {}
    for spec in specs:
        pattern, sep, bound = spec.rpartition("=") if re.search(r"=\d+$", spec) else (spec, "", "")
        out[pattern] = int(bound) if sep else None
    return out


def violations(kernels, names, max_spill, allow) -> list[str]:
    """One message per kernel over its bound; an exempt kernel gets its pattern's bound."""
    bad = []
    for k, n in zip(kernels, names):
        bound = max_spill
        for pattern, b in allow.items():
            if re.search(pattern, n):
                bound = float("inf") if b is None else max(b, max_spill)
                break
        if k.spill > bound:
            bad.append(f"SPILL {k.file} {k.arch} {n}: {k.spill} bytes > {bound}")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="default: csrc/cuda/*.cu")
    ap.add_argument("--arch", action="append", help="compute capability digits (default 80, 90)")
    ap.add_argument("--max-spill", type=int, default=0, help="bytes of spill stores + loads")
    ap.add_argument("--allow", action="append", default=[], metavar="REGEX[=BYTES]",
                    help="exempt kernels whose name matches, up to BYTES of spill")  # fmt: skip
    ap.add_argument("--strict", action="store_true", help="without the KNOWN_SPILLS exemptions")
    ap.add_argument("--markdown", type=Path, help="also write the table to this Markdown file")
    ap.add_argument("--no-cache", action="store_true", help="recompile even when cached")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args(argv)
    files = [Path(f).resolve() for f in args.files] or sorted((ROOT / "csrc/cuda").glob("*.cu"))
    archs = args.arch or ["80", "90"]
    allow = {**({} if args.strict else KNOWN_SPILLS), **parse_allow(args.allow)}
    flags = setup_nvcc_flags() + TORCH_FLAGS + include_flags()
    # Heaviest sources first (with their headers: spherical_harmonics.cu is small, but includes
    # the generated core/sh.h), so the slowest compiles do not start last on a few cores.
    jobs = sorted(((f, a) for f in files for a in archs), key=lambda j: -source_bytes(j[0]))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        run = lambda j: compile_report(j[0], j[1], flags, tmp, not args.no_cache)  # noqa: E731
        reports = list(pool.map(run, jobs))
    order = {(f, a): i for i, (f, a) in enumerate((f, a) for f in files for a in archs)}
    done = sorted(zip(jobs, reports), key=lambda jr: order[jr[0]])
    kernels = [k for (f, a), r in done for k in parse(r, f.name, f"sm_{a}")]
    print(table(kernels))
    names = demangle([k.name for k in kernels])
    bad = violations(kernels, names, args.max_spill, allow)
    for msg in bad:
        print(msg, file=sys.stderr)
    if not args.files:  # a full run: say when an exemption has become stale
        for p in (p for p in allow if not any(re.search(p, n) for n in names)):
            print(f"note: exemption {p!r} matches no kernel", file=sys.stderr)
    if args.markdown:
        args.markdown.write_text(markdown(kernels, allow))
    took = time.perf_counter() - start
    print(f"{len(kernels)} kernels from {len(jobs)} compiles in {took:.0f} s", file=sys.stderr)
    return 1 if bad or not kernels else 0


if __name__ == "__main__":
    sys.exit(main())
