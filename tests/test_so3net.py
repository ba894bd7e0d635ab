"""fastcg.models.SO3Net on its own: its e3nn twin, O(3) symmetry, gradcheck and the paths'
signs (against SchNetPack itself: tests/with_schnetpack)."""

import warnings

import pytest
import torch
from conftest import o3

import fastcg
from fastcg.models import SO3Net
from fastcg.models._reference import default_dtype, reference_twin
from fastcg.models.so3net import so3_paths

ZS = [1, 6, 8]


def build(dtype=torch.float64, **kwargs) -> SO3Net:
    torch.manual_seed(0)
    args = {"num_features": 4, "num_interactions": 2, "lmax": 2, "num_basis": 5, "cutoff": 4.0}
    with default_dtype(dtype):
        model = SO3Net(ZS, **{**args, **kwargs})
    with torch.no_grad():  # every weight random and O(1), biases included
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.6)
    return model


def cluster(n=8, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, 3, generator=gen, dtype=torch.float64).to(dtype) * 1.2
    numbers = torch.tensor((ZS * n)[:n])
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = (i != j) & ((pos[i] - pos[j]).norm(dim=-1) < 4.0)
    src, dst = j[keep], i[keep]
    return pos, numbers, src, dst, torch.zeros(len(src), 3, dtype=dtype), torch.zeros(3, 3)


def energy_forces(model, pos, *rest):
    p = pos.detach().clone().requires_grad_(True)
    e = model(p, *rest)
    (g,) = torch.autograd.grad(e, p)
    return e.detach(), -g


def test_path_signs():
    """SchNetPack's real CG of ``l1 x l2 -> l3`` is ``(-1)^((l1+l2-l3)/2) sqrt(2 l3 + 1)`` times
    e3nn's wigner_3j (in e3nn's basis); the (1, 1, 0) path: ``-sqrt(1) * w3j``."""
    paths = {p[:3]: p[3] for p in so3_paths(2)}
    assert paths[(0, 0, 0)] == 1 and paths[(1, 1, 0)] == -1 and paths[(2, 2, 2)] == -1
    assert (1, 1, 1) not in paths and (1, 2, 3) not in paths  # odd sums; l3 > lmax


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("kwargs", [{}, {"radial_basis": "bessel", "shared_interactions": True}])
def test_matches_e3nn_twin_float64(backend, kwargs):
    model = build(**kwargs)
    twin = reference_twin(model)
    assert not any(isinstance(m, o3.TensorProduct) for m in model.modules())
    assert any(isinstance(m, o3.TensorProduct) for m in twin.modules())
    args = cluster()
    with fastcg.use_backend(backend):
        e, f = energy_forces(model, *args)
    e_ref, f_ref = energy_forces(twin, *args)
    assert abs(float(e - e_ref)) <= 1e-10 * max(1.0, abs(float(e_ref)))
    assert float((f - f_ref).abs().max()) <= 1e-9 * max(1.0, float(f_ref.abs().max()))
    assert float(f_ref.abs().max()) > 1e-3


def test_matches_e3nn_twin_float32():
    model = build(torch.float32)
    twin = reference_twin(model)
    args = cluster(dtype=torch.float32)
    e, f = energy_forces(model, *args)
    e_ref, f_ref = energy_forces(twin, *args)
    assert abs(float(e - e_ref)) <= 1e-5 * max(1.0, abs(float(e_ref)))
    assert float((f - f_ref).abs().max()) <= 1e-4 * max(1.0, float(f_ref.abs().max()))


@pytest.mark.parametrize("parity", [False, True])
def test_energy_invariant_forces_equivariant(parity):
    model = build(lmax=3)
    pos, numbers, src, dst, shifts, cell = cluster()
    torch.manual_seed(1)
    rot = o3.rand_matrix(dtype=torch.float64) * (-1.0 if parity else 1.0)
    perm = torch.randperm(len(pos))
    inv = torch.argsort(perm)  # new index of each old atom
    moved = (pos @ rot.T + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64))[perm]
    e, f = energy_forces(model, pos, numbers, src, dst, shifts, cell)
    e2, f2 = energy_forces(model, moved, numbers[perm], inv[src], inv[dst], shifts, cell)
    assert abs(float(e - e2)) <= 1e-10 * max(1.0, abs(float(e)))
    assert float((f2 - (f @ rot.T)[perm]).abs().max()) <= 1e-9 * float(f.abs().max())


def test_gradcheck_positions_and_weights():
    """First and second derivatives (force training) against finite differences."""
    model = build(num_features=2, num_interactions=2, lmax=2, num_basis=3)
    pos, numbers, src, dst, shifts, cell = cluster(4)
    w = model.interactions[1].filter.weight
    p = pos.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: model(p, numbers, src, dst, shifts, cell), (p,))
    assert torch.autograd.gradgradcheck(lambda p: model(p, numbers, src, dst, shifts, cell), (p,))
    (g,) = torch.autograd.grad(model(p, numbers, src, dst, shifts, cell), p, create_graph=True)
    (gw,) = torch.autograd.grad(g.square().sum(), w)  # d|F|^2 / d weight
    h, k = 1e-6, (0, 1)
    base, vals = w[k].item(), []
    for step in (h, -h, 0.0):
        with torch.no_grad():
            w[k] = base + step
        (gs,) = torch.autograd.grad(model(p, numbers, src, dst, shifts, cell), p)
        vals.append(gs.square().sum())
    assert abs(float(gw[k] - (vals[0] - vals[1]) / (2 * h))) < 1e-6 * max(1.0, abs(float(gw[k])))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="radial_basis"):
        SO3Net(ZS, radial_basis="chebyshev")
    with pytest.raises(ValueError, match="lmax"):
        SO3Net(ZS, lmax=-1)


def test_torchscript_matches_eager():
    model = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated
        scripted = torch.jit.script(model)
    args = cluster()
    e, f = energy_forces(model, *args)
    e2, f2 = energy_forces(scripted, *args)
    assert float((e - e2).abs()) == 0.0 and torch.equal(f, f2)


def test_md_builds_so3net_and_its_twin():
    """``fastcg md --model so3net`` builds fastcg's SO3Net and its e3nn twin (same function)."""
    from fastcg.md import build_models

    model, twin, label = build_models("so3net", [29], 4, 1, seed=0)
    assert isinstance(model, SO3Net) and "twin" in label
    pos, _, src, dst, shifts, cell = cluster(5)
    numbers = torch.full((5,), 29)
    e, f = energy_forces(model, pos, numbers, src, dst, shifts, cell)
    e_ref, f_ref = energy_forces(twin, pos, numbers, src, dst, shifts, cell)
    assert abs(float(e - e_ref)) <= 1e-10 * max(1.0, abs(float(e_ref)))
