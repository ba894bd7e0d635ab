"""fastcg.convert on mace-torch 0.3.16 models (e3nn 0.4.4): fused convs, same numbers."""

import warnings

import numpy as np
import pytest
import torch

import fastcg
import fastcg.nn as fnn
from fastcg.irreps import o3

pytest.importorskip("mace")
from ase.build import bulk, molecule  # noqa: E402

from fastcg import convert  # noqa: E402
from fastcg.calculator import FastCGCalculator  # noqa: E402
from fastcg.integrations.mace import MaceConv, MaceTorchModel  # noqa: E402
from fastcg.models._reference import default_dtype  # noqa: E402


def mace_model(interaction: str, zs=(1, 6, 8), dtype=torch.float64):
    from mace.modules import MACE, blocks

    cls = getattr(blocks, interaction)
    torch.manual_seed(0)
    with default_dtype(dtype), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MACE(
            r_max=3.5, num_bessel=4, num_polynomial_cutoff=5, max_ell=2, interaction_cls=cls,
            interaction_cls_first=cls, num_interactions=2, num_elements=len(zs),
            hidden_irreps=o3().Irreps("4x0e+4x1o"), MLP_irreps=o3().Irreps("4x0e"),
            atomic_energies=np.zeros(len(zs)), avg_num_neighbors=5.0, atomic_numbers=list(zs),
            correlation=3, gate=torch.nn.functional.silu, radial_MLP=[8, 8],
        )  # fmt: skip


def methanol_graph(dtype):
    atoms = molecule("CH3OH")
    pos = torch.tensor(atoms.positions, dtype=dtype)
    i, j = np.nonzero((atoms.get_all_distances() < 3.5) & ~np.eye(len(atoms), dtype=bool))
    src, dst = torch.tensor(j), torch.tensor(i)
    shifts = torch.zeros(len(src), 3, dtype=dtype)
    return pos, torch.tensor(atoms.numbers), src, dst, shifts, torch.zeros(3, 3, dtype=dtype)


def energy_forces(model, pos, *rest):
    p = pos.clone().requires_grad_(True)
    e = MaceTorchModel(model)(p, *rest)
    (g,) = torch.autograd.grad(e, p)
    return e.detach(), -g


INTERACTIONS = ["RealAgnosticResidualInteractionBlock", "RealAgnosticInteractionBlock"]


@pytest.mark.parametrize("interaction", INTERACTIONS)
def test_convert_replaces_modules_and_keeps_parameters(interaction):
    model = mace_model(interaction)
    fast = convert(model)
    for block in fast.interactions:
        assert isinstance(block.conv_tp, MaceConv) and block.conv_fusion == "fastcg"
        assert isinstance(block.linear_up, fnn.Linear) and isinstance(block.linear, fnn.Linear)
        assert isinstance(block.skip_tp, fnn.SpeciesLinear)
        # the radial MLP's last layer runs inside the conv (the [E, wn] weights never exist)
        assert isinstance(block.conv_tp_weights, fnn.FullyConnectedNet)
        last = block.conv_tp_weights[len(block.conv_tp_weights) - 1]
        assert last.deferred and block.conv_tp._radial_weight is last.weight
    for product in fast.products:
        assert isinstance(product.symmetric_contractions, fnn.SymmetricContraction)
    assert isinstance(fast.spherical_harmonics, fnn.SphericalHarmonics)
    assert not any(isinstance(m, o3().TensorProduct) for m in fast.modules())
    assert all(not hasattr(b, "conv_fusion") for b in model.interactions)  # original untouched
    ours, theirs = dict(fast.named_parameters()), dict(model.named_parameters())
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    # e3nn 0.4.4's generated code keeps Wigner-3j buffers that fastcg's tables replace
    codegen = ("._compiled_main_left_right.", "._compiled_main_right.")
    kept = {k for k in model.state_dict() if not any(c in k for c in codegen)}
    assert set(fast.state_dict()) == kept
    fast.load_state_dict(model.state_dict())  # a mace-torch checkpoint loads strictly


