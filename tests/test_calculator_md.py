"""The ASE calculator (energy, forces, stress, periodic cells, converted e3nn models), NVE energy
conservation and the ``fastcg md`` job."""

import numpy as np
import pytest
import torch

pytest.importorskip("ase")
from ase.build import bulk, molecule  # noqa: E402
from ase.calculators.calculator import PropertyNotImplementedError  # noqa: E402

import fastcg  # noqa: E402
from fastcg import convert  # noqa: E402
from fastcg.calculator import FastCGCalculator  # noqa: E402
from fastcg.models import MACE, NequIP  # noqa: E402
from fastcg.models._reference import reference_twin  # noqa: E402
from fastcg.testing import default_dtype  # noqa: E402


def small_mace(zs, cutoff=3.0):
    with default_dtype(torch.float64):
        return MACE(zs, num_channels=4, max_ell=2, hidden_lmax=1, correlation=2, num_bessel=4,
                    radial_mlp=(8,), readout_hidden=4, cutoff=cutoff)  # fmt: skip


def copper(reps=(2, 2, 1), strain=True):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * reps
    atoms.rattle(0.05, seed=3)
    if strain:  # a triclinic cell exercises the shifts and the stress
        atoms.set_cell(atoms.cell.array @ np.array([[1, 0.03, 0], [0, 1, 0.02], [0.01, 0, 1]]),
                       scale_atoms=True)  # fmt: skip
    return atoms


def test_forces_and_stress_match_finite_differences():
    atoms = copper()
    atoms.calc = FastCGCalculator(small_mace([29]))
    forces, stress = atoms.get_forces(), atoms.get_stress()
    num_f = atoms.calc.calculate_numerical_forces(atoms, d=1e-5)
    num_s = atoms.calc.calculate_numerical_stress(atoms, d=1e-5)
    assert np.abs(forces - num_f).max() < 1e-8
    assert np.abs(stress - num_s).max() < 1e-8
    assert np.abs(forces.sum(axis=0)).max() < 1e-12  # translation invariance


def test_periodic_images_small_cell():
    # a 1-atom cell where every neighbour is a periodic image of the atom itself
    one = bulk("Cu", "fcc", a=3.61)
    big = one * (3, 3, 3)
    model = small_mace([29], cutoff=4.0)
    one.calc, big.calc = FastCGCalculator(model), FastCGCalculator(model)
    e1, e27 = one.get_potential_energy(), big.get_potential_energy()
    assert abs(27 * e1 - e27) < 1e-10 * max(1.0, abs(e27))
    np.testing.assert_allclose(np.tile(one.get_stress(), 1), big.get_stress(), atol=1e-10)


def test_molecule_no_stress_and_model_call():
    atoms = molecule("CH3OH")
    model = small_mace([1, 6, 8])
    atoms.calc = FastCGCalculator(model)
    e = atoms.get_potential_energy()
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()
    pos = torch.tensor(atoms.positions)
    i, j = np.nonzero(atoms.get_all_distances() < 3.0)
    keep = i != j
    src, dst = torch.tensor(j[keep]), torch.tensor(i[keep])
    direct = model(pos, torch.tensor(atoms.numbers), src, dst, torch.zeros(len(src), 3),
                   torch.zeros(3, 3))  # fmt: skip
    assert abs(float(direct) - e) < 1e-12


def test_converted_e3nn_model_in_the_calculator():
    # the e3nn twin is a user model built from e3nn layers with the fastcg model interface
    with default_dtype(torch.float64):
        model = NequIP([29], num_features=4, lmax=2, num_layers=2, num_basis=4, cutoff=3.0)
    e3nn_model = reference_twin(model)
    converted = convert(e3nn_model)
    assert sum(isinstance(m, fastcg.nn.TensorProduct) for m in converted.modules()) >= 4
    assert not any(isinstance(m, fastcg.nn.TensorProduct) for m in e3nn_model.modules())  # a copy
    atoms = copper()
    results = []
    for m in (e3nn_model, converted):
        atoms.calc = FastCGCalculator(m)
        results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
    (e0, f0, s0), (e1, f1, s1) = results
    assert abs(e0 - e1) < 1e-10 * max(1.0, abs(e0))
    assert np.abs(f0 - f1).max() < 1e-9
    assert np.abs(s0 - s1).max() < 1e-9


