"""NequIP 0.19 unmodified vs ``enable_FastCG``: seconds per energy+forces call, same process.

``--convert`` adds ``fastcg.convert(model)`` (the same swap, plus fastcg's twins of the e3nn
modules the modifier leaves alone).

The issue's model: ``NequIPGNNModel`` with 64 features, l_max 2, 4 layers (nequip's defaults
otherwise: parity, radial MLP depth 1 width 128, 8 Bessel functions), r_max 5, seeded random
weights, on rattled fcc Cu (6x6x6 cubic cells: 864 atoms; ``--cells 3``: 108), float32, 2
threads. Each call is nequip's own forward (energies, forces and stress by autograd); the
models take turns call by call and the table gives medians.

    .venv-fw/bin/python bench/nequip_modifier.py [--cells 6] [--repeats 5] [--threads 2]

(Not ``bench/nequip.py``: run as a script, that name would shadow the ``nequip`` package.)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import warnings

import torch
from torch.utils import benchmark


def build_model(dtype: str) -> torch.nn.Module:
    """The seeded NequIP model (the issue's sizes)."""
    from nequip.model import NequIPGNNModel
    from nequip.utils.global_state import set_global_state

    set_global_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NequIPGNNModel(
            seed=0, model_dtype=dtype, r_max=5.0, type_names=["Cu"], num_layers=4, l_max=2,
            num_features=64, avg_num_neighbors=40.0, per_type_energy_scales={"Cu": 1.0},
            per_type_energy_shifts={"Cu": 0.0},
        ).eval()  # fmt: skip


def build_data(cells: int) -> dict:
    """Rattled fcc Cu through nequip's data path (type mapper, neighbour list)."""
    import ase.build
    from nequip.data import compute_neighborlist_, from_ase
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper

    atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True).repeat((cells,) * 3)
    atoms.rattle(0.05, seed=0)
    data = ChemicalSpeciesToAtomTypeMapper(model_type_names=["Cu"])(from_ase(atoms))
    return compute_neighborlist_(data, 5.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=6, help="fcc cubic cells per side")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    more = "also fastcg.convert(model): the swap plus fastcg's twins of the other e3nn modules"
    parser.add_argument("--convert", action="store_true", help=more)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from nequip.model.modify_utils import modify

    model = build_model(args.dtype)
    fast = modify(copy.deepcopy(model), [{"modifier": "enable_FastCG"}])
    data = build_data(args.cells)
    models = {"nequip": model, "enable_FastCG": fast}
    if args.convert:
        import fastcg

        models["fastcg.convert"] = fastcg.convert(model)
    outs = {name: m(dict(data)) for name, m in models.items()}  # warm-up, and the check
    ref = outs["nequip"]
    err_e = max(float((o["total_energy"] - ref["total_energy"]).abs().max()) for o in outs.values())
    err_f = max(float((o["forces"] - ref["forces"]).abs().max()) for o in outs.values())

    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, m in models.items():  # interleaved: both see the same machine load
            timer = benchmark.Timer("m(dict(data))", globals={"m": m, "data": data},
                                    num_threads=args.threads)  # fmt: skip
            times[name].append(timer.timeit(1).median)

    n, e = len(data["pos"]), data["edge_index"].shape[1]
    print(f"NequIP 64 features, l_max 2, 4 layers; {n} Cu, {e} edges; {args.dtype}, "
          f"{args.threads} threads, {args.repeats} calls each")  # fmt: skip
    print(f"largest |E| difference {err_e:.2e} eV, max |F| difference {err_f:.2e} eV/A\n")
    base = statistics.median(times["nequip"])
    print("| model | s per energy+forces (median) | speed-up |")
    print("| --- | --- | --- |")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | {base / med:.1f}x |")


if __name__ == "__main__":
    main()
