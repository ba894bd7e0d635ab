"""SchNetPack's SO3net against fastcg's SO3Net (same weights): energy + forces on rattled fcc Cu.

Runs in the environment with SchNetPack (``make setup-fw``)::

    .venv-fw/bin/python bench/so3net.py            # 864 atoms, float32, 2 threads

Both models are timed in the same process, interleaved round by round (each round: one
SchNetPack call, one fastcg call, each timed by ``torch.utils.benchmark``), on the same
neighbour list; prints the medians, their ratio and max |dF| between the two.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.utils import benchmark


def schnetpack_model(features: int, interactions: int, lmax: int, n_rbf: int, cutoff: float):
    """SchNetPack's default SO3net (configs/model/representation/so3net.yaml), random weights."""
    import schnetpack as spk

    rep = spk.representation.SO3net(
        n_atom_basis=features, n_interactions=interactions, lmax=lmax,
        radial_basis=spk.nn.GaussianRBF(n_rbf, cutoff), cutoff_fn=spk.nn.CosineCutoff(cutoff),
    )  # fmt: skip
    nnp = spk.model.NeuralNetworkPotential(
        representation=rep,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(features, output_key="energy"),
                        spk.atomistic.Forces(energy_key="energy", force_key="forces")],
    )  # fmt: skip
    with torch.no_grad():  # SchNetPack zero-initialises biases: make every weight count
        for p in nnp.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return nnp.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=6, help="cells per side (6: 864 atoms)")
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--interactions", type=int, default=3)
    parser.add_argument("--lmax", type=int, default=2)
    parser.add_argument("--rbf", type=int, default=20)
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    import schnetpack.properties as P
    from ase.build import bulk

    from fastcg.calculator import neighbour_list
    from fastcg.models import SO3Net

    torch.manual_seed(0)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * ((args.repeat,) * 3)
    atoms.rattle(0.05, seed=0)
    cell = atoms.cell.array
    src, dst, s = neighbour_list(atoms.positions, cell, atoms.pbc, args.cutoff)
    pos = torch.from_numpy(atoms.positions).to(dtype)
    numbers = torch.from_numpy(atoms.numbers)
    src, dst = torch.from_numpy(src), torch.from_numpy(dst)
    shifts = torch.from_numpy(s @ cell).to(dtype)
    n = len(atoms)

    nnp = schnetpack_model(args.features, args.interactions, args.lmax, args.rbf, args.cutoff)
    nnp = nnp.to(dtype)
    model = SO3Net.from_schnetpack(nnp, atomic_numbers=[29])
    inputs = {P.Z: numbers, P.idx_i: dst, P.idx_j: src, P.offsets: shifts,
              P.n_atoms: torch.tensor([n]), P.idx_m: torch.zeros(n, dtype=torch.long),
              P.cell: torch.from_numpy(cell).to(dtype)[None],
              P.pbc: torch.ones(1, 3, dtype=torch.bool)}  # fmt: skip
    zeros = torch.zeros(3, 3, dtype=dtype)

    def run_spk() -> torch.Tensor:
        out = nnp({**inputs, P.R: pos.clone()})
        return out["forces"]

    def run_fastcg() -> torch.Tensor:
        p = pos.clone().requires_grad_(True)
        e = model(p, numbers, src, dst, shifts, zeros)
        return -torch.autograd.grad(e, p)[0]

    df = float((run_spk() - run_fastcg()).abs().max())
    times: dict[str, list[float]] = {"schnetpack": [], "fastcg": []}
    for _ in range(args.rounds):
        for name, fn in (("schnetpack", run_spk), ("fastcg", run_fastcg)):
            timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=args.threads)
            times[name].append(timer.timeit(1).median)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"SO3net energy+forces: {n} Cu atoms, {len(src)} edges, F={args.features}, "
          f"lmax={args.lmax}, {args.interactions} interactions, {args.dtype}, "
          f"{args.threads} threads, {args.rounds} interleaved rounds")  # fmt: skip
    for k, v in med.items():
        each = ", ".join(f"{t * 1e3:.0f}" for t in times[k])
        print(f"  {k:<11} median {v * 1e3:9.1f} ms  (each round: {each})")
    print(f"  speed-up {med['schnetpack'] / med['fastcg']:.2f}x   max |dF| {df:.2e} eV/A")


if __name__ == "__main__":
    main()
