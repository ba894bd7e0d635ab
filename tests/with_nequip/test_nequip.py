"""NequIP 0.19's ``enable_FastCG`` modifier against the unmodified NequIP model (in .venv-fw).

Small NequIP models with seeded random weights, two species, periodic and non-periodic
structures through nequip's own data path (``from_ase``, type mapper, neighbour list): energies,
forces and stresses equal in float64 and float32, training gradients equal, state_dicts
interchangeable, nequip's TorchScript path, its ASE calculator, ``fastcg.convert`` and (with
``FASTCG_SLOW_TESTS=1``: minutes on CPU) ``nequip-compile --mode aotinductor --modifiers
enable_FastCG``.
"""

import copy
import importlib.metadata
import os
import subprocess
import sys
import warnings

import pytest

nequip = pytest.importorskip("nequip")

import ase.build  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from nequip.data import AtomicDataDict, compute_neighborlist_, from_ase  # noqa: E402
from nequip.data.transforms import (  # noqa: E402
    ChemicalSpeciesToAtomTypeMapper,
    NeighborListTransform,
)
from nequip.model import NequIPGNNModel  # noqa: E402
from nequip.model.modify_utils import modify  # noqa: E402
from nequip.nn import InteractionBlock  # noqa: E402
from nequip.nn._tp_scatter_base import TensorProductScatter  # noqa: E402
from nequip.utils.global_state import set_global_state  # noqa: E402

TYPES = ["Cu", "O"]
R_MAX = 4.0
TOL = {"float64": 1e-10, "float32": 2e-5}
OUTPUTS = ("total_energy", "atomic_energy", "forces", "stress")


@pytest.fixture(scope="module", autouse=True)
def _nequip_state():
    set_global_state()  # nequip builds models only after this (it sets float64 as default)


