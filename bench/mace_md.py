"""mace-torch MACE vs ``fastcg.convert(MACE)`` vs Symmetrix-XL: s per energy+forces, peak RSS.

The issue's target model: ScaleShiftMACE, hidden irreps 128x0e+128x1o, max_ell 3, correlation 3,
2 interactions, radial MLP [64, 64, 64], 10 Bessel functions, r_max 5, on 864-atom fcc Cu
(rattled), float32, 2 threads. "fastcg-tabulated" is ``convert(model, radial="tabulated")`` (the
radial MLPs read from cubic Hermite tables, knots every 0.01 A: an opt-in approximation for MD;
its max |dF| column is its error). Each variant runs in its own process so that peak RSS is its own;
"calls GB" is the high-water mark of the energy+forces calls over the resident memory before them
(torch, models). "fastcg-deployed" is the converted model saved with torch.jit.script and run by
FastCGCalculator in a process that never imports mace-torch or e3nn (as LAMMPS would run it).
"symmetrix" is Symmetrix-XL's ASE calculator (CPU, OpenMP) on the same model converted by its
``symmetrix_extract_mace`` (the bench extra installs it; its model-specific code is compiled on
first use and cached in ~/.cache/symmetrix), with its defaults (a 0.5 A neighbour skin: the
rattled calls reuse its neighbour list; fastcg's calculator builds one per call). Without
symmetrix-xl installed that variant is left out.

    .venv-mace/bin/python bench/mace_md.py [--threads 2] [--repeats 3] [--dtype float32]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

VARIANTS = ("e3nn", "fastcg", "fastcg-deployed", "fastcg-tabulated", "symmetrix")
LABELS = {"e3nn": "mace-torch"}


def build(small: bool):
    """The seeded mace-torch model (float64)."""
    import torch

    import fastcg  # noqa: F401  (before mace: e3nn 0.4.4's import flag)
    from fastcg.integrations.mace import random_model
    from fastcg.models._reference import default_dtype

    with default_dtype(torch.float64):
        return random_model([29], 8 if small else 128, 2 if small else 3, 0, scale_shift=True)


def save_models(path: str, small: bool, symmetrix: bool) -> None:
    """convert -> the fastcg model interface -> torch.jit.script -> ``path``; with
    ``symmetrix``, also the mace-torch model and Symmetrix-XL's JSON of it beside it."""
    import warnings

    import torch

    from fastcg import convert
    from fastcg.integrations.mace import MaceTorchModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation
        if symmetrix:
            from symmetrix.cli.extract_mace import main as extract

            torch.save(build(small), path + ".model")
            extract(["--model", path + ".model", "--output", path + ".json"])
        torch.jit.script(MaceTorchModel(convert(build(small)))).save(path)


def measure(variant: str, threads: int, repeats: int, dtype_name: str, small: bool,
            deployed: str | None = None, cells: int = 6) -> dict:  # fmt: skip
    """One variant in this process: seconds per call (min and median), edges, peak RSS."""
    atoms = structure(2 if small else cells)
    if variant == "symmetrix":  # torch stays out of its process (and its peak RSS)
        from symmetrix import Symmetrix

        atoms.calc = Symmetrix(deployed + ".json", dtype=dtype_name)
        return time_calls(variant, atoms, repeats) | {"edges": None}
    import torch

    from fastcg.calculator import FastCGCalculator, neighbour_list

    torch.set_num_threads(threads)
    if variant == "fastcg-deployed":
        calc = FastCGCalculator(torch.jit.load(deployed), dtype=getattr(torch, dtype_name),
                                cutoff=5.0)  # fmt: skip
        assert not any(m in sys.modules for m in ("mace", "e3nn")), "imports mace / e3nn"
    else:
        model = build(small)
        if variant in ("fastcg", "fastcg-tabulated"):
            from fastcg.convert import convert

            model = convert(model, radial="tabulated" if variant == "fastcg-tabulated" else "exact")
        calc = FastCGCalculator(model, dtype=getattr(torch, dtype_name))
    atoms.calc = calc
    result = time_calls(variant, atoms, repeats)
    src, _, _ = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0)
    return result | {"edges": int(len(src))}


