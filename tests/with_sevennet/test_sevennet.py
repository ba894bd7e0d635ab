"""fastcg.convert on SevenNet (sevenn 0.13) against sevenn itself: the trained SevenNet-0, a
small random model, sevenn's convolution_cls patching and its TorchScript deploy."""

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("sevenn")
import sevenn._keys as KEY  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402
from sevenn.atom_graph_data import AtomGraphData  # noqa: E402
from sevenn.calculator import SevenNetCalculator  # noqa: E402
from sevenn.nn.convolution import IrrepsScatterGatterFusedConvolution  # noqa: E402
from sevenn.train.dataload import unlabeled_atoms_to_graph  # noqa: E402

import fastcg  # noqa: E402
import fastcg.nn as fnn  # noqa: E402
from fastcg.calculator import FastCGCalculator  # noqa: E402
from fastcg.integrations import sevennet  # noqa: E402
from fastcg.integrations.sevennet import FastCGConvolution, SevenNetModel  # noqa: E402

# torch.jit.script's deprecation (sevenn and e3nn script modules), sevenn's "no accelerator"
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*torch.jit.script.*:FutureWarning", "ignore:No tensor product accelerator:UserWarning"
)


def structures() -> dict[str, Atoms]:
    """A periodic one-species crystal, a periodic oxide and a molecule, rattled."""
    si = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 1, 1)
    mgo = bulk("MgO", "rocksalt", a=4.21, cubic=True)
    water = molecule("CH3OH")
    for i, atoms in enumerate((si, mgo, water)):
        atoms.rattle(0.05, seed=i)
    return {"si": si, "mgo": mgo, "methanol": water}


STRUCTURES = structures()


@pytest.fixture(scope="module")
def sevennet_0():
    """The trained SevenNet-0 (float32, eval), as sevenn builds it, and its converted copy."""
    model = sevennet.load_sevennet_0()
    return model, fastcg.convert(model)


class Float64Onehot(torch.nn.Module):
    """sevenn's one-hot embedding, cast to float64: sevenn hard-codes ``.float()`` there, so its
    models run in float32 only; the float64 tests put this in both models."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, data):
        data = self.inner(data)
        for key in (self.inner.key_output, self.inner.key_additional_output):
            if key is not None:
                data[key] = data[key].double()
        return data


def float64(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of a sevenn model (with :class:`Float64Onehot`) whose e3nn tensor products
    are rebuilt in float64: e3nn's generated code keeps constants (its Wigner 3j blocks, in the
    state_dict too) in the dtype it was built in, so ``.double()`` of a float32 SevenNet-0 is
    1e-7 relative off; fastcg's tables are float64 either way."""
    from e3nn import o3
    from sevenn.nn.convolution import IrrepsConvolution

    model = copy.deepcopy(model).double()
    model.replace_module("onehot_idx_to_onehot", Float64Onehot(model.onehot_idx_to_onehot))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn computes its 3j blocks in the default dtype
    try:
        for conv in model.modules():
            if type(conv) is IrrepsConvolution and type(conv.convolution) is o3.TensorProduct:
                # no parameters (the weights are per edge): only e3nn's constants change
                conv.convolution = o3.TensorProduct(**conv.convolution_kwargs)
    finally:
        torch.set_default_dtype(default)
    return model


@pytest.fixture(scope="module")
def sevennet_0_f64(sevennet_0):
    model = float64(sevennet_0[0])
    return model, fastcg.convert(model)


def graph(atoms: Atoms, cutoff: float, dtype: torch.dtype) -> AtomGraphData:
    """sevenn's input graph of ``atoms`` (its own neighbour list), floats in ``dtype``."""
    numpy = unlabeled_atoms_to_graph(atoms, cutoff)
    data = AtomGraphData.from_numpy_dict(dict(numpy))  # its floats become float32
    for key in (KEY.POS, KEY.EDGE_VEC, KEY.CELL_VOLUME):
        data[key] = torch.as_tensor(numpy[key], dtype=dtype)
    return data


