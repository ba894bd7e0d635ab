"""fastcg.models (SchNet, NequIP, MACE-style) against their e3nn twins, symmetry, physics checks,
TorchScript deployment and a two-process DistributedDataParallel training step."""

import re
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from conftest import assert_close, default_dtype, o3, rotation

import fastcg
from fastcg.models import MACE, NequIP, SchNet
from fastcg.models._reference import reference_twin

SMALL = {
    "schnet": (SchNet, {"num_features": 8, "num_interactions": 2, "num_gaussians": 10}),
    "nequip": (NequIP, {"num_features": 4, "lmax": 2, "num_layers": 2, "num_basis": 4}),
    "mace": (MACE, {"num_channels": 4, "max_ell": 2, "hidden_lmax": 1, "correlation": 3,
                    "num_bessel": 4, "radial_mlp": (8,), "readout_hidden": 4}),
}  # fmt: skip
ZS = [1, 6, 8]


def build(name: str, dtype=torch.float64, cutoff: float = 4.0) -> torch.nn.Module:
    cls, kwargs = SMALL[name]
    with default_dtype(dtype):
        return cls(ZS, cutoff=cutoff, **kwargs)


def cluster(n: int = 9, dtype=torch.float64, seed: int = 0):
    """A random molecule-sized cluster with a full (all pairs within the cutoff) edge list."""
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, 3, generator=gen, dtype=dtype) * 1.2
    numbers = torch.tensor(ZS * (n // 3) + ZS[: n % 3])
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = (i != j) & ((pos[i] - pos[j]).norm(dim=-1) < 4.0)
    src, dst = j[keep], i[keep]
    return (
        pos,
        numbers,
        src,
        dst,
        torch.zeros(len(src), 3, dtype=dtype),
        torch.zeros(3, 3, dtype=dtype),
    )


def energy_forces(model, pos, *rest, create_graph=False):
    p = pos.detach().clone().requires_grad_(True)
    e = model(p, *rest)
    (g,) = torch.autograd.grad(e, p, create_graph=create_graph)
    return e, -g


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_matches_e3nn_twin_float64(name, backend):
    model = build(name)
    twin = reference_twin(model)
    assert not any(isinstance(m, o3.TensorProduct) for m in model.modules())
    assert any(isinstance(m, o3.TensorProduct) for m in twin.modules())
    args = cluster()
    with fastcg.use_backend(backend):
        e, f = energy_forces(model, *args)
    e_ref, f_ref = energy_forces(twin, *args)
    assert abs(float(e - e_ref)) <= 1e-10 * max(1.0, abs(float(e_ref)))
    assert float((f - f_ref).abs().max()) <= 1e-9 * max(1.0, float(f_ref.abs().max()))


@pytest.mark.parametrize("name", list(SMALL))
def test_matches_e3nn_twin_float32(name):
    model = build(name, torch.float32)
    twin = reference_twin(model)
    args = cluster(dtype=torch.float32)
    e, f = energy_forces(model, *args)
    e_ref, f_ref = energy_forces(twin, *args)
    assert_close(e, e_ref)
    assert_close(f, f_ref)


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("parity", [False, True])
def test_energy_invariant_forces_equivariant(name, parity):
    model = build(name)
    pos, numbers, src, dst, shifts, cell = cluster()
    rot = rotation(parity)
    perm = torch.randperm(len(pos))
    inv = torch.argsort(perm)  # new index of each old atom
    moved = (pos @ rot.T + torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64))[perm]
    e, f = energy_forces(model, pos, numbers, src, dst, shifts, cell)
    e2, f2 = energy_forces(model, moved, numbers[perm], inv[src], inv[dst], shifts, cell)
    assert abs(float(e - e2)) <= 1e-10 * max(1.0, abs(float(e)))
    assert_close(f2, (f @ rot.T)[perm])


@pytest.mark.parametrize("name", ["nequip", "mace"])
def test_forces_are_minus_gradient_finite_differences(name):
    model = build(name)
    pos, *rest = cluster(6)
    _, f = energy_forces(model, pos, *rest)
    h, fd = 1e-5, torch.zeros_like(pos)
    with torch.no_grad():
        for a in range(pos.shape[0]):
            for k in range(3):
                d = torch.zeros_like(pos)
                d[a, k] = h
                fd[a, k] = -(model(pos + d, *rest) - model(pos - d, *rest)) / (2 * h)
    assert float((f - fd).abs().max()) < 1e-7 * max(1.0, float(f.abs().max()))


@pytest.mark.parametrize("name", ["nequip", "mace"])
def test_hessian_vector_product_matches_finite_differences(name):
    model = build(name)
    pos, *rest = cluster(6)
    v = torch.randn_like(pos)
    p = pos.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(p, *rest), p, create_graph=True)
    (hv,) = torch.autograd.grad(g, p, v)  # double backward through every fastcg op
    h = 1e-5
    _, f_plus = energy_forces(model, pos + h * v, *rest)
    _, f_minus = energy_forces(model, pos - h * v, *rest)
    fd = -(f_plus - f_minus) / (2 * h)
    assert float((hv - fd).abs().max()) < 1e-6 * max(1.0, float(hv.abs().max()))