def build(model_dtype: str, seed: int = 1, **kwargs) -> torch.nn.Module:
    """A small NequIP GNN with seeded random weights (l_max 2, three layers, two species)."""
    options = dict(num_layers=3, l_max=2, num_features=8, radial_mlp_depth=2,
                   radial_mlp_width=16, parity=True)  # fmt: skip
    options.update(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NequIPGNNModel(
            seed=seed, model_dtype=model_dtype, r_max=R_MAX, type_names=TYPES,
            avg_num_neighbors=20.0, per_type_energy_scales={"Cu": 1.3, "O": 0.7},
            per_type_energy_shifts={"Cu": -0.2, "O": 0.4}, **options,
        )  # fmt: skip


def enable(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with the modifier applied the way nequip applies modifiers."""
    return modify(copy.deepcopy(model), [{"modifier": "enable_FastCG"}])


def structures() -> dict:
    """Periodic bulk, a small periodic cell (many images of each atom) and a free cluster."""
    bulk = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    bulk.numbers[::3] = 8
    bulk.rattle(0.1, seed=1)
    small = ase.build.bulk("CuO", "rocksalt", a=3.9)
    small.rattle(0.05, seed=2)
    rng = np.random.default_rng(3)
    cluster = ase.Atoms(
        numbers=rng.choice([29, 8], size=14), positions=rng.uniform(0, 5.0, (14, 3)), pbc=False
    )
    return {"bulk": bulk, "small_cell": small, "cluster": cluster}


STRUCTURES = structures()


def data_of(atoms: ase.Atoms) -> dict:
    """``atoms`` through nequip's data path, as its ASE calculator prepares it."""
    data = from_ase(atoms)
    data = ChemicalSpeciesToAtomTypeMapper(model_type_names=TYPES)(data)
    return compute_neighborlist_(data, R_MAX)


def run(model: torch.nn.Module, data: dict) -> dict:
    return model(AtomicDataDict.to_(dict(data), "cpu"))


def assert_same(out: dict, ref: dict, tol: float, keys=OUTPUTS) -> None:
    for key in keys:
        scale = max(1.0, float(ref[key].detach().abs().max()))
        err = float((out[key].detach() - ref[key].detach()).abs().max()) / scale
        assert err <= tol, f"{key}: error {err:.3g} > {tol:g}"


@pytest.fixture(scope="module")
def models() -> dict:
    return {dt: build(dt) for dt in ("float64", "float32")}


def test_entry_point_registers_the_modifier():
    """``import nequip`` alone (fastcg's ``nequip.extension`` entry point) attaches it."""
    eps = importlib.metadata.entry_points(group="nequip.extension")
    assert any(ep.value == "fastcg.integrations.nequip" for ep in eps), list(eps)
    code = (
        "import sys, nequip; from nequip.nn._tp_scatter_base import TensorProductScatter as T; "
        "from nequip.nn.model_modifier_utils import get_model_modifier_unsupported_devices as u; "
        "assert 'fastcg.integrations.nequip' in sys.modules; print(u(T.enable_FastCG))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"  # CPU allowed


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_energy_forces_stress(models, dtype, name):
    model = models[dtype]
    fast = enable(model)
    atoms = STRUCTURES[name]
    data = data_of(atoms)
    # a free cluster has no stress (nequip returns NaN: zero cell volume)
    keys = OUTPUTS if atoms.pbc.all() else OUTPUTS[:3]
    assert_same(run(fast, data), run(model, data), TOL[dtype], keys)


def test_swapped_and_fused(models):
    """Every TensorProductScatter is fastcg's, with its edge MLP's last layer inside."""
    from fastcg.integrations.nequip import FastCGTensorProductScatter, HiddenScalarMLPFunction

    fast = enable(models["float64"])
    blocks = [m for m in fast.modules() if isinstance(m, InteractionBlock)]
    assert len(blocks) == 3
    for block in blocks:
        assert type(block.tp_scatter) is FastCGTensorProductScatter
        assert type(block.edge_mlp) is HiddenScalarMLPFunction
        assert block.tp_scatter._radial_weight is block.edge_mlp.mlp[-1].weight
    assert fast.metadata["nequip_custom_ops_libs"] == "fastcg"
    again = modify(fast, [{"modifier": "enable_FastCG"}])  # a second application changes nothing
    assert [type(m) for m in again.modules()] == [type(m) for m in fast.modules()]


@pytest.mark.parametrize("depth", [0, 1])
def test_edge_mlp_depths(depth):
    """An edge MLP of one linear layer (radial = the edge embedding) and of one hidden layer."""
    model = build("float64", seed=4, num_layers=2, l_max=1, radial_mlp_depth=depth)
    data = data_of(STRUCTURES["bulk"])
    assert_same(run(enable(model), data), run(model, data), TOL["float64"])


def test_state_dict_and_shared_weights():
    """Same keys; checkpoints load strictly both ways, and loaded weights reach the fused conv."""
    # modified in place, not copied: a deepcopy of an e3nn product's generated code adds a
    # `_tensor_constant0` buffer to the state_dict with or without the modifier
    model = build("float64", num_layers=2)
    fast = modify(build("float64", num_layers=2), [{"modifier": "enable_FastCG"}])
    assert list(fast.state_dict()) == list(model.state_dict())
    other = build("float64", seed=7, num_layers=2)
    fast.load_state_dict(other.state_dict(), strict=True)
    model.load_state_dict(fast.state_dict(), strict=True)
    data = data_of(STRUCTURES["bulk"])
    assert_same(run(fast, data), run(other, data), TOL["float64"])


def test_functional_call(models):
    """Parameters swapped by torch.func.functional_call (nequip's train-time compile does) reach
    the fused edge-MLP layer too."""
    model = models["float64"]
    fast = enable(model)
    params = {n: p.detach() * 1.01 for n, p in model.named_parameters()}
    data = data_of(STRUCTURES["bulk"])
    out = torch.func.functional_call(fast, params, (dict(data),))
    ref = torch.func.functional_call(model, params, (dict(data),))
    assert_same(out, ref, TOL["float64"])


def test_training_gradients(models):
    """Parameter gradients of an energy + force loss (double backward through the conv)."""
    data = data_of(STRUCTURES["bulk"])
    grads = []
    for model in (models["float64"], enable(models["float64"])):
        model = copy.deepcopy(model).train()
        out = run(model, data)
        loss = out["total_energy"].square().sum() + out["forces"].square().sum()
        names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
        grads.append(dict(zip(names, torch.autograd.grad(loss, params, allow_unused=True))))
    ref, got = grads
    assert list(got) == list(ref)
    for name, g in ref.items():
        assert g is not None and got[name] is not None, name
        scale = max(1.0, float(g.abs().max()))
        assert float((got[name] - g).abs().max()) / scale <= TOL["float64"], name


def test_torchscript(models, tmp_path):
    """nequip's TorchScript save / load (what ``nequip-compile --mode torchscript`` runs; that
    command itself refuses torch >= 2.10)."""
    from nequip.model.inference_models.torchscript import (
        load_torchscript_model,
        save_torchscript_model,
    )

    model = models["float64"]
    fast = enable(model)
    path = str(tmp_path / "fast.nequip.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_torchscript_model(fast, fast.metadata, path, "cpu")
        scripted, _ = load_torchscript_model(path, "cpu")
    data = data_of(STRUCTURES["small_cell"])
    assert_same(run(scripted, data), run(model, data), TOL["float64"])


def test_make_fx_trace():
    """The trace ``nequip-compile --mode aotinductor`` starts from (nequip's symbolic make_fx,
    data-dependent ops refused), without Inductor's minutes of compiling: same numbers."""
    from nequip.nn.compile import ListInputOutputWrapper
    from nequip.scripts._compile_utils import COMPILE_TARGET_DICT
    from nequip.utils.compile import prepare_model_for_compile
    from nequip.utils.fx import nequip_make_fx

    target = COMPILE_TARGET_DICT["ase"]
    fields, outputs = target["input"], target["output"]
    model = build("float64", num_layers=2, l_max=1, num_features=4)  # tracing costs seconds
    wrapped = prepare_model_for_compile(
        ListInputOutputWrapper(enable(model), fields, outputs), "cpu"
    )
    data = target["data_settings"](data_of(STRUCTURES["bulk"]))
    traced = nequip_make_fx(model=wrapped, data=data, fields=fields)
    got = dict(zip(outputs, traced(*[data[k] for k in fields])))
    assert_same(got, run(model, data), TOL["float64"], ("total_energy", "forces", "stress"))


def test_ase_calculator(models):
    """nequip's own ASE calculator around the modified model."""
    from nequip.integrations.ase import NequIPCalculator

    atoms = STRUCTURES["bulk"].copy()
    transforms = [
        ChemicalSpeciesToAtomTypeMapper(model_type_names=TYPES),
        NeighborListTransform(r_max=R_MAX),
    ]
    results = []
    for model in (models["float64"], enable(models["float64"])):
        atoms.calc = NequIPCalculator(model=copy.deepcopy(model).eval(), device="cpu",
                                      transforms=transforms)  # fmt: skip
        results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
    for got, ref in zip(results[1], results[0]):
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


def test_fastcg_convert(models):
    """``fastcg.convert`` on a NequIP model: the same swap plus fastcg's e3nn twins."""
    import fastcg

    model = models["float64"]
    converted = fastcg.convert(model)
    assert not any(type(m) is TensorProductScatter for m in converted.modules())
    data = data_of(STRUCTURES["cluster"])
    assert_same(run(converted, data), run(model, data), TOL["float64"], OUTPUTS[:3])


def test_unsupported_input_raises(models):
    """A wrong edge-attribute width is a clear Python exception, never a crash."""
    from fastcg.integrations.nequip import FastCGTensorProductScatter

    tps = next(m for m in enable(models["float64"]).modules()
               if isinstance(m, FastCGTensorProductScatter))  # fmt: skip
    x = torch.randn(3, tps.feature_irreps_in.dim, dtype=torch.float64)
    attr = torch.randn(2, tps.irreps_edge_attr.dim + 1, dtype=torch.float64)
    w = torch.randn(2, tps._radial_weight.shape[0], dtype=torch.float64)
    idx = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="edge_attr"):
        tps(x, attr, w, idx, idx)


TRAIN_CONFIG = """
run: [train]
seed: 1
cutoff_radius: 4.0
model_type_names: [Cu]
data:
  _target_: nequip.data.datamodule.NequIPDataModule
  seed: ${seed}
  split_dataset:
    dataset:
      _target_: nequip.data.dataset.EMTTestDataset
      transforms:
        - _target_: nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper
          model_type_names: ${model_type_names}
          chemical_species_to_atom_type_map: {Cu: Cu}
        - _target_: nequip.data.transforms.NeighborListTransform
          r_max: ${cutoff_radius}
      supercell: [2, 2, 2]
      seed: ${seed}
      num_frames: 4
      element: Cu
    train: 2
    val: 2
  train_dataloader: {_target_: torch.utils.data.DataLoader, batch_size: 2}
  val_dataloader: {_target_: torch.utils.data.DataLoader, batch_size: 2}
  stats_manager:
    _target_: nequip.data.CommonDataStatisticsManager
    type_names: ${model_type_names}
trainer:
  _target_: lightning.Trainer
  max_epochs: 1
  num_sanity_val_steps: 0
  logger: false
  enable_progress_bar: false
  callbacks:
    - _target_: lightning.pytorch.callbacks.ModelCheckpoint
      dirpath: ${hydra:runtime.output_dir}
      save_last: true
training_module:
  _target_: nequip.train.EMALightningModule
  loss:
    _target_: nequip.train.EnergyForceLoss
    coeffs: {total_energy: 1.0, forces: 1.0}
  val_metrics:
    _target_: nequip.train.EnergyForceMetrics
    coeffs: {total_energy_mae: 1.0, forces_mae: 1.0}
  optimizer: {_target_: torch.optim.Adam, lr: 0.01}
  model:
    _target_: nequip.model.NequIPGNNModel
    seed: ${seed}
    model_dtype: float64
    type_names: ${model_type_names}
    r_max: ${cutoff_radius}
    l_max: 1
    num_layers: 2
    num_features: 4
    radial_mlp_depth: 1
    radial_mlp_width: 8
    avg_num_neighbors: ${training_data_stats:num_neighbors_mean}
    per_type_energy_shifts: ${training_data_stats:per_atom_energy_mean}
    per_type_energy_scales: ${training_data_stats:forces_rms}
"""


@pytest.mark.skipif(
    os.environ.get("FASTCG_SLOW_TESTS") != "1",
    reason="nequip-train + nequip-compile --mode aotinductor take ~4 min on 2 CPU cores "
    "(set FASTCG_SLOW_TESTS=1)",
)
def test_nequip_compile_aotinductor(tmp_path):
    """``nequip-compile --mode aotinductor --modifiers enable_FastCG`` of a trained checkpoint:
    the .pt2 (which imports fastcg on load) equals the checkpoint's eager model."""
    from nequip.integrations.ase import NequIPCalculator

    (tmp_path / "conf.yaml").write_text(TRAIN_CONFIG)
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def call(*args: str) -> None:
        out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]

    call(f"{bindir}/nequip-train", "-cn", "conf", "--config-dir", str(tmp_path),
         f"hydra.run.dir={tmp_path}/out")  # fmt: skip
    ckpt, pt2 = f"{tmp_path}/out/last.ckpt", f"{tmp_path}/fast.nequip.pt2"
    call(f"{bindir}/nequip-compile", ckpt, pt2, "--mode", "aotinductor", "--device", "cpu",
         "--target", "ase", "--modifiers", "enable_FastCG")  # fmt: skip

    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=5)
    results = []
    for calc in (
        NequIPCalculator._from_saved_model(ckpt, device="cpu"),
        NequIPCalculator.from_compiled_model(pt2, device="cpu"),
    ):
        atoms.calc = calc
        results.append((atoms.get_potential_energy(), atoms.get_forces()))
    for got, ref in zip(results[1], results[0]):
        np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-10)
