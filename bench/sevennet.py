"""SevenNet-0 (sevenn 0.13) vs ``fastcg.convert(SevenNet-0)``: s per energy+forces(+stress).

The trained SevenNet-0 shipped in sevenn's wheel (5 interactions, 128x0e+64x1e+32x2e, l <= 2,
weight MLPs [8, 64, 64, 960]), on rattled diamond Si (512 atoms by default, cutoff 5 A), float32.
Both models run in this one process, their calls interleaved, two ways: sevenn's own
``SevenNetCalculator`` (``calc.model = fastcg.convert(calc.model)``; each call builds sevenn's
graph, the same work for both), and the model alone on a prebuilt graph. Medians and the ratio.

    .venv-fw/bin/python bench/sevennet.py [--threads 2] [--repeats 5] [--cells 4]
"""

from __future__ import annotations

import argparse
import time
import warnings


def structure(cells: int):
    """``8 cells^3`` atoms of diamond Si (a = 5.43 A), rattled by 0.05 A."""
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (cells, cells, cells)
    atoms.rattle(0.05, seed=0)
    return atoms


def model_call(model, graph: dict):
    """One energy+forces+stress call of a sevenn model on a fresh copy of a prebuilt graph."""
    from sevenn.atom_graph_data import AtomGraphData

    out = model(AtomGraphData.from_numpy_dict(dict(graph)))
    return out["inferred_force"]


def interleaved(calls: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of each call, alternating between the callables ``repeats`` times (after one
    warm-up call each)."""
    for f in calls.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for k, f in calls.items():
            start = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - start)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cells", type=int, default=4, help="diamond cubic cells per side (4: 512)")
    args = p.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation, "no TP accelerator"
        from sevenn.calculator import SevenNetCalculator
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        import fastcg

        ref = SevenNetCalculator("7net-0", device="cpu")
        fast = SevenNetCalculator(ref.model, file_type="model_instance", device="cpu")
        fast.model = fastcg.convert(ref.model)
    atoms = structure(args.cells)
    graph = unlabeled_atoms_to_graph(atoms, ref.cutoff)
    edges = graph["edge_index"].shape[1]
    forces = {}

    def calculator(calc, key):
        def call():
            calc.reset()  # ASE would return the cached results of the same positions
            a = atoms.copy()
            a.calc = calc
            forces[key] = a.get_forces()
            a.get_stress()  # the same call (sevenn computes the stress with the forces)

        return call

    rows = {
        "calculator": interleaved({"sevenn": calculator(ref, "sevenn"),
                                   "fastcg": calculator(fast, "fastcg")}, args.repeats),
        "model only": interleaved({"sevenn": lambda: model_call(ref.model, graph),
                                   "fastcg": lambda: model_call(fast.model, graph)},
                                  args.repeats),
    }  # fmt: skip
    df = float(np.abs(forces["fastcg"] - forces["sevenn"]).max())
    print(f"SevenNet-0, {len(atoms)} Si atoms, {edges} edges, float32, {args.threads} threads,"
          f" {args.repeats} interleaved repeats")  # fmt: skip
    print("s per energy+forces+stress call (median)")
    print(f"{'':<12} {'sevenn':>9} {'fastcg':>9} {'speed-up':>9}")
    for name, times in rows.items():
        a, b = float(np.median(times["sevenn"])), float(np.median(times["fastcg"]))
        print(f"{name:<12} {a:9.3f} {b:9.3f} {a / b:8.2f}x")
    print(f"max |dF| fastcg vs sevenn: {df:.2e} eV/A")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
