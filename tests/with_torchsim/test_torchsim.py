"""fastcg.integrations.torchsim.FastCGModel against the fastcg calculator, the model called
directly and the e3nn twins, and in torch-sim's own NVE / NVT integrators (torch-sim 0.3.0)."""

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("torch_sim")
import torch_sim as ts  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402
from torch_sim.models.interface import validate_model_outputs  # noqa: E402
from torch_sim.units import MetalUnits  # noqa: E402

from fastcg.calculator import FastCGCalculator  # noqa: E402
from fastcg.integrations.torchsim import FastCGModel  # noqa: E402
from fastcg.models import MODELS, edge_vectors  # noqa: E402
from fastcg.models._reference import default_dtype, reference_twin  # noqa: E402

CPU = torch.device("cpu")
SMALL = {"mace": {"num_channels": 4, "max_ell": 2, "radial_mlp": (8,), "cutoff": 4.0},
         "nequip": {"num_features": 4, "lmax": 2, "cutoff": 4.0},
         "schnet": {"num_features": 8}}  # fmt: skip


def build(name: str, zs=(14, 29)) -> torch.nn.Module:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        return MODELS[name](list(zs), **SMALL[name])


def crystals() -> list:
    """Three periodic systems of different sizes, cells and compositions."""
    cu = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    mixed = bulk("Cu", "fcc", a=3.7) * (2, 2, 2)  # a non-orthogonal (primitive fcc) cell
    mixed.numbers[[1, 5]] = 14
    for seed, atoms in enumerate((cu, si, mixed)):
        atoms.rattle(0.05, seed=seed)
    return [cu, si, mixed]


def close(a, b, rtol=1e-10) -> None:
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    assert float((a - b).abs().max()) <= rtol * scale, float((a - b).abs().max())


@pytest.mark.parametrize("name", ["mace", "nequip", "schnet"])
def test_batch_equals_calculator(name):
    """Energies, forces and stress of a 3-system batch equal the ASE calculator's, system by
    system (float64)."""
    model = build(name)
    systems = crystals()
    out = FastCGModel(model, device=CPU)(ts.io.atoms_to_state(systems, CPU, torch.float64))
    assert out["energy"].shape == (3,) and out["stress"].shape == (3, 3, 3)
    with torch.no_grad():  # forces and stress are gradients all the same
        again = FastCGModel(model, device=CPU)(ts.io.atoms_to_state(systems, CPU, torch.float64))
    for key in out:
        assert torch.equal(out[key], again[key])
    calc, start = FastCGCalculator(model), 0
    for i, atoms in enumerate(systems):
        atoms.calc = calc
        n = len(atoms)
        close(out["energy"][i], atoms.get_potential_energy())
        close(out["forces"][start : start + n], atoms.get_forces())
        close(out["stress"][i], atoms.get_stress(voigt=False))
        start += n


def test_batch_equals_direct_call():
    """Energies and forces equal the model called directly on each system's graph, built
    independently with ASE's neighbour list (molecules: non-periodic, no stress)."""
    from ase.neighborlist import neighbor_list

    model = build("nequip", zs=(1, 6, 8))
    systems = [molecule("CH3OH"), molecule("H2O"), molecule("CH4")]
    out = FastCGModel(model, device=CPU)(ts.io.atoms_to_state(systems, CPU, torch.float64))
    assert "stress" not in out
    start = 0
    for i, atoms in enumerate(systems):
        i_, j_ = neighbor_list("ij", atoms, model.config["cutoff"])
        pos = torch.tensor(atoms.positions, requires_grad=True)
        src, dst = torch.tensor(j_), torch.tensor(i_)
        args = (torch.tensor(atoms.numbers), src, dst, torch.zeros(len(src), 3, dtype=pos.dtype))
        energy = model(pos, *args, torch.zeros(3, 3, dtype=pos.dtype))
        (grad,) = torch.autograd.grad(energy, pos)
        close(out["energy"][i], energy.detach())
        close(out["forces"][start : start + len(atoms)], -grad)
        start += len(atoms)


class TotalOnly(torch.nn.Module):
    """A model with only the interface's total energy (no ``node_energies``)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.config = model.config

    def forward(self, positions, numbers, src, dst, shifts, cell):
        assert cell.shape == (3, 3)
        return self.inner(positions, numbers, src, dst, shifts, cell)


def test_model_without_node_energies():
    """One call per system gives the batched call's numbers."""
    model = build("mace")
    state = ts.io.atoms_to_state(crystals(), CPU, torch.float64)
    batched = FastCGModel(model, device=CPU)(state)
    looped = FastCGModel(TotalOnly(model), device=CPU)
    assert not looped.batched
    for key, value in looped(state).items():
        close(value, batched[key])


def test_float32_and_reference_twin():
    """float32 against float64, and the e3nn twin through the same interface (float64)."""
    model = build("mace")
    state = ts.io.atoms_to_state(crystals(), CPU, torch.float64)
    out = FastCGModel(model, device=CPU)(state)
    twin = FastCGModel(reference_twin(model), device=CPU)(state)
    for key in out:
        close(out[key], twin[key])
    state32 = ts.io.atoms_to_state(crystals(), CPU, torch.float32)
    out32 = FastCGModel(copy.deepcopy(model), device=CPU, dtype=torch.float32)(state32)
    for key in out:
        close(out32[key].double(), out[key], rtol=1e-4)


def test_torch_sim_validation():
    """torch-sim's own interface check (Si and Fe, batched and single)."""
    model = FastCGModel(build("nequip", zs=(14, 26)), device=CPU)
    validate_model_outputs(model, CPU, torch.float64)


