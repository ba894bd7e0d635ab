"""mace-torch MACE vs ``fastcg.convert(MACE)``: time per energy+forces call and peak RSS.

The issue's target model: hidden irreps 128x0e+128x1o, max_ell 3, correlation 3, 2 interactions,
radial MLP [64, 64, 64], 10 Bessel functions, r_max 5, on 864-atom fcc Cu (rattled), float32,
2 threads. Each variant runs in its own process so that peak RSS is its own; "calls GB" is the
high-water mark of the energy+forces calls over the resident memory before them (torch, models).
"fastcg-deployed" is the converted model saved with torch.jit.script and run by
FastCGCalculator in a process that never imports mace-torch or e3nn (as LAMMPS would run it).

    .venv-mace/bin/python bench/mace_md.py [--threads 2] [--repeats 3] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

VARIANTS = ("fastcg", "e3nn", "fastcg-deployed")


def build(small: bool):
    """The seeded mace-torch model (float64)."""
    import torch

    import fastcg  # noqa: F401  (before mace: e3nn 0.4.4's import flag)
    from fastcg.integrations.mace import random_model
    from fastcg.models._reference import default_dtype

    with default_dtype(torch.float64):
        return random_model([29], 8 if small else 128, 2 if small else 3, 0)


def save_deployed(path: str, small: bool) -> None:
    """convert -> the fastcg model interface -> torch.jit.script -> ``path``."""
    import warnings

    import torch

    from fastcg import convert
    from fastcg.integrations.mace import MaceTorchModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation
        torch.jit.script(MaceTorchModel(convert(build(small)))).save(path)


def measure(variant: str, threads: int, repeats: int, dtype_name: str, small: bool,
            deployed: str | None = None) -> dict:  # fmt: skip
    """One variant in this process: seconds per call (min and median), edges, peak RSS."""
    import numpy as np
    import torch

    from fastcg.calculator import FastCGCalculator
    from fastcg.md import build_structure

    torch.set_num_threads(threads)
    atoms = build_structure("cu-small" if small else "cu", 0)
    if variant == "fastcg-deployed":
        calc = FastCGCalculator(torch.jit.load(deployed), dtype=getattr(torch, dtype_name),
                                cutoff=5.0)  # fmt: skip
        assert not any(m in sys.modules for m in ("mace", "e3nn")), "imports mace / e3nn"
    else:
        model = build(small)
        if variant == "fastcg":
            from fastcg.convert import convert

            model = convert(model)
        calc = FastCGCalculator(model, dtype=getattr(torch, dtype_name))
    atoms.calc = calc
    # What the calls themselves need: resident memory before them (torch, the models) and the
    # high-water mark of the calls alone (Linux: writing 5 to clear_refs resets VmHWM).
    before = _proc_status_gb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    # warm-up: e3nn's codegen, allocations; TorchScript's profiling executor optimises the
    # graph over its first calls
    for _ in range(3 if variant == "fastcg-deployed" else 1):
        forces = atoms.get_forces()
    times = []
    for k in range(repeats):
        atoms.rattle(1e-4, seed=k + 1)
        start = time.perf_counter()
        atoms.get_forces()
        times.append(time.perf_counter() - start)
    atoms.rattle(0.0)
    from fastcg.calculator import neighbour_list

    src, _, _ = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0)
    return {
        "variant": variant, "seconds_min": min(times), "seconds_median": float(np.median(times)),
        "edges": int(len(src)), "atoms": len(atoms),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "before_gb": before, "call_gb": _proc_status_gb("VmHWM") - before,
        "forces0": forces.tolist(),
    }  # fmt: skip


def _proc_status_gb(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith(field + ":"))
    return int(line.split()[1]) / 2**20  # kB


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--small", action="store_true", help="tiny model and 32 atoms (smoke test)")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--deployed", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.save:
        save_deployed(args.save, args.small)
        return 0
    if args.variant:
        print(json.dumps(measure(args.variant, args.threads, args.repeats, args.dtype,
                                 args.small, args.deployed)))  # fmt: skip
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        deployed = os.path.join(tmp, "mace_fastcg.pt")
        for variant in ("save", *VARIANTS):
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--repeats",
                   str(args.repeats), "--dtype", args.dtype, "--deployed", deployed] + (
                       ["--small"] if args.small else [])  # fmt: skip
            cmd += ["--save", deployed] if variant == "save" else ["--variant", variant]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                print(run.stderr[-3000:], file=sys.stderr)
                return 1
            if variant != "save":
                results[variant] = json.loads(run.stdout.strip().splitlines()[-1])
    import numpy as np

    f, e = (np.array(results[v].pop("forces0")) for v in ("fastcg", "e3nn"))
    f_dep = np.array(results["fastcg-deployed"].pop("forces0"))
    r = results["e3nn"]
    size = "small model" if args.small else "128x0e+128x1o, max_ell 3, correlation 3"
    print(f"mace-torch MACE ({size}), {r['atoms']} atoms, {r['edges']} edges, {args.dtype}, "
          f"{args.threads} threads")  # fmt: skip
    print(f"{'variant':<16} {'s/call (min)':>13} {'s/call (median)':>16} {'peak RSS GB':>12} "
          f"{'before calls GB':>16} {'calls GB':>9}")  # fmt: skip
    for v, r in results.items():
        print(f"{v:<16} {r['seconds_min']:13.3f} {r['seconds_median']:16.3f} "
              f"{r['peak_rss_gb']:12.2f} {r['before_gb']:16.2f} {r['call_gb']:9.2f}")  # fmt: skip
    a, b = results["fastcg"], results["e3nn"]
    print(
        f"speed-up {b['seconds_median'] / a['seconds_median']:.2f}x, "
        f"memory {a['peak_rss_gb'] / b['peak_rss_gb']:.3f} of e3nn's peak RSS, "
        f"{a['call_gb'] / b['call_gb']:.3f} of what its calls need, "
        f"max |dF| {np.abs(f - e).max():.2e} eV/A (max |F| {np.abs(e).max():.2e})"
    )
    d = results["fastcg-deployed"]
    print(
        f"deployed: {b['seconds_median'] / d['seconds_median']:.2f}x, "
        f"memory {d['peak_rss_gb'] / b['peak_rss_gb']:.3f} of e3nn's peak RSS, "
        f"max |dF| {np.abs(f_dep - e).max():.2e} eV/A"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