@pytest.mark.parametrize("interaction", INTERACTIONS)
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_energy_forces_float64(interaction, backend):
    model = mace_model(interaction)
    fast = convert(model)
    args = methanol_graph(torch.float64)
    e_ref, f_ref = energy_forces(model, *args)
    with fastcg.use_backend(backend):
        e, f = energy_forces(fast, *args)
    assert abs(float(e - e_ref)) <= 1e-10 * max(1.0, abs(float(e_ref)))
    assert float((f - f_ref).abs().max()) <= 1e-9 * max(1.0, float(f_ref.abs().max()))


def test_energy_forces_float32():
    model = mace_model(INTERACTIONS[0], dtype=torch.float32)
    fast = convert(model)
    args = methanol_graph(torch.float32)
    e_ref, f_ref = energy_forces(model, *args)
    e, f = energy_forces(fast, *args)
    scale = max(1.0, float(f_ref.abs().max()))
    assert abs(float(e - e_ref)) <= 1e-5 * max(1.0, abs(float(e_ref)))
    assert float((f - f_ref).abs().max()) <= 1e-5 * scale


def test_calculator_periodic_stress_matches_mace():
    model = mace_model(INTERACTIONS[0], zs=(29,))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
    atoms.rattle(0.05, seed=1)
    atoms.set_cell(atoms.cell.array @ np.array([[1, 0.02, 0], [0, 1, 0], [0, 0.01, 1]]),
                   scale_atoms=True)  # fmt: skip
    out = []
    for m in (model, convert(model)):
        atoms.calc = FastCGCalculator(m)
        out.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
    assert abs(out[0][0] - out[1][0]) < 1e-10 * max(1.0, abs(out[0][0]))
    assert np.abs(out[0][1] - out[1][1]).max() < 1e-9
    assert np.abs(out[0][2] - out[1][2]).max() < 1e-9
    num = atoms.calc.calculate_numerical_stress(atoms, d=1e-5)
    assert np.abs(out[1][2] - num).max() < 1e-7


def test_mace_own_forward_and_forces():
    # mace-torch's own forward (data dict, compute_force=True) on the converted model
    model = mace_model(INTERACTIONS[0])
    fast = convert(model)
    data = _mace_batch()
    outs = []
    for m in (model, fast):
        d = {k: v.clone() if torch.is_tensor(v) else v for k, v in data.items()}
        outs.append(m(d, compute_force=True))
    assert abs(float(outs[0]["energy"] - outs[1]["energy"])) < 1e-10
    assert float((outs[0]["forces"] - outs[1]["forces"]).abs().max()) < 1e-9


def _mace_batch(dtype=torch.float64):
    from mace.data import AtomicData, config_from_atoms
    from mace.tools import AtomicNumberTable, torch_geometric

    atoms = molecule("CH3OH")
    data = AtomicData.from_config(config_from_atoms(atoms), z_table=AtomicNumberTable([1, 6, 8]),
                                  cutoff=3.5)  # fmt: skip
    batch = next(iter(torch_geometric.dataloader.DataLoader([data], batch_size=1)))
    d = batch.to_dict()
    for k in ("positions", "shifts", "cell", "node_attrs"):
        d[k] = d[k].to(dtype)
    return d


