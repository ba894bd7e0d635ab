"""A TorchScript model built from fastcg.nn runs where only the compiled library is loaded:
energies and forces (first-order autograd of the forward ops is registered in C++,
csrc/autograd.cpp), as in a LAMMPS pair style."""

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

import fastcg
import fastcg.nn as fnn
from fastcg.models.base import conv_instructions
from fastcg.ops import scatter_sum, symmetric_contraction, symmetric_contraction_descriptor

FORWARD_OPS = ("spherical_harmonics", "tensor_product", "conv", "conv_radial", "scatter_sum",
               "linear", "symmetric_contraction")  # fmt: skip
SH = "1x0e+1x1o+1x2e"


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tp = fnn.FullyConnectedTensorProduct("4x0e+2x1o", "1x0e+1x1o", "3x0e+2x1o")
        self.lin = fnn.Linear("3x0e+2x1o", "2x0e")

    def forward(self, a, b):
        return self.lin(self.tp(a, b))


class _Potential(torch.nn.Module):
    """Energies of a batch of structures through every fastcg op: spherical harmonics, conv,
    species linear, symmetric contraction, tensor product, linear and scatter_sum."""

    def __init__(self, num_species: int = 3, c: int = 4):
        super().__init__()
        self.c = c
        self.embed = torch.nn.Parameter(torch.randn(num_species, c))
        self.sh = fnn.SphericalHarmonics(SH, normalize=True, normalization="component")
        mid, ins = conv_instructions(f"{c}x0e", SH, f"{c}x0e+{c}x1o")
        self.conv = fnn.TensorProductConv(f"{c}x0e", SH, mid, ins)
        self.radial = torch.nn.Parameter(torch.randn(self.conv.weight_numel))
        self.species_linear = fnn.SpeciesLinear(mid, f"{c}x0e+{c}x1o", num_species)
        self.product = fnn.SymmetricContraction(
            f"{c}x0e+{c}x1o", f"{c}x0e", 3, num_elements=num_species
        )
        self.tp = fnn.FullyConnectedTensorProduct(f"{c}x0e+{c}x1o", f"{c}x0e+{c}x1o", f"{c}x0e")
        self.readout = fnn.Linear(f"{c}x0e", "1x0e")

    def forward(self, pos: Tensor, species: Tensor, src: Tensor, dst: Tensor, batch: Tensor,
                num_graphs: int) -> Tensor:  # fmt: skip
        vec = pos.index_select(0, src) - pos.index_select(0, dst)
        w = torch.exp(-vec.pow(2).sum(-1)).unsqueeze(-1) * self.radial
        h = self.embed.index_select(0, species)
        m = self.conv(h, self.sh(vec), w, src, dst, pos.shape[0])
        h = self.species_linear(m, species)
        c = self.c
        channels = torch.cat([h[:, :c].reshape(-1, c, 1), h[:, c:].reshape(-1, c, 3)], dim=-1)
        e = self.readout(self.product(channels, species) + self.tp(h, h))
        return scatter_sum(e, batch, num_graphs).sum(-1)


