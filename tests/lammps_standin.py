"""A stand-in for LAMMPS's ML-IAP unified data object, over 1 rank or several (mpi4py).

What ``pair_style mliap unified`` gives a Python model on each MPI rank, as in LAMMPS's
``mliap_unified_couple`` (CPU coupling):

- ``nlocal`` owned atoms, then ghost atoms up to ``ntotal``: every periodic image of any atom
  (owned here, or by another rank) inside the rank's sub-domain grown by the communication
  cutoff, own images included; ghosts in no particular order (LAMMPS orders them by swap);
- ``elems[ntotal]``: element index of each atom (into the model's ``element_types``);
- a full neighbour list of the owned atoms: ``pair_i < nlocal``, ``pair_j < ntotal``,
  ``rij = x_j - x_i`` shorter than ``2 * rcutfac``; ``npairs``;
- ``eatoms[nlocal]`` and ``energy`` written by the model; ``update_pair_forces(fij)``:
  ``f[i] += fij``, ``f[j] -= fij``; after the model, LAMMPS's reverse communication sums the
  ghosts' forces into their owners (``newton on``);
- ``forward_exchange(in, out, vec_len)``: ``out = in``, then each ghost row is its owner's
  row; ``reverse_exchange(in, out, vec_len)``: ``out = in``, then each ghost row is added to
  its owner's row (the ghost rows are left as they were, as LAMMPS's ``unpack_reverse_comm``).

Sub-domains are slabs along x of an orthorhombic periodic box (LAMMPS's ``processors n 1 1``).
An NVE driver keeps the whole state on every rank and decomposes anew at every step (LAMMPS
with ``neighbor ... every 1``): each rank computes its owned atoms' forces, which are gathered.

Run under MPI (``mpirun -n 2 python tests/lammps_standin.py OUT.npz``) it writes the forces and
NVE energies of the models of :func:`models` on :func:`structure` (what the tests compare).
"""

from __future__ import annotations

import itertools
import sys

import numpy as np
import torch


class SerialComm:
    """The two mpi4py calls used here, on one rank without MPI."""

    rank, size = 0, 1

    def allgather(self, obj):
        return [obj]


