"""The generated csrc/core/sh.h and fastcg/triton/_sh_generated.py must match their generator (and
the generator must match e3nn)."""

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_sh", ROOT / "tools" / "gen_sh.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sh_header_is_up_to_date():
    # Both generated files; --check also re-verifies the recursion and its gradient against e3nn
    # before comparing.
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


def _triton_helpers_as_torch(gen) -> dict:
    """The emitted Triton helpers run as plain PyTorch: ``@triton.jit`` is the identity and
    ``tl.full((), c, dtype)`` a 0-d tensor, so the emitter's code is checked without Triton."""
    tl = types.SimpleNamespace(
        constexpr=object,
        full=lambda shape, value, dtype: torch.tensor(value, dtype=dtype),
        static_assert=lambda cond, msg="": None,
    )
    ns = {"tl": tl, "triton": types.SimpleNamespace(jit=lambda fn: fn)}
    source = gen.generate_triton().replace("import triton\nimport triton.language as tl\n", "")
    exec(compile(source, "_sh_generated.py", "exec"), ns)
    return ns


def test_triton_helpers_are_the_recursion():
    # _poly gives every level, _poly at (l + 1) d the jvp and _vjp the gradient, as eval_terms /
    # autograd; the vjp applied to the jvp P is the double backward's sum_m G_m H_m d.
    gen = load_generator()
    ns = _triton_helpers_as_torch(gen)
    r = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    d = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    g = torch.randn(
        8, (gen.LMAX + 1) ** 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    )
    x, y, z = r.unbind(1)
    levels, jvps = [(torch.ones_like(x),)], [(torch.zeros_like(x),)]
    v, hv = [torch.zeros_like(x)] * 3, [torch.zeros_like(x)] * 3
    for l in range(gen.LMAX):
        G = tuple(g[:, (l + 1) ** 2 + m] for m in range(2 * l + 3))
        v = ns["_vjp"](levels[l], G, *v, l)
        hv = ns["_vjp"](jvps[l], G, *hv, l)
        jvps.append(ns["_poly"](levels[l], *((l + 1) * d).unbind(1), l))
        levels.append(ns["_poly"](levels[l], x, y, z, l))
    y_all = torch.stack([t for level in levels for t in level], dim=1)
    torch.testing.assert_close(y_all, gen.eval_terms(r), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.stack(v, 1), gen.eval_vjp(r, g), rtol=1e-12, atol=1e-12)
    rr = r.clone().requires_grad_(True)
    _, jvp = torch.autograd.functional.jvp(gen.eval_terms, rr, d)
    p_all = torch.stack([t for level in jvps for t in level], dim=1)
    torch.testing.assert_close(p_all, jvp, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(gen.eval_vjp(rr, g), rr, d)  # H_g d: the hessian is symmetric
    torch.testing.assert_close(torch.stack(hv, 1), grad, rtol=1e-12, atol=1e-12)