def _structures(n: int = 10):
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    species = torch.arange(n) % 3
    batch = (torch.arange(n) >= n // 2).long()
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = (i != j) & (batch[i] == batch[j])
    return pos, species, j[keep], i[keep], batch, 2


def _scripted(model: torch.nn.Module, path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated in favour of export
        scripted = torch.jit.script(model)
    scripted.save(str(path))
    return scripted


def _run(code: str, cwd) -> str:
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, cwd=cwd)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_scripted_model_runs_without_python_package(tmp_path):
    scripted = _scripted(_Model(), tmp_path / "model.pt")
    a, b = torch.randn(5, 10), torch.randn(5, 4)
    torch.save((a, b, scripted(a, b)), tmp_path / "io.pt")
    out = _run(f"""
        import sys, torch
        torch.ops.load_library({fastcg.library_path()!r})
        m = torch.jit.load({str(tmp_path / "model.pt")!r})
        a, b, ref = torch.load({str(tmp_path / "io.pt")!r})
        assert "fastcg" not in sys.modules and "e3nn" not in sys.modules
        print(float((m(a, b) - ref).abs().max()))
    """, tmp_path)  # fmt: skip
    assert float(out.strip().splitlines()[-1]) == 0.0


@pytest.mark.parametrize("ns", ["fastcg", "fastcg_triton"])
@pytest.mark.parametrize("op", FORWARD_OPS)
def test_forward_ops_have_cpp_autograd(op, ns):
    """The forward ops' autograd comes from the library, for the Triton ops too (one autograd);
    their backward ops' from Python."""
    if ns == "fastcg_triton" and op == "conv_radial":
        assert not hasattr(torch.ops.fastcg_triton, op)  # Triton has no conv_radial
        return
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    assert has(f"{ns}::{op}", "Autograd")
    dump = torch._C._dispatch_dump(f"{ns}::{op}")
    assert "autograd.cpp" in dump and "Python" not in dump.split("Autograd[alias]")[-1][:80]
    if op != "scatter_sum":  # its backward is index_select
        assert "autograd.cpp" not in torch._C._dispatch_dump(f"{ns}::{op}_backward")


def test_scripted_potential_energy_and_forces_without_python_package(tmp_path):
    model = _Potential().double()
    scripted = _scripted(model, tmp_path / "model.pt")
    args = _structures()
    pos = args[0].clone().requires_grad_(True)
    energy = scripted(pos, *args[1:])
    (grad,) = torch.autograd.grad(energy.sum(), pos)
    eager = model(pos, *args[1:])
    assert torch.equal(energy, eager) and float(grad.abs().max()) > 0
    torch.save((args, energy.detach(), -grad), tmp_path / "io.pt")
    out = _run(f"""
        import sys, torch
        torch.ops.load_library({fastcg.library_path()!r})
        m = torch.jit.load({str(tmp_path / "model.pt")!r})
        args, e_ref, f_ref = torch.load({str(tmp_path / "io.pt")!r})
        assert "fastcg" not in sys.modules and "e3nn" not in sys.modules
        pos = args[0].clone().requires_grad_(True)
        e = m(pos, *args[1:])
        (g,) = torch.autograd.grad(e.sum(), pos, create_graph=True)
        print(float((e - e_ref).abs().max()), float((-g - f_ref).abs().max()))
        try:  # second derivatives need the backward ops' autograd, registered from Python
            torch.autograd.grad(g.pow(2).sum(), pos)
        except RuntimeError as err:
            print(str(err).splitlines()[0])
    """, tmp_path)  # fmt: skip
    errors, second_order = out.strip().splitlines()[-2:]
    energy_error, forces_error = map(float, errors.split())
    assert energy_error == 0.0
    assert forces_error <= 1e-12
    assert second_order.startswith("fastcg: second derivatives need the autograd of fastcg::")


class _BackwardMasks(TorchDispatchMode):
    """Records the output_mask each ``fastcg::*_backward`` op is called with."""

    def __init__(self):
        super().__init__()
        self.masks: dict[str, list[bool]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name.startswith("fastcg::") and name.endswith("_backward"):
            self.masks[name.split("::")[1]] = list(args[-1])
        return func(*args, **(kwargs or {}))


def _case(name: str):
    """(function of the differentiable inputs, those inputs, the backward op's name)."""
    gen = torch.Generator().manual_seed(1)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    ins = [(0, 0, 0, "uvw", True), (0, 1, 1, "uvw", True), (1, 1, 0, "uvw", True),
           (1, 0, 1, "uvw", True), (1, 2, 1, "uvw", True)]  # fmt: skip
    tp = fastcg.tensor_product_descriptor("2x0e+1x1o", SH, "2x0e+2x1o", ins)
    lin = fastcg.linear_descriptor("2x0e+1x1o", "1x0e+2x1o")
    sc = symmetric_contraction_descriptor("0e+1o", "0e+1o", 2)
    src, dst = torch.tensor([0, 1, 3, 2, 0]), torch.tensor([1, 1, 0, 2, 3])
    species = torch.tensor([0, 2, 1, 1])
    tp_inputs = (rand(5, 5), rand(5, 9), rand(5, tp.weight_numel))
    return {
        "tensor_product": (lambda *a: fastcg.tensor_product(*a, tp), tp_inputs, "tensor_product"),
        "conv": (lambda x, y, w: fastcg.conv(x, y, w, src, dst, 4, tp), tp_inputs, "conv"),
        "linear": (lambda x, w: fastcg.linear(x, w, lin), (rand(4, 5), rand(lin.weight_numel)),
                   "linear"),
        "linear_species": (lambda x, w: fastcg.linear(x, w, lin, species),
                           (rand(4, 5), rand(3, lin.weight_numel)), "linear"),
        "symmetric_contraction": (lambda x, w: symmetric_contraction(x, species, w, sc),
                                  (rand(4, 2, 4), rand(3, sc.weight_numel, 2)),
                                  "symmetric_contraction"),
    }[name]  # fmt: skip


@pytest.mark.parametrize("case", ["tensor_product", "conv", "linear", "linear_species",
                                  "symmetric_contraction"])  # fmt: skip
def test_cpp_backward_masks_follow_needs_input_grad(case):
    """The C++ autograd asks the backward op for exactly the gradients autograd needs, and
    they equal the reference's."""
    fn, inputs, op = _case(case)
    for i in range(len(inputs)):
        args = [t.clone().requires_grad_(j == i) for j, t in enumerate(inputs)]
        with _BackwardMasks() as calls:
            out = fn(*args)
            (grad,) = torch.autograd.grad(out.pow(2).sum(), args[i])
        assert calls.masks == {f"{op}_backward": [j == i for j in range(len(inputs))]}
        with fastcg.use_backend("reference"):
            ref = [t.clone().requires_grad_(j == i) for j, t in enumerate(inputs)]
            (expected,) = torch.autograd.grad(fn(*ref).pow(2).sum(), ref[i])
        torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-10)