class MLIAPData:
    """One rank's view of the system (see the module docstring)."""

    def __init__(self, positions: np.ndarray, lengths: np.ndarray, elems: np.ndarray,
                 cutoff: float, comm=None, seed: int = 0) -> None:  # fmt: skip
        self.comm = comm or SerialComm()
        rank, size = self.comm.rank, self.comm.size
        x = np.mod(positions, lengths)
        slab = lengths[0] / size
        owner = np.minimum((x[:, 0] // slab).astype(int), size - 1)
        owned = np.flatnonzero(owner == rank)
        # each atom's index among its owner's atoms
        self.owner_rank = owner
        self.owner_index = np.zeros(len(x), dtype=int)
        for r in range(size):
            ids = np.flatnonzero(owner == r)
            self.owner_index[ids] = np.arange(len(ids))
        lo = np.array([rank * slab, 0.0, 0.0]) - cutoff
        hi = np.array([(rank + 1) * slab, lengths[1], lengths[2]]) + cutoff
        reach = [int(np.ceil(cutoff / length)) for length in lengths]
        ghost_ids, ghost_pos = [], []
        for shift in itertools.product(*(range(-k, k + 1) for k in reach)):
            p = x + np.array(shift) * lengths
            inside = ((p >= lo) & (p < hi)).all(axis=1)
            if not any(shift):
                inside &= owner != rank
            ghost_ids.append(np.flatnonzero(inside))
            ghost_pos.append(p[inside])
        ghost_ids, ghost_pos = np.concatenate(ghost_ids), np.concatenate(ghost_pos)
        order = np.random.default_rng(seed + rank).permutation(len(ghost_ids))
        self.ids = np.concatenate([owned, ghost_ids[order]])  # global atom of every row
        self.x = np.concatenate([x[owned], ghost_pos[order]])
        self.nlocal, self.ntotal = len(owned), len(self.ids)
        self.elems = elems[self.ids].astype(np.int32)
        d = self.x[None, :, :] - self.x[: self.nlocal, None, :]
        r2 = (d * d).sum(-1)
        i, j = np.nonzero((r2 < cutoff**2) & (r2 > 0))
        self.pair_i, self.pair_j = i.astype(np.int32), j.astype(np.int32)
        self.rij = np.ascontiguousarray(d[i, j])
        self.npairs = len(i)
        self.eatoms = np.zeros(self.nlocal)
        self.energy = 0.0
        self.f = np.zeros((self.ntotal, 3))

    # -- what the model calls ------------------------------------------------------------------
    def update_pair_forces(self, fij: np.ndarray) -> None:
        fij = np.asarray(fij, dtype=np.float64).reshape(self.npairs, 3)
        np.add.at(self.f, self.pair_i, fij)
        np.subtract.at(self.f, self.pair_j, fij)

    def update_pair_forces_gpu(self, fij: torch.Tensor) -> None:
        self.update_pair_forces(fij.detach().cpu().numpy())

    def forward_exchange(self, feats: torch.Tensor, out: torch.Tensor, vec_len: int) -> None:
        src, dst = self._rows(feats, vec_len), self._rows(out, vec_len)
        dst[:] = src
        blocks = self.comm.allgather(src[: self.nlocal].copy())
        g = self.ids[self.nlocal :]
        for r, block in enumerate(blocks):
            mine = self.owner_rank[g] == r
            dst[self.nlocal :][mine] = block[self.owner_index[g[mine]]]

    def reverse_exchange(self, feats: torch.Tensor, out: torch.Tensor, vec_len: int) -> None:
        src, dst = self._rows(feats, vec_len), self._rows(out, vec_len)
        dst[:] = src
        self._sum_ghosts_into_owners(src, dst)

    # -- what LAMMPS does around the model -----------------------------------------------------
    def _rows(self, t, vec_len: int) -> np.ndarray:
        a = t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        assert a.shape == (self.ntotal, vec_len) and a.flags.c_contiguous, (a.shape, vec_len)
        return a

    def _sum_ghosts_into_owners(self, src: np.ndarray, dst: np.ndarray) -> None:
        g = self.ids[self.nlocal :]
        sent = self.comm.allgather((self.owner_rank[g], self.owner_index[g], src[self.nlocal :]))
        for ranks, index, rows in sent:
            mine = ranks == self.comm.rank
            np.add.at(dst, index[mine], rows[mine])

    def owned_forces(self) -> np.ndarray:
        """Forces on the owned atoms after the reverse communication of the ghosts' forces."""
        f = self.f.copy()
        self._sum_ghosts_into_owners(self.f, f)
        return f[: self.nlocal]


def compute(mliap, positions, lengths, elems, comm=None) -> tuple[float, np.ndarray, np.ndarray]:
    """``(energy, forces[N, 3], atom energies[N])`` of the whole system, every rank's share
    gathered (the same on every rank)."""
    data = MLIAPData(positions, lengths, elems, 2 * mliap.rcutfac, comm)
    mliap.compute_forces(data)
    n = len(positions)
    parts = data.comm.allgather((data.ids[: data.nlocal], data.owned_forces(), data.eatoms))
    forces, eatoms = np.zeros((n, 3)), np.zeros(n)
    for ids, f, e in parts:
        forces[ids], eatoms[ids] = f, e
    energy = sum(data.comm.allgather(data.energy))
    return energy, forces, eatoms


def run_nve(mliap, atoms, steps: int, dt: float, comm=None) -> np.ndarray:
    """Velocity-Verlet NVE in ASE units (``dt`` in ASE time); ``[steps + 1, 2]`` of
    (potential, kinetic) energies."""
    lengths = atoms.cell.lengths()
    elems = element_indices(mliap, atoms)
    x, v = atoms.positions.copy(), atoms.get_velocities()
    m = atoms.get_masses()[:, None]
    e, f, _ = compute(mliap, x, lengths, elems, comm)
    out = [(e, 0.5 * (m * v * v).sum())]
    for _ in range(steps):
        v = v + 0.5 * dt * f / m
        x = x + dt * v
        e, f, _ = compute(mliap, x, lengths, elems, comm)
        v = v + 0.5 * dt * f / m
        out.append((e, 0.5 * (m * v * v).sum()))
    return np.array(out)


def element_indices(mliap, atoms) -> np.ndarray:
    """LAMMPS's ``elems``: each atom's index into ``mliap.element_types``."""
    return np.array([mliap.element_types.index(s) for s in atoms.get_chemical_symbols()])


# -- the test case: shared by the test (1 rank, in process) and the MPI run ---------------------
STEPS, DT_FS = 4, 2.0


def models() -> dict:
    """Small seeded float64 fastcg models (two message-passing layers each), Cu and Ag."""
    from fastcg.models import MACE, NequIP, SchNet
    from fastcg.models._reference import default_dtype

    zs, out = [29, 47], {}
    builders = {
        "schnet": lambda: SchNet(zs, num_features=8, num_interactions=2, num_gaussians=8,
                                 cutoff=3.0),  # fmt: skip
        "nequip": lambda: NequIP(zs, num_features=4, lmax=1, num_layers=2, num_basis=4,
                                 cutoff=3.0, radial_hidden=(8,)),  # fmt: skip
        "mace": lambda: MACE(zs, num_channels=4, max_ell=2, hidden_lmax=1, correlation=2,
                             num_bessel=4, radial_mlp=(8,), readout_hidden=4, cutoff=3.0),
    }  # fmt: skip
    for name, build in builders.items():
        torch.manual_seed(0)
        with default_dtype(torch.float64):
            model = build()
        with torch.no_grad():  # non-zero per-species energies, so eatoms are checked too
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        out[name] = model
    return out


def structure():
    """Rattled fcc Cu with some Ag, 48 atoms, orthorhombic box, Maxwell-Boltzmann velocities."""
    from ase import units
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 2, 2)
    symbols = atoms.get_chemical_symbols()
    for k in (1, 7, 20, 33, 41):
        symbols[k] = "Ag"
    atoms.set_chemical_symbols(symbols)
    atoms.rattle(0.08, seed=1)
    kt = 600 * units.kB  # 600 K, Maxwell-Boltzmann
    sigma = np.sqrt(kt / atoms.get_masses())[:, None]
    atoms.set_velocities(sigma * np.random.default_rng(2).standard_normal((len(atoms), 3)))
    return atoms


def run_case(comm=None, exchange: bool = True) -> dict[str, np.ndarray]:
    """Forces, atom energies and NVE energies of every model (arrays keyed ``name/what``);
    without the exchange, no NVE run."""
    from ase.units import fs

    from fastcg.integrations.lammps import FastCGMLIAP

    atoms, out = structure(), {}
    for name, model in models().items():
        mliap = FastCGMLIAP(model)
        mliap.exchange = exchange  # False: ghosts keep wrong features (to show it matters)
        elems = element_indices(mliap, atoms)
        e, f, ea = compute(mliap, atoms.positions, atoms.cell.lengths(), elems, comm)
        out[f"{name}/energy"], out[f"{name}/forces"], out[f"{name}/eatoms"] = np.array(e), f, ea
        if exchange:
            out[f"{name}/nve"] = run_nve(mliap, atoms, STEPS, DT_FS * fs, comm)
    return out


def main(path: str) -> None:
    from mpi4py import MPI

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    out = run_case(comm)
    noex = run_case(comm, exchange=False)
    out.update({f"no_exchange/{k}": v for k, v in noex.items()})
    out["size"] = np.array(comm.size)
    if comm.rank == 0:
        np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
