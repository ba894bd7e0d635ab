"""fastcg.convert(mace_model, radial="tabulated"): the radial MLPs read from cubic Hermite tables
(opt-in, for MD): mace-torch's energies, forces and stress to the tables' measured error."""

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("mace")
from ase.build import bulk  # noqa: E402

from fastcg import convert  # noqa: E402
from fastcg.calculator import FastCGCalculator  # noqa: E402
from fastcg.integrations.mace import EdgeLengths, MaceTorchModel  # noqa: E402

from .test_convert_mace import INTERACTIONS, energy_forces, mace_model, methanol_graph  # noqa: E402


def cu(rattle_seed: int = 1):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
    atoms.rattle(0.1, seed=rattle_seed)
    return atoms


@pytest.mark.parametrize("interaction", INTERACTIONS)
def test_energy_forces_stress_to_the_table_error(interaction):
    """float64: energies, forces and stress close to mace-torch's; the tables' error shrinks as
    step^4, the forces' (derivatives of the spline) as step^3 (a step 4x finer: ~64x)."""
    model = mace_model(interaction, zs=(29,))
    atoms = cu()
    atoms.calc = FastCGCalculator(model)
    ref = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    errs = []
    for step in (0.04, 0.01):
        tab = convert(model, radial="tabulated", step=step)
        assert isinstance(tab.radial_embedding, EdgeLengths)
        abs_err, rel_err = tab.radial_table_error
        assert 0 < rel_err < (1e-3 if step == 0.04 else 1e-6)
        atoms.calc = FastCGCalculator(tab)
        got = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        diffs = [np.abs(g - r).max() for g, r in zip(got[1:], ref[1:])]
        err = max(abs(got[0] - ref[0]) / len(atoms), *diffs)
        scale = max(1.0, np.abs(ref[1]).max())
        assert err < (1e-4 if step == 0.04 else 2e-6) * scale
        errs.append(err)
    assert errs[0] / errs[1] > 20
    # the original model is untouched, the tabulated copy gives first derivatives only
    assert not isinstance(model.radial_embedding, EdgeLengths)


def test_float32_and_methanol():
    """float32 (the MD setting) and several species: within float32 noise of the exact path."""
    model = mace_model(INTERACTIONS[0])
    exact = convert(model).float()
    tab = convert(model, radial="tabulated").float()
    args = methanol_graph(torch.float32)
    e_ref, f_ref = energy_forces(exact, *args)
    e, f = energy_forces(tab, *args)
    assert abs(float(e - e_ref)) <= 1e-5 * max(1.0, abs(float(e_ref)))
    assert float((f - f_ref).abs().max()) <= 1e-5 * max(1.0, float(f_ref.abs().max()))


def test_no_training_on_a_tabulated_model():
    tab = convert(mace_model(INTERACTIONS[0]), radial="tabulated")
    pos, *rest = methanol_graph(torch.float64)
    pos.requires_grad_(True)
    e = MaceTorchModel(tab)(pos, *rest)
    (g,) = torch.autograd.grad(e, pos, create_graph=True)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        g.square().sum().backward()


def test_scripted_tabulated_model(tmp_path):
    """TorchScript (LAMMPS, the deployed calculator) runs the tabulated model."""
    model = mace_model(INTERACTIONS[0], zs=(29,))
    tab = convert(model, radial="tabulated")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(MaceTorchModel(tab))
    scripted.save(str(tmp_path / "m.pt"))
    atoms = cu(2)
    out = []
    for m, kw in ((tab, {}), (torch.jit.load(str(tmp_path / "m.pt")), {"cutoff": 3.5})):
        atoms.calc = FastCGCalculator(m, **kw)
        out.append((atoms.get_potential_energy(), atoms.get_forces()))
    assert abs(out[0][0] - out[1][0]) < 1e-10 * max(1.0, abs(out[0][0]))
    assert np.abs(out[0][1] - out[1][1]).max() < 1e-9


def test_refused_where_the_radial_is_not_a_function_of_r():
    from mace.modules.blocks import RealAgnosticDensityInteractionBlock  # noqa: F401

    model = mace_model("RealAgnosticDensityInteractionBlock")
    with pytest.raises(NotImplementedError, match="RealAgnosticDensityInteractionBlock"):
        convert(model, radial="tabulated")
    with pytest.raises(ValueError, match="radial must be"):
        convert(mace_model(INTERACTIONS[0]), radial="spline")


def test_fastcg_md_with_a_tabulated_radial(capsys, tmp_path, monkeypatch):
    """``fastcg md --model mace-torch --radial tabulated``: the job runs and reports its max |dF|
    against mace-torch (the tables' error)."""
    from fastcg.md import main

    monkeypatch.chdir(tmp_path)
    argv = ["--model", "mace-torch", "--radial", "tabulated", "--structure", "cu-small", "--small"]
    argv += ["--steps", "2", "--reference-steps", "1", "--plot", "", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    df = float(out.split("max |dF|")[1].split(":")[1].split()[0])
    assert 0 < df < 1e-4
