"""The generated csrc/core/sh.h must match its generator (and the generator must match e3nn)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_sh", ROOT / "tools" / "gen_sh.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sh_header_is_up_to_date():
    # --check also re-verifies the recursion and its gradient against e3nn before comparing.
    run = subprocess.run(
        [sys.executable, "tools/gen_sh.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr


def test_generator_terms_are_homogeneous_and_self_consistent():
    # Properties the emitted derivatives rely on, checked on the generator's own term lists:
    # Y_l is homogeneous of degree l, and the harmonic-gradient identity (sh_vjp) equals autograd.
    gen = load_generator()
    r = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    degree = torch.cat([torch.full((2 * l + 1,), float(l)) for l in range(gen.LMAX + 1)])
    y = gen.eval_terms(r)
    torch.testing.assert_close(gen.eval_terms(1.5 * r), y * 1.5**degree, rtol=1e-12, atol=0)
    g = torch.randn(y.shape, dtype=torch.float64)
    rr = r.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gen.eval_terms(rr), rr, g)
    torch.testing.assert_close(gen.eval_vjp(r, g), grad, rtol=1e-12, atol=1e-12)