def test_scripted_model_energy_and_forces_in_a_process_without_fastcg(tmp_path):
    model = build("mace")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated
        scripted = torch.jit.script(model)
        scripted.save(str(tmp_path / "model.pt"))
    args = cluster()
    e_ref, f_ref = energy_forces(scripted, *args)  # in this process: Python autograd is here
    e_eager, f_eager = energy_forces(model, *args)
    assert float((e_ref - e_eager).detach().abs()) == 0.0 and torch.equal(f_ref, f_eager)
    torch.save((args, e_ref.detach(), f_ref), tmp_path / "io.pt")
    code = textwrap.dedent(f"""
        import sys, torch
        torch.ops.load_library({fastcg.library_path()!r})
        m = torch.jit.load({str(tmp_path / "model.pt")!r})
        args, e_ref, f_ref = torch.load({str(tmp_path / "io.pt")!r})
        assert "fastcg" not in sys.modules and "e3nn" not in sys.modules
        pos = args[0].clone().requires_grad_(True)
        e = m(pos, *args[1:])
        print("energy_error", float((e - e_ref).abs()))
        (g,) = torch.autograd.grad(e, pos)
        print("forces_error", float((-g - f_ref).abs().max()))
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    print(run.stdout)  # what a Python-free process can do (shown with pytest -s)
    lines = dict(line.split(" ", 1) for line in run.stdout.strip().splitlines())
    assert float(lines["energy_error"]) == 0.0
    # Forces: the forward ops' first-order autograd is registered in C++ (csrc/autograd.cpp).
    assert float(lines["forces_error"]) <= 1e-12


DDP_SCRIPT = """
import os, sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
sys.path.insert(0, {tests!r})
import fastcg
from test_models import build, cluster

def loss_fn(model, seed):
    pos, *rest = cluster(6, seed=seed)
    target_e = torch.tensor(1.0, dtype=torch.float64)
    p = pos.clone().requires_grad_(True)
    e = model(p, *rest)
    (g,) = torch.autograd.grad(e, p, create_graph=True)
    return (e - target_e) ** 2 + (g ** 2).mean()  # forces -g, target 0

def grads_single(seeds):
    torch.manual_seed(0)
    model = build("mace")
    total = sum(loss_fn(model, s) for s in seeds) / len(seeds)
    total.backward()
    return {{n: p.grad.clone() for n, p in model.named_parameters()}}

def main(rank, world):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", {port!r}
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = DDP(build("mace"))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    opt.zero_grad()
    loss_fn(model, seed=10 + rank).backward()
    grads = {{n.removeprefix("module."): p.grad for n, p in model.named_parameters()}}
    ref = grads_single([10, 11])
    scale = max(float(g.abs().max()) for g in ref.values())
    err = max(float((grads[n] - ref[n]).abs().max()) for n in ref) / max(1.0, scale)
    opt.step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    same = float((gathered[0] - gathered[1]).abs().max())
    print(f"rank {{rank}} grad_error {{err:.3e}} param_diff {{same:.3e}}", flush=True)
    dist.destroy_process_group()

if __name__ == "__main__":
    torch.multiprocessing.spawn(main, args=(2,), nprocs=2)
"""


def test_ddp_two_processes_energy_and_force_training_step(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    tests = str(__import__("pathlib").Path(__file__).parent)
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=tests, port=port))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stdout[-1000:] + run.stderr[-3000:]
    print(run.stdout)
    # the two ranks share one pipe: their lines can interleave, so match the records themselves
    records = re.findall(r"rank (\d) grad_error (\S+?) param_diff (\d\.\d+e[+-]\d+)", run.stdout)
    assert sorted(r[0] for r in records) == ["0", "1"], run.stdout
    for rank, grad_error, param_diff in records:
        assert float(grad_error) < 1e-10, rank  # DDP's averaged gradient = single-process mean
        assert float(param_diff) == 0.0, rank  # both ranks hold the same parameters


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("act", ["silu", "ssp"])
def test_mlp_split_is_the_mlp_times_the_scale(bias, act):
    """The models' radial weights go to conv_radial as (radial, matrix); the e3nn twins use the
    same split, so it is checked here against the MLP itself."""
    from fastcg.models.radial import MLP

    mlp = MLP([6, 16, 16, 9], act=act, bias=bias).double()
    x = torch.randn(11, 6, dtype=torch.float64)
    scale = torch.rand(11, 1, dtype=torch.float64)
    radial, matrix = mlp.split(x, scale)
    assert radial.shape == (11, 16 + bias) and matrix.shape == (16 + bias, 9)
    torch.testing.assert_close(radial @ matrix, mlp(x) * scale, rtol=1e-12, atol=1e-12)