def predict(model, atoms: Atoms, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Energy, forces and stress from the model's own force/stress module."""
    out = model(graph(atoms, 5.0, dtype))
    keys = {"energy": KEY.PRED_TOTAL_ENERGY, "forces": KEY.PRED_FORCE, "stress": KEY.PRED_STRESS}
    return {name: out[key].detach() for name, key in keys.items()}


def assert_same(actual: dict, expected: dict, rtol: float, atol: float) -> None:
    for name, want in expected.items():
        got = actual[name]
        scale = max(1.0, float(want.abs().max()))
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol * scale, msg=name)


def test_convert_fuses_every_convolution(sevennet_0):
    model, fast = sevennet_0
    convs = [m for m in fast.modules() if isinstance(m, IrrepsScatterGatterFusedConvolution)]
    assert len(convs) == 5
    for m in convs:
        assert type(m.convolution) is FastCGConvolution
        assert isinstance(m.weight_nn, fnn.FullyConnectedNet)
        last = m.weight_nn[len(m.weight_nn) - 1]
        assert last.deferred and m.convolution._radial_weight is last.weight
    # sevenn's checkpoint loads strictly into the converted model; the original is untouched
    fast_copy = copy.deepcopy(fast)
    fast_copy.load_state_dict(model.state_dict(), strict=True)
    codegen = "._compiled_main"  # e3nn's generated-code buffers (fastcg's CG tables are fixed)
    assert set(fast.state_dict()) == {k for k in model.state_dict() if codegen not in k}
    assert not any(isinstance(m, FastCGConvolution) for m in model.modules())


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_sevennet_0_float64(sevennet_0_f64, name):
    model, fast = sevennet_0_f64
    atoms = STRUCTURES[name]
    assert_same(predict(fast, atoms, torch.float64), predict(model, atoms, torch.float64),
                rtol=1e-10, atol=1e-10)  # fmt: skip


def test_sevenn_calculator_float32(sevennet_0):
    """The documented use: ``calc.model = fastcg.convert(calc.model)`` in sevenn's calculator."""
    model = sevennet_0[0]
    ref = SevenNetCalculator(model, file_type="model_instance", device="cpu")
    calc = SevenNetCalculator(copy.deepcopy(model), file_type="model_instance", device="cpu")
    calc.model = fastcg.convert(calc.model)
    for atoms in STRUCTURES.values():
        results = []
        for c in (calc, ref):
            a = atoms.copy()
            a.calc = c
            results.append({"energy": a.get_potential_energy(), "forces": a.get_forces(),
                            "stress": a.get_stress() if a.pbc.any() else np.zeros(6)})  # fmt: skip
        for key in ("energy", "forces", "stress"):
            np.testing.assert_allclose(results[0][key], results[1][key], rtol=1e-5, atol=2e-5,
                                       err_msg=key)  # fmt: skip


def test_fastcg_calculator_through_as_model(sevennet_0_f64):
    """fastcg's own calculator (its neighbour list, autograd forces) on the wrapped models."""
    model, fast = sevennet_0_f64
    atoms = STRUCTURES["mgo"]
    a = atoms.copy()
    a.calc = FastCGCalculator(fast)
    assert isinstance(a.calc.model, SevenNetModel) and a.calc.cutoff == 5.0
    want = predict(model, atoms, torch.float64)
    np.testing.assert_allclose(a.get_potential_energy(), float(want["energy"]), rtol=1e-10)
    np.testing.assert_allclose(a.get_forces(), want["forces"].numpy(), rtol=1e-9, atol=1e-9)
    # sevenn's stress is -(1/V) dE/d(strain) in kbar-free eV/A^3 with its own sign; ASE's is +
    stress = -want["stress"].numpy()[[0, 1, 2, 4, 5, 3]]
    np.testing.assert_allclose(a.get_stress(), stress, rtol=1e-9, atol=1e-10)


