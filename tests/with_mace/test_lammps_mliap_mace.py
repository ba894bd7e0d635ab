"""mace-torch models (converted by fastcg.convert or not) under
:class:`fastcg.integrations.lammps.FastCGMLIAP`, through mace-torch's own ``lammps_mliap`` path,
on one rank of the ML-IAP stand-in (tests/lammps_standin.py; its ghosts are periodic images, so
the ghost exchange runs), against fastcg's ASE calculator on the mace-torch model."""

import numpy as np
import pytest
import torch

pytest.importorskip("mace")
import lammps_standin as standin  # noqa: E402

from fastcg import convert  # noqa: E402
from fastcg.calculator import FastCGCalculator  # noqa: E402
from fastcg.integrations.lammps import FastCGMLIAP  # noqa: E402

from .test_convert_mace import INTERACTIONS, mace_model  # noqa: E402


class CountingData(standin.MLIAPData):
    exchanges = 0

    def forward_exchange(self, *args) -> None:
        type(self).exchanges += 1
        super().forward_exchange(*args)


@pytest.mark.parametrize("interaction", INTERACTIONS)
def test_mace_torch_in_mliap_equals_calculator(interaction, monkeypatch):
    model = mace_model(interaction, zs=(29, 47))
    with torch.no_grad():
        model.atomic_energies_fn.atomic_energies.copy_(torch.tensor([-1.5, -2.5]))
    atoms = standin.structure()
    atoms.calc = FastCGCalculator(model)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    monkeypatch.setattr(standin, "MLIAPData", CountingData)
    monkeypatch.setattr(CountingData, "exchanges", 0)
    for m in (model, convert(model)):
        mliap = FastCGMLIAP(m)
        assert mliap.mace_torch and mliap.element_types == ["Cu", "Ag"]
        elems = standin.element_indices(mliap, atoms)
        e, f, eatoms = standin.compute(mliap, atoms.positions, atoms.cell.lengths(), elems)
        assert abs(e - energy) < 1e-10 * max(1.0, abs(energy))
        assert abs(eatoms.sum() - energy) < 1e-10 * max(1.0, abs(energy))
        assert np.abs(f - forces).max() < 1e-10 * max(1.0, np.abs(forces).max())
    assert CountingData.exchanges == 2  # one per interaction after the first, per model