def test_nve_conserves_energy_float64():
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from fastcg.md import run_nve

    atoms = copper((2, 2, 2), strain=False)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    run = run_nve(atoms, FastCGCalculator(small_mace([29])), 100, 1.0, False, "test")
    etot = run["epot"] + run["ekin"]
    drift = np.abs(etot - etot[0]).max() / len(atoms)
    # bound: 1e-6 eV/atom over 100 fs at dt = 1 fs (kinetic energy ~ 0.04 eV/atom)
    assert drift < 1e-6, drift
    assert np.ptp(run["ekin"]) > 1e3 * drift * len(atoms)  # the atoms did move


def test_md_job_runs(tmp_path, capsys):
    from fastcg.md import main

    png = tmp_path / "md.png"
    argv = ["--model", "mace", "--structure", "cu-small", "--steps", "3", "--reference-steps",
            "2", "--small", "--dtype", "float64", "--threads", "1", "--no-progress", "--plot",
            str(png)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "atom-steps/s" in out and "speed-up" in out and "energy drift per atom" in out
    df = float(out.split("max |dF|")[1].split(":")[1].split()[0])
    assert df < 1e-9
    assert png.stat().st_size > 1000


def test_md_job_reads_a_structure_file(tmp_path, capsys):
    from fastcg.md import main

    path = tmp_path / "water.xyz"
    molecule("H2O").write(path)
    argv = ["--model", "schnet", "--structure", str(path), "--steps", "2", "--small",
            "--no-progress", "--plot", ""]  # fmt: skip
    assert main(argv) == 0
    assert "3 atoms" in capsys.readouterr().out


def test_neighbour_list_is_sorted_by_receiver_and_complete():
    from ase.neighborlist import primitive_neighbor_list

    from fastcg.calculator import neighbour_list

    atoms = copper()
    src, dst, shifts = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, 3.0)
    assert (np.diff(dst) >= 0).all()
    i, j, s = primitive_neighbor_list("ijS", atoms.pbc, atoms.cell.array, atoms.positions, 3.0)
    ours = sorted(zip(src.tolist(), dst.tolist(), map(tuple, shifts.tolist())))
    theirs = sorted(zip(j.tolist(), i.tolist(), map(tuple, s.tolist())))
    assert ours == theirs


def _tripwire_model(model):
    """``model`` whose forward fails the test: the calculator's checks must run before it."""

    def forward(*args, **kwargs):
        raise AssertionError("the model ran on input the calculator should have rejected")

    model.forward = forward
    return model


@pytest.mark.parametrize("scripted", [False, True], ids=["module", "torchscript"])
def test_unknown_element_names_it_and_the_supported_ones(scripted):
    from fastcg.models import SchNet

    model = SchNet([1, 6], num_features=4)
    if scripted:  # no config dict: the elements come from the species table
        model = torch.jit.script(model)
    atoms = molecule("CH3OH")  # O is not one of the model's elements
    atoms.calc = FastCGCalculator(model, cutoff=3.0)
    with pytest.raises(ValueError) as exc:
        atoms.get_potential_energy()
    msg = str(exc.value)
    assert "O (Z=8)" in msg and "[1]" in msg  # the element and where it is (atom 1 in CH3OH)
    assert "H (Z=1)" in msg and "C (Z=6)" in msg  # what the model supports
    assert "[0, 2, 3, 4, 5]" not in msg  # only the unsupported atoms are listed


def test_unknown_element_is_rejected_before_the_model_runs():
    atoms = molecule("H2O")
    atoms.calc = FastCGCalculator(_tripwire_model(small_mace([1, 6])))
    with pytest.raises(ValueError, match=r"O \(Z=8\) at atom indices \[0\]"):
        atoms.get_potential_energy()