def test_scripted_converted_model_runs_without_python_package(tmp_path):
    """convert(mace) -> torch.jit.script -> a process with torch and the library only (LAMMPS's
    way): mace-torch's energies and forces."""
    import subprocess
    import sys
    import textwrap

    model = mace_model(INTERACTIONS[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(convert(model))
    scripted.save(str(tmp_path / "model.pt"))
    data = _mace_batch()
    ref = model({k: v.clone() for k, v in data.items()}, compute_force=True)
    torch.save((data, ref["energy"].detach(), ref["forces"].detach()), tmp_path / "io.pt")
    code = f"""
        import sys, torch
        torch.ops.load_library({fastcg.library_path()!r})
        m = torch.jit.load({str(tmp_path / "model.pt")!r})
        data, e_ref, f_ref = torch.load({str(tmp_path / "io.pt")!r})
        assert not any(k in sys.modules for k in ("fastcg", "e3nn", "mace"))
        out = m(data, compute_force=True)
        de, df = (out[k] - r for k, r in (("energy", e_ref), ("forces", f_ref)))
        print(float(de.abs().max()), float(df.abs().max()))
    """
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    de, df = map(float, run.stdout.split())
    assert de < 1e-10 and df < 1e-9


def test_scripted_fastcg_interface_in_the_calculator():
    """MaceTorchModel(convert(model)) scripts; FastCGCalculator runs the scripted model."""
    model = mace_model(INTERACTIONS[0], zs=(29,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(MaceTorchModel(convert(model)))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=2)
    out = []
    for m, kw in ((model, {}), (scripted, {"cutoff": 3.5})):
        atoms.calc = FastCGCalculator(m, **kw)
        out.append((atoms.get_potential_energy(), atoms.get_forces()))
    assert abs(out[0][0] - out[1][0]) < 1e-10 * max(1.0, abs(out[0][0]))
    assert np.abs(out[0][1] - out[1][1]).max() < 1e-9


def test_parameter_gradients_match_mace():
    """Training a converted model updates mace-torch's parameters by the same gradients."""
    model = mace_model(INTERACTIONS[0])
    fast = convert(model)
    args = methanol_graph(torch.float64)
    grads = []
    for m in (model, fast):
        names, params = zip(*[(k, p) for k, p in m.named_parameters() if p.requires_grad])
        e = MaceTorchModel(m)(*args)
        grads.append(dict(zip(names, torch.autograd.grad(e, params, allow_unused=True))))
    assert_same_gradients(*grads)


def assert_same_gradients(theirs: dict, ours: dict) -> None:
    """Parameter gradients by name, to 1e-9 relative (None: unused, or all zero)."""
    assert theirs.keys() == ours.keys()
    for name, g_ref in theirs.items():
        g = ours[name]
        if g_ref is None:
            assert g is None or not g.any(), name
        else:
            scale = max(1.0, float(g_ref.abs().max()))
            assert float((g - g_ref).abs().max()) <= 1e-9 * scale, name


def test_energy_forces_many_chunks(monkeypatch):
    """The fused radial conv in chunks of a few destination nodes gives the same numbers."""
    monkeypatch.setenv("FASTCG_CONV_RADIAL_CHUNK", "64")
    model = mace_model(INTERACTIONS[0])
    fast = convert(model)
    args = methanol_graph(torch.float64)
    e_ref, f_ref = energy_forces(model, *args)
    e, f = energy_forces(fast, *args)
    assert abs(float(e - e_ref)) <= 1e-10 * max(1.0, abs(float(e_ref)))
    assert float((f - f_ref).abs().max()) <= 1e-9 * max(1.0, float(f_ref.abs().max()))


def test_force_training_gradients_match_mace(monkeypatch):
    """A loss on forces (double backward through the fused radial conv) trains alike."""
    monkeypatch.setenv("FASTCG_CONV_RADIAL_CHUNK", "64")
    model = mace_model(INTERACTIONS[0])
    fast = convert(model)
    pos, *rest = methanol_graph(torch.float64)
    grads = []
    for m in (model, fast):
        names, params = zip(*[(k, p) for k, p in m.named_parameters() if p.requires_grad])
        p = pos.clone().requires_grad_(True)
        e = MaceTorchModel(m)(p, *rest)
        (f,) = torch.autograd.grad(e, p, create_graph=True)
        loss = (f**2).sum()
        grads.append(dict(zip(names, torch.autograd.grad(loss, params, allow_unused=True))))
    assert_same_gradients(*grads)
