"""torch-sim batched MACE: ``MaceModel(model)`` vs ``MaceModel(fastcg.convert(model))``, s per
NVE step of a batch of Cu systems.

The issue's MACE (mace-torch 0.3.16, 128x0e+128x1o, max_ell 3, correlation 3, 2 interactions,
radial MLP [64, 64, 64], 10 Bessel functions, r_max 5; seeded random weights,
``fastcg.integrations.mace.random_model``) in torch-sim 0.3.0's own ``MaceModel`` (forces, no
stress: what NVE / NVT need), float32, on ``--batch`` fcc Cu cells of ``--cells``^3 cubic cells
each (108 atoms at 3), rattled differently. Each step is torch-sim's velocity Verlet
(``ts.nve``): one neighbour list per system (vesin) and one batched model call. The variants
run in one process, their steps interleaved (mace-torch, fastcg, fastcg, ...) after a warm-up
step each; medians. "FastCGModel" is fastcg's own torch-sim model
(``fastcg.integrations.torchsim``) on the converted model.

    .venv-mace/bin/python bench/torchsim.py [--threads 2] [--batch 4] [--cells 3] [--steps 3]

On a machine with more runnable threads than cores, OpenMP's spin-waiting threads take the
cores' time from each other (fastcg's kernels end many short parallel regions): there, run it
with ``OMP_WAIT_POLICY=PASSIVE`` (4 x 108 Cu, 2 threads at a load of 12: 6.4 s per fastcg call
spinning, 1.8 s passive).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def build(small: bool):
    """The seeded mace-torch model (float64; the variants move it to their dtype)."""
    import torch

    import fastcg  # noqa: F401  (before mace: e3nn 0.4.4's import flag)
    from fastcg.integrations.mace import random_model
    from fastcg.models._reference import default_dtype

    with default_dtype(torch.float64):
        return random_model([29], 8 if small else 128, 2 if small else 3, 0)


def structures(batch: int, cells: int) -> list:
    from ase.build import bulk

    systems = []
    for k in range(batch):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (cells, cells, cells)
        atoms.rattle(0.05, seed=k)
        systems.append(atoms)
    return systems


def variants(small: bool, dtype) -> dict:
    """label -> torch-sim model: mace-torch itself, converted, converted in FastCGModel."""
    import torch

    from fastcg import convert
    from fastcg.integrations.torchsim import FastCGModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch-sim warns about its optional dependencies
        from torch_sim.models.mace import MaceModel

    cpu = torch.device("cpu")
    kwargs = {"device": cpu, "dtype": dtype, "compute_stress": False}
    model = build(small)
    return {
        "mace-torch": MaceModel(model=model, **kwargs),
        "fastcg.convert": MaceModel(model=convert(model), **kwargs),
        "FastCGModel": FastCGModel(convert(model), **kwargs),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4, help="systems per batch")
    p.add_argument("--cells", type=int, default=3, help="cubic fcc cells per axis per system")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--small", action="store_true", help="tiny model (smoke test)")
    args = p.parse_args()

    import torch
    import torch_sim as ts
    from torch_sim.units import MetalUnits

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    models = variants(args.small, dtype)
    state = ts.io.atoms_to_state(structures(args.batch, args.cells), torch.device("cpu"), dtype)
    kt = torch.tensor(300 * MetalUnits.temperature, dtype=dtype)
    dt = torch.tensor(1e-3 * MetalUnits.time, dtype=dtype)  # 1 fs
    runs, times = {}, {label: [] for label in models}
    for label, model in models.items():
        init, update = ts.nve(model, dt=dt, kT=kt, seed=0)
        runs[label] = [update, update(init(state.clone()))]  # init + one warm-up step
    forces = {label: run[1].forces.double() for label, run in runs.items()}
    for _ in range(args.steps):
        for label, run in runs.items():
            start = time.perf_counter()
            run[1] = run[0](run[1])
            times[label].append(time.perf_counter() - start)
    report(args, state.n_atoms, times, forces)
    return 0


def report(args: argparse.Namespace, natoms: int, times: dict, forces: dict) -> None:
    size = "small model" if args.small else "128x0e+128x1o, max_ell 3, correlation 3"
    print(f"torch-sim 0.3.0 MaceModel, MACE ({size}), batch of {args.batch} x "
          f"{natoms // args.batch} Cu atoms, {args.dtype}, {args.threads} threads, "
          f"NVE steps interleaved, {args.steps} each")  # fmt: skip
    base = float(np.median(times["mace-torch"]))
    print(f"{'variant':<16} {'s/step (median)':>16} {'atom-steps/s':>13} {'speed-up':>9} "
          f"{'max |dF|':>9}")  # fmt: skip
    for label, t in times.items():
        med = float(np.median(t))
        df = float((forces[label] - forces["mace-torch"]).abs().max())
        print(f"{label:<16} {med:16.3f} {natoms / med:13.1f} {base / med:8.2f}x {df:9.1e}")
    print(f"max |F| {float(forces['mace-torch'].abs().max()):.2e} eV/A (after the warm-up step)")


if __name__ == "__main__":
    raise SystemExit(main())