def run_md(model: FastCGModel, integrator, state, steps: int) -> tuple[list, object]:
    """``steps`` steps of a torch-sim integrator at 1 fs, 300 K; energies after each step."""
    torch.manual_seed(7)  # Langevin's noise comes from torch's global generator
    kt = torch.tensor(300 * MetalUnits.temperature, dtype=torch.float64)
    dt = torch.tensor(0.001 * MetalUnits.time, dtype=torch.float64)
    init, update = integrator(model, dt=dt, kT=kt, seed=3)
    md = init(state.clone())
    energies = [md.energy.clone()]
    for _ in range(steps):
        md = update(md)
        energies.append(md.energy.clone())
    return energies, md


@pytest.mark.parametrize("integrator", [ts.nve, ts.nvt_langevin], ids=["nve", "nvt"])
def test_batched_md_equals_reference(integrator):
    """A 3-system batch through torch-sim's integrator: every step's energies equal those of the
    e3nn twin run the same way, and the final state's energies and forces equal the twin's."""
    model = build("nequip")
    fast, ref = FastCGModel(model, device=CPU), FastCGModel(reference_twin(model), device=CPU)
    state = ts.io.atoms_to_state(crystals(), CPU, torch.float64)
    e_fast, md = run_md(fast, integrator, state, steps=5)
    e_ref, _ = run_md(ref, integrator, state, steps=5)
    assert md.energy.shape == (3,)
    assert not torch.equal(md.positions, state.positions)  # the atoms moved
    for a, b in zip(e_fast, e_ref):
        close(a, b, rtol=1e-9)  # trajectories agree to rounding, amplified over the steps
    again = ref(md)
    close(md.energy, again["energy"])
    close(md.forces, again["forces"])


def test_nve_conserves_energy():
    """Total energy per system stays within 1e-4 eV/atom over 10 steps of 1 fs."""
    state = ts.io.atoms_to_state(crystals(), CPU, torch.float64)
    model = FastCGModel(build("schnet"), device=CPU)

    def total(md):
        kinetic = ts.calc_kinetic_energy(masses=md.masses, momenta=md.momenta,
                                         system_idx=md.system_idx)  # fmt: skip
        return md.energy + kinetic

    _, start = run_md(model, ts.nve, state, steps=0)
    _, end = run_md(model, ts.nve, state, steps=10)
    atoms = torch.bincount(state.system_idx)
    assert ((total(end) - total(start)).abs() / atoms).max() < 1e-4


def test_bad_input():
    model = FastCGModel(build("schnet"), device=CPU)
    with pytest.raises(ValueError, match="float32"):
        model(ts.io.atoms_to_state(crystals(), CPU, torch.float32))
    with pytest.raises(ValueError, match=r"atomic numbers \[26\]"):
        model(ts.io.atoms_to_state([bulk("Fe", "bcc", a=2.87)], CPU, torch.float64))
    state = ts.io.atoms_to_state(crystals(), CPU, torch.float64)
    state.positions[1] = state.positions[0]
    with pytest.raises(ValueError, match="closer than"):
        model(state)
    with pytest.raises(TypeError):
        FastCGModel("mace")


def test_edge_convention():
    """The graph's edge vectors are r_ij = pos[src] - pos[dst] + shifts, every one shorter than
    the cutoff, and each system's edges stay within its own atoms."""
    model = FastCGModel(build("schnet"), device=CPU)
    state = ts.io.atoms_to_state(crystals(), CPU, torch.float64)
    graph = model._graph(state.positions, state, state.row_vector_cell)
    shifts = (graph["unit"].unsqueeze(-2) @ state.row_vector_cell[graph["system"]]).squeeze(-2)
    r = edge_vectors(state.positions, graph["src"], graph["dst"], shifts).norm(dim=-1)
    assert len(r) and float(r.max()) < model.cutoff
    assert torch.equal(state.system_idx[graph["src"]], graph["system"])
    assert torch.equal(state.system_idx[graph["dst"]], graph["system"])
    assert torch.equal(graph["dst"], graph["dst"].sort(stable=True).values)


def test_md_cli_torchsim_engine(capsys, tmp_path, monkeypatch):
    """``fastcg md --engine torchsim --batch 2`` reports the batch's throughput beside the ASE
    loop's, and torch-sim's step-0 energies equal the ASE calculator's."""
    from fastcg import cli

    monkeypatch.chdir(tmp_path)
    argv = ["md", "--model", "schnet", "--small", "--structure", "cu-small", "--steps", "2",
            "--reference-steps", "1", "--dtype", "float64", "--engine", "torchsim", "--batch",
            "2", "--plot", "", "--no-progress", "--threads", "1"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "torch-sim batched NVE, 2 systems x 32 atoms at once" in out, out
    assert "speed-up (torch-sim)" in out
    line = next(x for x in out.splitlines() if x.startswith("max |E(step 0)| torch-sim"))
    assert float(line.split()[-2]) < 1e-9, line


@pytest.mark.parametrize(
    "argv, message",
    [(["--engine", "torchsim"], "argument --engine: torch-sim is not installed"),
     (["--batch", "2"], "argument --batch: only with --engine torchsim"),
     (["--engine", "torchsim", "--batch", "0"], "argument --batch: must be an integer >= 1")],
)  # fmt: skip
def test_md_cli_engine_errors(argv, message, capsys, monkeypatch):
    """Clear errors, before any work: torch-sim missing, --batch without the engine or < 1."""
    import importlib.util

    from fastcg import cli

    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "torch_sim" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(SystemExit) as exc:
        cli.main(["md", *argv, "--plot", ""])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