def small_model() -> torch.nn.Module:
    """A random-weight SevenNet (8 channels, l <= 2, 2 layers, MLP [8, 8]), float64."""
    import sevenn.util
    from sevenn.model_build import build_E3_equivariant_model

    config = copy.deepcopy(sevenn.util.load_checkpoint("7net-0").config)
    config.update({KEY.IRREPS_MANUAL: ["8x0e", "8x0e+4x1e+2x2e", "8x0e"], KEY.NUM_CONVOLUTION: 2,
                   KEY.CONV_DENOMINATOR: [7.0, 7.0],
                   KEY.CONVOLUTION_WEIGHT_NN_HIDDEN_NEURONS: [8, 8]})  # fmt: skip
    torch.manual_seed(0)
    model = build_E3_equivariant_model(config)
    model.set_is_batch_data(False)
    return float64(model)


def test_training_gradients_small_model():
    """Force training (energy + forces loss, double backward) gives the same parameter
    gradients, with the weight MLPs' last layers inside the fused convs."""
    model = small_model()
    model.train()
    fast = fastcg.convert(model)
    assert sum(type(m.convolution) is FastCGConvolution for m in fast.modules()
               if isinstance(m, IrrepsScatterGatterFusedConvolution)) == 2  # fmt: skip
    assert all(isinstance(m.weight_nn, fnn.FullyConnectedNet) for m in fast.modules()
               if isinstance(m, IrrepsScatterGatterFusedConvolution))  # fmt: skip
    grads = []
    for m in (fast, model):
        out = m(graph(STRUCTURES["mgo"], 5.0, torch.float64))
        loss = out[KEY.PRED_TOTAL_ENERGY].sum() + out[KEY.PRED_FORCE].square().sum()
        params = dict(m.named_parameters())
        names = sorted(k for k, p in params.items() if p.requires_grad)
        g = torch.autograd.grad(loss, [params[k] for k in names], allow_unused=True)
        grads.append({k: v for k, v in zip(names, g) if v is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for k in grads[1]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-9, atol=1e-11, msg=k)


def test_convolution_cls_int32_int64():
    """FastCGConvolution has sevenn's fused-conv interface; both index dtypes give e3nn's sum."""
    from e3nn import o3

    ins = [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True), (1, 0, 2, "uvu", True)]
    kwargs = {"irreps_in1": o3.Irreps("3x0e+2x1e"), "irreps_in2": o3.Irreps("1x0e+1x1e"),
              "irreps_out": o3.Irreps("3x0e+3x1e+2x1e"), "instructions": ins,
              "shared_weights": False, "internal_weights": False}  # fmt: skip
    tp = o3.TensorProduct(**kwargs).double()
    conv = FastCGConvolution(**kwargs).double()
    x, y = torch.randn(4, 9, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    w = torch.randn(7, tp.weight_numel, dtype=torch.float64)
    src, dst = torch.tensor([0, 1, 2, 3, 0, 2, 1]), torch.tensor([1, 0, 0, 2, 3, 3, 3])
    want = torch.zeros(4, 18, dtype=torch.float64).index_add_(0, dst, tp(x[src], y, w))
    for dtype in (torch.int64, torch.int32):
        got = conv(x, y, w, src.to(dtype), dst.to(dtype))
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_sevenn_patching_with_convolution_cls(sevennet_0, monkeypatch):
    """sevenn's own build-time patching (as for FlashTP / OpenEquivariance) with fastcg's
    convolution_cls: the checkpoint loads strictly and gives sevenn's numbers."""
    import sevenn.model_build as mb
    import sevenn.util

    patch_modules = mb.patch_modules

    def patch_with_fastcg(layers, config):
        return sevennet.patch_layers(patch_modules(layers, config))

    monkeypatch.setattr(mb, "patch_modules", patch_with_fastcg)
    patched = sevenn.util.load_checkpoint("7net-0").build_model()
    monkeypatch.undo()
    patched.set_is_batch_data(False)
    patched.eval()
    convs = [m for m in patched.modules() if isinstance(m, IrrepsScatterGatterFusedConvolution)]
    assert len(convs) == 5 and all(type(m.convolution) is FastCGConvolution for m in convs)
    model = sevennet_0[0]
    atoms = STRUCTURES["si"]
    want = predict(model, atoms, torch.float32)
    assert_same(predict(patched, atoms, torch.float32), want, rtol=1e-5, atol=2e-5)
    # fastcg.convert on the patched model folds the weight MLPs' last layers in as well
    fast = fastcg.convert(patched)
    assert all(m.convolution._radial_weight is not None for m in fast.modules()
               if isinstance(m, IrrepsScatterGatterFusedConvolution))  # fmt: skip
    assert_same(predict(fast, atoms, torch.float32), want, rtol=1e-5, atol=2e-5)


def deployed_energy_grad(model, atoms: Atoms, type_map: dict) -> tuple:
    """What LAMMPS' pair_e3gnn does with a deployed model: type indices in, the energy and its
    gradient with respect to the edge vectors (autograd) out."""
    data = unlabeled_atoms_to_graph(atoms, 5.0)
    vec = torch.tensor(data[KEY.EDGE_VEC], dtype=torch.float32, requires_grad=True)
    inputs = {
        KEY.NODE_FEATURE: torch.tensor([type_map[int(z)] for z in atoms.numbers]),
        KEY.EDGE_IDX: torch.tensor(data[KEY.EDGE_IDX]),
        KEY.EDGE_VEC: vec,
        KEY.NUM_ATOMS: torch.tensor([len(atoms)]),
        KEY.NLOCAL: torch.tensor([len(atoms)]),
    }
    energy = model(inputs)[KEY.PRED_TOTAL_ENERGY].squeeze()
    (grad,) = torch.autograd.grad(energy, vec)
    return energy.detach(), grad


def test_sevenn_deploy_of_converted_model(sevennet_0, monkeypatch, tmp_path):
    """sevenn's TorchScript deploy (``sevenn.scripts.deploy.deploy``, for LAMMPS) of a converted
    SevenNet-0: the saved file runs fastcg's fused conv and gives sevenn's eager numbers."""
    from sevenn.checkpoint import SevenNetCheckpoint
    from sevenn.scripts.deploy import deploy

    build_model = SevenNetCheckpoint.build_model
    monkeypatch.setattr(SevenNetCheckpoint, "build_model",
                        lambda self, **kw: fastcg.convert(build_model(self, **kw)))  # fmt: skip
    path = str(tmp_path / "deployed_serial.pt")
    deploy("7net-0", path)
    monkeypatch.undo()
    scripted = torch.jit.load(path)
    assert str(scripted.graph).count("fastcg::conv_radial") == 5  # frozen: one inlined graph
    model = copy.deepcopy(sevennet_0[0])
    model.delete_module_by_key("force_output")
    model.eval_type_map = False
    for name in ("si", "mgo"):
        got = deployed_energy_grad(scripted, STRUCTURES[name], model.type_map)
        want = deployed_energy_grad(model, STRUCTURES[name], model.type_map)
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=2e-5)


def test_md_job_with_sevennet_0(capsys):
    """``fastcg md --model sevennet-0``: fastcg against sevenn itself on the trained model."""
    from fastcg import md

    argv = ["--model", "sevennet-0", "--structure", "cu-small", "--steps", "2",
            "--reference-steps", "1", "--threads", "1", "--plot", "", "--no-progress"]  # fmt: skip
    assert md.main(argv) == 0
    out = capsys.readouterr().out
    assert "sevennet-0 model, 32 atoms, float32" in out and "sevenn (e3nn)" in out
    df = float(out.split("max |dF| fastcg vs sevenn (e3nn): ")[1].split()[0])
    assert df < 1e-4


def test_md_job_without_sevenn(monkeypatch, capsys):
    """Without sevenn installed, ``--model sevennet-0`` is a clear option error."""
    import importlib.util

    from fastcg import md

    find_spec = importlib.util.find_spec

    def without_sevenn(name, *args):
        return None if name == "sevenn" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_sevenn)
    with pytest.raises(SystemExit) as exit_info:
        md.parse_args(["--model", "sevennet-0", "--plot", ""])
    assert exit_info.value.code == 2
    assert "argument --model: sevenn is not installed" in capsys.readouterr().err
