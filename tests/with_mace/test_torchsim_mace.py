"""torch-sim 0.3.0 with mace-torch 0.3.16: its own ``MaceModel`` around ``fastcg.convert(model)``
against ``MaceModel`` around the model itself, batched, and fastcg's torch-sim model
(``fastcg.integrations.torchsim.FastCGModel``) on a mace-torch model."""

import copy
import warnings

import numpy as np
import pytest
import torch

from fastcg.irreps import o3

pytest.importorskip("mace")
pytest.importorskip("torch_sim")
import torch_sim as ts  # noqa: E402
from ase.build import bulk  # noqa: E402
from torch_sim.units import MetalUnits  # noqa: E402

from fastcg import convert  # noqa: E402
from fastcg.integrations.mace import MaceConv  # noqa: E402
from fastcg.integrations.torchsim import FastCGModel  # noqa: E402
from fastcg.models._reference import default_dtype  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch-sim warns about optional dependencies
    from torch_sim.models.mace import MaceModel  # noqa: E402

CPU = torch.device("cpu")


def mace_model(zs=(14, 29)) -> torch.nn.Module:
    from mace.modules import MACE, RealAgnosticResidualInteractionBlock

    torch.manual_seed(0)
    cls = RealAgnosticResidualInteractionBlock
    with default_dtype(torch.float64), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MACE(
            r_max=4.0, num_bessel=4, num_polynomial_cutoff=5, max_ell=2, interaction_cls=cls,
            interaction_cls_first=cls, num_interactions=2, num_elements=len(zs),
            hidden_irreps=o3().Irreps("4x0e+4x1o"), MLP_irreps=o3().Irreps("4x0e"),
            atomic_energies=np.array([-1.5, -3.0]), avg_num_neighbors=8.0,
            atomic_numbers=list(zs), correlation=3, gate=torch.nn.functional.silu,
            radial_MLP=[8, 8],
        )  # fmt: skip


def crystals() -> list:
    cu = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    mixed = bulk("Cu", "fcc", a=3.7) * (2, 2, 2)
    mixed.numbers[[1, 5]] = 14
    for seed, atoms in enumerate((cu, si, mixed)):
        atoms.rattle(0.05, seed=seed)
    return [cu, si, mixed]


def close(a, b, rtol=1e-10) -> None:
    scale = max(1.0, float(b.abs().max()))
    assert float((a - b).abs().max()) <= rtol * scale, float((a - b).abs().max())


def state():
    return ts.io.atoms_to_state(crystals(), CPU, torch.float64)


def test_mace_model_converted_equals_unconverted():
    """torch-sim's MaceModel: energies, forces and stress of a 3-system batch, float64."""
    model = mace_model()
    fast = convert(model)
    assert any(isinstance(m, MaceConv) for m in fast.modules())
    ref = MaceModel(model=model, device=CPU, dtype=torch.float64)(state())
    out = MaceModel(model=fast, device=CPU, dtype=torch.float64)(state())
    assert out["energy"].shape == (3,)
    for key in ("energy", "forces", "stress"):
        close(out[key], ref[key])


def test_fastcg_torchsim_model_on_mace_torch():
    """fastcg's torch-sim model on the mace-torch model (one batched call through
    MaceTorchModel.node_energies), converted or not, equals torch-sim's MaceModel."""
    model = mace_model()
    ref = MaceModel(model=copy.deepcopy(model), device=CPU, dtype=torch.float64)(state())
    for m in (model, convert(model)):
        wrapped = FastCGModel(m, device=CPU)
        assert wrapped.batched
        out = wrapped(state())
        for key in ("energy", "forces", "stress"):
            close(out[key], ref[key])


def run_md(model, integrator, steps: int) -> tuple[list, object]:
    torch.manual_seed(7)  # Langevin's noise comes from torch's global generator
    kt = torch.tensor(300 * MetalUnits.temperature, dtype=torch.float64)
    dt = torch.tensor(0.001 * MetalUnits.time, dtype=torch.float64)
    init, update = integrator(model, dt=dt, kT=kt, seed=3)
    md = init(state())
    energies = [md.energy.clone()]
    for _ in range(steps):
        md = update(md)
        energies.append(md.energy.clone())
    return energies, md


@pytest.mark.parametrize("integrator", [ts.nve, ts.nvt_langevin], ids=["nve", "nvt"])
def test_batched_md_converted_equals_unconverted(integrator):
    """Batched NVE / NVT in torch-sim: every step's energies of MaceModel(convert(model)) equal
    those of MaceModel(model), and the final forces equal mace-torch's on the same positions."""
    model = mace_model()
    fast = MaceModel(model=convert(model), device=CPU, dtype=torch.float64)
    ref = MaceModel(model=model, device=CPU, dtype=torch.float64)
    e_fast, md = run_md(fast, integrator, steps=4)
    e_ref, _ = run_md(ref, integrator, steps=4)
    for a, b in zip(e_fast, e_ref):
        close(a, b, rtol=1e-9)
    again = ref(md)
    close(md.energy, again["energy"])
    close(md.forces, again["forces"])