def structure(reps: int):
    """fastcg.md.build_structure's ``cu`` (6) / ``cu-small`` (2): ``4 reps^3`` rattled fcc Cu
    atoms (ASE alone: no torch in the process)."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (reps, reps, reps)
    atoms.rattle(0.05, seed=0)
    return atoms


def time_calls(variant: str, atoms, repeats: int) -> dict:
    """Seconds per energy+forces call of ``atoms.calc`` (min, median), peak RSS, forces."""
    import numpy as np

    # What the calls themselves need: resident memory before them (torch, the models) and the
    # high-water mark of the calls alone (Linux: writing 5 to clear_refs resets VmHWM).
    before = _proc_status_gb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    # warm-up: e3nn's codegen, allocations; TorchScript's profiling executor optimises the
    # graph over its first calls
    for _ in range(1 if variant in ("e3nn", "fastcg", "fastcg-tabulated") else 3):
        forces = atoms.get_forces()
    times = []
    for k in range(repeats):
        atoms.rattle(1e-4, seed=k + 1)
        start = time.perf_counter()
        atoms.get_forces()
        times.append(time.perf_counter() - start)
    return {
        "variant": variant, "seconds_min": min(times), "seconds_median": float(np.median(times)),
        "atoms": len(atoms),
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
    p.add_argument(
        "--cells",
        type=int,
        default=6,
        help="fcc cubic cells per side: 4 cells^3 atoms (3: 108, 6: 864, 10: 4000)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=VARIANTS,
        default=VARIANTS,
        help="these variants alone (e3nn: mace-torch, minutes past a few 1000 atoms)",
    )
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--deployed", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args()
    has_symmetrix = importlib.util.find_spec("symmetrix") is not None
    if args.save:
        save_models(args.save, args.small, has_symmetrix)
        return 0
    if args.variant:
        print(json.dumps(measure(args.variant, args.threads, args.repeats, args.dtype,
                                 args.small, args.deployed, args.cells)))  # fmt: skip
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        deployed = os.path.join(tmp, "mace_fastcg.pt")
        variants = [v for v in args.only if v != "symmetrix" or has_symmetrix]
        for variant in ("save", *variants):
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--repeats",
                   str(args.repeats), "--dtype", args.dtype, "--deployed", deployed, "--cells",
                   str(args.cells)] + (["--small"] if args.small else [])  # fmt: skip
            cmd += ["--save", deployed] if variant == "save" else ["--variant", variant]
            env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}  # Symmetrix's OpenMP
            run = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if run.returncode != 0:
                print(f"{variant} failed:\n{run.stderr[-3000:]}", file=sys.stderr)
                if variant in ("save", "e3nn", "fastcg"):
                    return 1
                continue  # a peer that fails (e.g. Symmetrix-XL's compiler) leaves the others
            if variant != "save":
                results[variant] = json.loads(run.stdout.strip().splitlines()[-1])
                r = results[variant]
                print(f"{variant}: {r['seconds_median']:.3f} s per call (median), peak RSS "
                      f"{r['peak_rss_gb']:.2f} GB", file=sys.stderr, flush=True)  # fmt: skip
    report(results, args)
    return 0


def report(results: dict, args: argparse.Namespace) -> None:
    """The table: time, memory, and against mace-torch (speed-up, max |dF|) and fastcg."""
    import numpy as np

    forces = {v: np.array(r.pop("forces0")) for v, r in results.items()}
    nan = {"seconds_median": float("nan")}
    base, ours = results.get("e3nn", nan), results.get("fastcg", nan)
    first = next(r for r in results.values() if r["edges"] is not None)
    ref = forces.get("e3nn", forces.get("fastcg"))
    size = "small model" if args.small else "128x0e+128x1o, max_ell 3, correlation 3"
    print(f"ScaleShiftMACE ({size}), {first['atoms']} atoms, {first['edges']} edges, "
          f"{args.dtype}, {args.threads} threads, each in its own process")  # fmt: skip
    print(f"{'variant':<16} {'s/call (min)':>13} {'s/call (median)':>16} {'peak RSS GB':>12} "
          f"{'calls GB':>9} {'vs mace-torch':>14} {'fastcg is':>10} {'max |dF|':>9}")  # fmt: skip
    for v, r in results.items():
        t = r["seconds_median"]
        print(f"{LABELS.get(v, v):<16} {r['seconds_min']:13.3f} {t:16.3f} "
              f"{r['peak_rss_gb']:12.2f} {r['call_gb']:9.2f} "
              f"{base['seconds_median'] / t:13.2f}x {t / ours['seconds_median']:9.2f}x "
              f"{np.abs(forces[v] - ref).max():9.1e}")  # fmt: skip
    print(f"max |F| {np.abs(ref).max():.2e} eV/A; 'fastcg is' = that row's time over fastcg's "
          "(in-process); max |dF| against mace-torch (fastcg without it)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
