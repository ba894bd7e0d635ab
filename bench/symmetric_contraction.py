"""Benchmark fastcg's symmetric contraction against mace-torch's (and cuequivariance-torch's).

    .venv-mace/bin/python bench/symmetric_contraction.py [--threads 2] [--dtype float32]
        [--nodes 2000] [--channels 128] [--lmax 3] [--correlation 3] [--elements 1 10]

MACE's product basis as mace-torch builds it: x [nodes, channels, (lmax+1)^2] from
"Cx0e+Cx1o+Cx2e+Cx3o", output "Cx0e+Cx1o", one-hot species. Rows: forward, and forward +
backward (gradients of x and of the weights, from out.sum()), timed with torch.utils.benchmark's
blocked_autorange (median, ms). The fastcg module is ``SymmetricContraction.from_mace`` of the
mace-torch module, so both compute the same numbers (checked before timing).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils import benchmark

from fastcg.irreps import o3
from fastcg.nn.symmetric_contraction import SymmetricContraction

o3()  # imports e3nn (0.4.4 in mace's environment) with the flag it needs, before mace does


def _irreps_in(channels: int, lmax: int) -> str:
    return "+".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))


def _mace(irreps_in: str, irreps_out: str, correlation: int, elements: int):
    from mace.modules.symmetric_contraction import SymmetricContraction as MaceSC

    return MaceSC(o3().Irreps(irreps_in), o3().Irreps(irreps_out), correlation,
                  num_elements=elements)  # fmt: skip


def _cueq(irreps_in: str, irreps_out: str, correlation: int, elements: int, dtype):
    """cuequivariance-torch's SymmetricContraction (its naive CPU method), or None."""
    try:
        import cuequivariance as cue
        import cuequivariance_torch as cuet
    except ImportError:
        return None
    return cuet.SymmetricContraction(
        cue.Irreps(cue.O3, irreps_in), cue.Irreps(cue.O3, irreps_out),
        contraction_degree=correlation, num_elements=elements, layout_in=cue.ir_mul,
        layout_out=cue.mul_ir, original_mace=True, dtype=dtype, math_dtype=dtype,
    )  # fmt: skip


def _time(fn, label: str, sub: str, threads: int) -> float:
    timer = benchmark.Timer("fn()", globals={"fn": fn}, label=label, sub_label=sub,
                            num_threads=threads)  # fmt: skip
    return timer.blocked_autorange(min_run_time=2.0).median * 1e3


def _calls(module, x, y, grad: bool):
    params = [p for p in module.parameters() if p.requires_grad]

    def fwd():
        with torch.no_grad():
            module(x, y)

    def fwd_bwd():
        xr = x.detach().requires_grad_(True)
        out = module(xr, y)
        torch.autograd.grad(out.sum(), [xr, *params])

    return fwd_bwd if grad else fwd


def run(args: argparse.Namespace) -> list[tuple]:
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)
    irreps_in = _irreps_in(args.channels, args.lmax)
    irreps_out = f"{args.channels}x0e+{args.channels}x1o"
    rows = []
    for elements in args.elements:
        torch.manual_seed(0)
        mace = _mace(irreps_in, irreps_out, args.correlation, elements)
        ours = SymmetricContraction.from_mace(mace)
        d = (args.lmax + 1) ** 2
        x = torch.randn(args.nodes, args.channels, d)
        species = torch.randint(0, elements, (args.nodes,))
        y = torch.nn.functional.one_hot(species, elements).to(dtype)
        err = (ours(x, y) - mace(x, y)).abs().max().item()
        libs = {"mace-torch": (mace, x, y), "fastcg": (ours, x, y)}
        cueq = _cueq(irreps_in, irreps_out, args.correlation, elements, dtype)
        if cueq is not None:  # cuequivariance wants x in ir_mul: [nodes, d * channels]
            libs["cuequivariance"] = (cueq, x.transpose(1, 2).reshape(args.nodes, -1), species)
        label = f"symmetric_contraction {args.nodes} nodes, {elements} elements, {args.dtype}"
        times = {}
        for name, (mod, xi, yi) in libs.items():
            for grad in (False, True):
                times[name, grad] = _time(_calls(mod, xi, yi, grad), label, name, args.threads)
        for grad in (False, True):
            base = times["mace-torch", grad]
            for name in libs:
                t = times[name, grad]
                rows.append((elements, "fwd+bwd" if grad else "fwd", name, t, base / t, err))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--nodes", type=int, default=2000)
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--lmax", type=int, default=3)
    p.add_argument("--correlation", type=int, default=3)
    p.add_argument("--elements", type=int, nargs="+", default=[1, 10])
    args = p.parse_args()
    rows = run(args)
    print("| elements | pass | library | median ms | speed-up vs mace-torch | max |diff| |")
    print("| --- | --- | --- | --- | --- | --- |")
    for e, pas, name, t, s, err in rows:
        print(f"| {e} | {pas} | {name} | {t:.2f} | {s:.1f}x | {err:.1e} |")


if __name__ == "__main__":
    main()