def test_coincident_atoms_raise_naming_the_indices():
    atoms = molecule("CH3OH")
    atoms.positions[4] = atoms.positions[1]
    atoms.calc = FastCGCalculator(_tripwire_model(small_mace([1, 6, 8])))
    with pytest.raises(ValueError, match=r"atoms 1 and 4\b") as exc:
        atoms.get_forces()
    assert "1 pair(s)" in str(exc.value)  # the full list's two directions count once


def test_coincident_atoms_without_the_check_give_nan():
    # why the check exists: the same model on the same input, called directly, is NaN
    atoms = molecule("H2O")
    atoms.positions[2] = atoms.positions[0]
    model = small_mace([1, 8])
    i, j = np.nonzero(atoms.get_all_distances() < 3.0)
    src, dst = torch.tensor(j[i != j]), torch.tensor(i[i != j])
    pos = torch.tensor(atoms.positions, requires_grad=True)
    energy = model(pos, torch.tensor(atoms.numbers), src, dst, torch.zeros(len(src), 3),
                   torch.zeros(3, 3))  # fmt: skip
    (forces,) = torch.autograd.grad(energy, pos)
    assert not (torch.isfinite(energy) and torch.isfinite(forces).all())
    atoms.calc = FastCGCalculator(model)
    with pytest.raises(ValueError, match=r"atoms 0 and 2\b"):
        atoms.get_potential_energy()


def test_atom_on_a_periodic_image_raises_naming_the_shift():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.positions[3] = atoms.positions[0] + atoms.cell.array[0]
    atoms.calc = FastCGCalculator(_tripwire_model(small_mace([29])))
    with pytest.raises(ValueError, match=r"atoms 0 and 3 \(periodic image, cell shift"):
        atoms.get_potential_energy()


def test_float32_model_sees_rounded_positions():
    # 2e-6 A apart (above MIN_DISTANCE) in float64, but the same point once rounded to float32
    # at 1000 A (spacing 6e-5 A): the check runs in the model's dtype, so float32 catches it
    atoms = molecule("H2")
    atoms.positions[:] = [[1000.0, 0, 0], [1000.000002, 0, 0]]
    atoms.calc = FastCGCalculator(small_mace([1]))
    assert np.isfinite(atoms.get_potential_energy())
    atoms.calc = FastCGCalculator(_tripwire_model(small_mace([1])), dtype=torch.float32)
    with pytest.raises(ValueError, match=r"atoms 0 and 1\b"):
        atoms.get_potential_energy()


def test_non_finite_positions_and_zero_periodic_cell_raise():
    atoms = molecule("H2O")
    atoms.positions[1, 2] = np.nan
    atoms.calc = FastCGCalculator(_tripwire_model(small_mace([1, 8])))
    with pytest.raises(ValueError, match=r"positions of atoms \[1\] are not finite"):
        atoms.get_potential_energy()
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.cell[2] = 0.0
    atoms.calc = FastCGCalculator(_tripwire_model(small_mace([29])))
    with pytest.raises(ValueError, match=r"pbc\[2\] is True but cell vector 2 is zero"):
        atoms.get_potential_energy()
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.cell[0, 1] = np.inf
    atoms.calc = FastCGCalculator(_tripwire_model(small_mace([29])))
    with pytest.raises(ValueError, match="atoms.cell is not finite"):
        atoms.get_potential_energy()


def test_calculator_arguments_are_checked():
    model = small_mace([29])
    for cutoff in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="cutoff"):
            FastCGCalculator(model, cutoff=cutoff)
    with pytest.raises(ValueError, match="dtype"):
        FastCGCalculator(model, dtype=torch.float16)
    with pytest.raises(TypeError, match="model"):
        FastCGCalculator("mace.model")


@pytest.mark.parametrize("zs", [[], [1, 1], [0], [119], [1.5], ["H"], [True]])
def test_models_reject_bad_atomic_numbers(zs):
    from fastcg.models import SchNet

    with pytest.raises(ValueError, match="atomic_numbers"):
        SchNet(zs, num_features=4)
