"""The ``fastcg`` command: ``check`` (every op against e3nn), ``bench`` and ``md``.

Usage::

    fastcg check [--dtype float64|float32|both] [--backend reference|cpu|all] [--quick]
    fastcg bench [bench/ops.py's options]      (from a source checkout)
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

import fastcg

from .irreps import o3
from .testing import (
    SYMMETRIC_CONTRACTION_CASES,
    TOLERANCE,
    default_dtype,
    full_instructions,
    scaled_error,
)

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class Case:
    """One comparison: fastcg and e3nn functions of the same differentiable inputs."""

    op: str
    name: str
    inputs: Callable[[torch.dtype], list[torch.Tensor]]
    fastcg: Callable[..., torch.Tensor]
    e3nn: Callable[..., torch.Tensor]


def _grad(out, inputs: list[torch.Tensor], g=None, create_graph=False) -> list[torch.Tensor]:
    """d<out, g>/d inputs, zeros where ``out`` does not depend on an input (a constant)."""
    if not (torch.is_tensor(out) and out.requires_grad):
        return [torch.zeros_like(x) for x in inputs]
    grads = torch.autograd.grad(out, inputs, g, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(x) if d is None else d for x, d in zip(inputs, grads)]


def _orders(fn, inputs: list[torch.Tensor], seed: int) -> list[list[torch.Tensor]]:
    """Value, first derivatives (of <out, g>, g random) and second derivatives of ``fn``.

    The second order is the gradient of sum(first derivatives ^ 2) with respect to every input:
    it runs each op's double backward. A constant order (l = 0 harmonics, a linear op's second
    derivative) compares as zeros, so an op whose backward is not differentiable fails.
    """
    xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    diff = [x for x in xs if x.requires_grad]
    out = fn(*xs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    first = _grad(out, diff, g, create_graph=True)
    second = _grad(sum((f.square().sum() for f in first if f.requires_grad), start=0), diff)
    return [[out.detach()], [f.detach() for f in first], second]


def _compare(case: Case, dtype: torch.dtype, backend: str) -> list[float]:
    """Max error of the value, the first and the second derivatives."""
    inputs = case.inputs(dtype)
    with fastcg.use_backend(backend):
        mine = _orders(case.fastcg, inputs, 1)
    ref = _orders(case.e3nn, inputs, 1)
    return [max(scaled_error(a, b) for a, b in zip(m, r)) for m, r in zip(mine, ref)]


def _per_dtype(module: torch.nn.Module) -> dict[torch.dtype, torch.nn.Module]:
    """One copy per dtype: ``.to()`` in place would round the float64 constants to float32."""
    return {dtype: copy.deepcopy(module).to(dtype) for dtype in DTYPES.values()}


def _sh_cases() -> list[Case]:
    cases = []
    for lmax in range(9):
        for norm in ("component", "norm", "integral"):
            for normalize in (True, False):

                def inputs(dtype, lmax=lmax):
                    gen = torch.Generator().manual_seed(lmax)
                    return [torch.randn(16, 3, generator=gen, dtype=dtype)]

                cases.append(Case(
                    "spherical_harmonics", f"l<={lmax} {norm} normalize={normalize}", inputs,
                    lambda v, a=(lmax, normalize, norm): fastcg.spherical_harmonics(v, *a),
                    lambda v, a=(lmax, normalize, norm): o3().spherical_harmonics(
                        list(range(a[0] + 1)), v, a[1], a[2]),
                ))  # fmt: skip
    return cases


TP_CONFIGS = {  # name: (irreps_in1, irreps_in2, irreps_out, mode)
    "uvw": ("2x0e+2x1o+1x2e", "1x0e+1x1o", "3x0e+2x1o+2x1e+1x2e", "uvw"),
    "uvu": ("4x0e+3x1o+2x2e", "1x0e+1x1o+1x2e", "4x0e+3x1o+2x2e+3x1e+4x1o", "uvu"),
    "uuu": ("3x0e+3x1o", "3x0e+3x1o", "3x0e+3x1o+3x1e", "uuu"),
    "uvv": ("2x0e+1x1o", "3x0e+3x1o", "3x0e+3x1o+3x1e", "uvv"),
    "uuw": ("2x0e+2x1o", "2x0e+2x1o", "3x0e+2x1o+1x1e", "uuw"),
}


def _tp_cases() -> list[Case]:
    cases = []
    for name, (a, b, c, mode) in TP_CONFIGS.items():
        ir1, ir2, iro = o3().Irreps(a), o3().Irreps(b), o3().Irreps(c)
        ins = full_instructions(ir1, ir2, iro, [mode])
        for shared in (False, True):
            tp = _e3nn_tp(ir1, ir2, iro, ins, shared)
            desc = fastcg.descriptors.from_e3nn(tp)
            tps = _per_dtype(tp)

            def inputs(dtype, tp=tp, shared=shared):
                gen = torch.Generator().manual_seed(7)
                w = (tp.weight_numel,) if shared else (6, tp.weight_numel)
                return [torch.randn(6, tp.irreps_in1.dim, generator=gen, dtype=dtype),
                        torch.randn(6, tp.irreps_in2.dim, generator=gen, dtype=dtype),
                        torch.randn(w, generator=gen, dtype=dtype)]  # fmt: skip

            def e3nn_tp(x1, x2, w, tps=tps):
                return tps[x1.dtype](x1, x2, w)

            tag = f"{name} {'shared' if shared else 'per-sample'} weights"
            cases.append(Case("tensor_product", tag, inputs,
                              lambda x1, x2, w, d=desc: fastcg.tensor_product(x1, x2, w, d),
                              e3nn_tp))  # fmt: skip
            if not shared:
                cases.append(_conv_case(tps, desc, tag))
    return cases


def _conv_case(tps: dict, desc, tag: str, shared: bool = False, nodes: int = 5,
               edges: int = 12) -> Case:  # fmt: skip
    tp = tps[torch.float64]
    gen = torch.Generator().manual_seed(3)
    src = torch.randint(0, nodes, (edges,), generator=gen)
    dst = torch.randint(0, nodes, (edges,), generator=gen)

    def inputs(dtype):
        g = torch.Generator().manual_seed(11)
        w = (tp.weight_numel,) if shared else (edges, tp.weight_numel)
        return [torch.randn(nodes, tp.irreps_in1.dim, generator=g, dtype=dtype),
                torch.randn(edges, tp.irreps_in2.dim, generator=g, dtype=dtype),
                torch.randn(w, generator=g, dtype=dtype)]  # fmt: skip

    def ref(x, y, w):
        msg = tps[x.dtype](x[src], y, w)
        return msg.new_zeros(nodes, msg.shape[1]).index_add(0, dst, msg)

    return Case("conv", tag, inputs,
                lambda x, y, w: fastcg.conv(x, y, w, src, dst, nodes, desc), ref)  # fmt: skip


def _e3nn_tp(ir1, ir2, iro, ins, shared: bool):
    """An e3nn TensorProduct built in float64 (its constants unrounded)."""
    with torch.random.fork_rng(), default_dtype(torch.float64):
        return o3().TensorProduct(ir1, ir2, iro, ins, shared_weights=shared,
                                  internal_weights=False)  # fmt: skip


def _mace_conv_cases() -> list[Case]:
    """MACE's interaction at a small width: every uvu path to its own block, SH l <= 3.

    16 channels reach the kernels' vectorised loops, which the tiny cases above do not.
    """
    ir1, ir2 = o3().Irreps("16x0e+16x1o+16x2e"), o3().Irreps("1x0e+1x1o+1x2e+1x3o")
    outs = [(i, j, f"{m}x{c}") for i, (m, a) in enumerate(ir1) for j, (_, b) in enumerate(ir2)
            for c in a * b if c.l <= 3]  # fmt: skip
    iro = o3().Irreps("+".join(o for _, _, o in outs))
    ins = [(i, j, k, "uvu", True) for k, (i, j, _) in enumerate(outs)]
    cases = []
    for shared in (False, True):
        tp = _e3nn_tp(ir1, ir2, iro, ins, shared)
        tag = f"MACE-like 16ch {'shared' if shared else 'per-edge'} weights"
        desc = fastcg.descriptors.from_e3nn(tp)
        cases.append(_conv_case(_per_dtype(tp), desc, tag, shared, nodes=6, edges=20))
    return cases


def _other_cases() -> list[Case]:
    index = torch.tensor([0, 3, 1, 3, 0, 0, 2])

    def scatter_inputs(dtype):
        return [torch.randn(7, 5, generator=torch.Generator().manual_seed(5), dtype=dtype)]

    cases = [Case("scatter_sum", "7 rows -> 4", scatter_inputs,
                  lambda s: fastcg.scatter_sum(s, index, 4),
                  lambda s: s.new_zeros(4, 5).index_add(0, index, s))]  # fmt: skip
    for a, b in (("4x0e+3x1o+2x2e", "2x0e+5x1o+1x2e"), ("3x0e+2x1e", "4x0e+1x1e")):
        lin = o3().Linear(a, b)
        lins = _per_dtype(lin)
        desc = fastcg.linear_descriptor(a, b)

        def inputs(dtype, lin=lin):
            g = torch.Generator().manual_seed(9)
            return [torch.randn(5, lin.irreps_in.dim, generator=g, dtype=dtype),
                    torch.randn(lin.weight_numel, generator=g, dtype=dtype)]  # fmt: skip

        def ref(x, w, lins=lins):
            return lins[x.dtype](x, w)

        cases.append(Case("linear", f"{a} -> {b}", inputs,
                          lambda x, w, d=desc: fastcg.linear(x, w, d), ref))  # fmt: skip
    return cases + [_species_linear_case()]


def _species_linear_case() -> Case:
    """Per-species weights: e3nn's unshared Linear with each row's species' weights."""
    a, b = "4x0e+3x1o", "2x0e+5x1o"
    lins = _per_dtype(o3().Linear(a, b, shared_weights=False, internal_weights=False))
    desc = fastcg.linear_descriptor(a, b)
    species = torch.tensor([2, 0, 1, 2, 2, 0])

    def inputs(dtype):
        g = torch.Generator().manual_seed(13)
        return [torch.randn(6, desc.dim_in, generator=g, dtype=dtype),
                torch.randn(3, desc.weight_numel, generator=g, dtype=dtype)]  # fmt: skip

    return Case("linear", f"{a} -> {b}, 3 species", inputs,
                lambda x, w: fastcg.linear(x, w, desc, species),
                lambda x, w: lins[x.dtype](x, w[species]))  # fmt: skip


def _symmetric_contraction_case() -> Case:
    """MACE's product basis against the dense formula with the coupling tensors U (mace-torch's
    ``U_matrix_real``, built from e3nn's Wigner 3j): sum over orders nu of
    U[m, j_1..j_nu, k] x[j_1]..x[j_nu] W[species, k, c] per node and channel."""
    from . import reference
    from .descriptors.symmetric_contraction import (
        coupling_tensors,
        symmetric_contraction_descriptor,
    )
    from .irreps import channel_irreps
    from .ops.symmetric_contraction import symmetric_contraction

    ir_in, ir_out, corr = SYMMETRIC_CONTRACTION_CASES["l2-corr3"]
    desc = symmetric_contraction_descriptor(ir_in, ir_out, corr)
    us = [coupling_tensors(ir_in, ir, corr) for _, ir in channel_irreps(ir_out)]
    species = torch.tensor([2, 0, 1, 2, 2, 0])

    def inputs(dtype):
        g = torch.Generator().manual_seed(17)
        return [torch.randn(6, 3, desc.dim_in, generator=g, dtype=dtype),
                torch.randn(3, desc.weight_numel, 3, generator=g, dtype=dtype)]  # fmt: skip

    offsets = [[desc.weight_offset(o, nu) for nu in range(1, corr + 1)] for o in range(len(us))]

    def dense(x, w):
        return reference.symmetric_contraction_dense(x, species, w, us, offsets)

    return Case("symmetric_contraction", f"3x({ir_in}) -> {ir_out}, corr {corr}", inputs,
                lambda x, w: symmetric_contraction(x, species, w, desc), dense)  # fmt: skip


def check(args: argparse.Namespace) -> int:
    """Run every op against e3nn; print a table; 1 when anything fails."""
    dtypes = list(DTYPES.values()) if args.dtype == "both" else [DTYPES[args.dtype]]
    backends = ["reference", "cpu"] if args.backend == "all" else [args.backend]
    cases = _sh_cases() + _tp_cases() + _mace_conv_cases() + _other_cases()
    cases.append(_symmetric_contraction_case())
    if args.quick:
        cases = [c for i, c in enumerate(cases) if c.op != "spherical_harmonics" or i % 6 == 0]
    header = f"{'op':<20} {'case':<36} {'dtype':<8} {'backend':<9} {'fwd':>9} {'grad':>9} " \
             f"{'grad2':>9} {'tol':>7}  result"  # fmt: skip
    print(header)
    print("-" * len(header))
    failed, start = 0, time.perf_counter()
    for case in cases:
        for dtype in dtypes:
            for backend in backends:
                errors = _compare(case, dtype, backend)
                tol = TOLERANCE[dtype]
                ok = all(e <= tol for e in errors)
                failed += not ok
                name = str(dtype).replace("torch.", "")
                print(f"{case.op:<20} {case.name:<36} {name:<8} {backend:<9} "
                      + " ".join(f"{e:9.1e}" for e in errors)
                      + f" {tol:7.0e}  {'PASS' if ok else 'FAIL'}")  # fmt: skip
    total = len(cases) * len(dtypes) * len(backends)
    took = time.perf_counter() - start
    print(
        "\nfwd, grad, grad2: max |fastcg - e3nn| / max(1, max |e3nn|) of the value, the first "
        "derivatives and grad(sum(first derivatives^2))"
    )
    print(f"{total - failed} passed, {failed} failed ({took:.1f} s)")
    return 1 if failed else 0


def bench(args: argparse.Namespace) -> int:
    """Run bench/ops.py of the source checkout this package was imported from."""
    path = Path(__file__).resolve().parent.parent / "bench" / "ops.py"
    if not path.is_file():
        print(f"fastcg bench needs a source checkout (looked for {path}); clone the repository "
              "and run `python bench/ops.py`", file=sys.stderr)  # fmt: skip
        return 2
    spec = importlib.util.spec_from_file_location("fastcg_bench_ops", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(args.options)


def md(args: argparse.Namespace) -> int:
    """NVE molecular dynamics throughput demo: fastcg vs the e3nn / mace-torch reference."""
    from . import md as md_job

    return md_job.main(args.options)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastcg`` command."""
    parser = argparse.ArgumentParser(prog="fastcg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="validate every op against e3nn (values and derivatives)")
    p.add_argument("--dtype", choices=["float64", "float32", "both"], default="both")
    p.add_argument("--backend", choices=["reference", "cpu", "all"], default="all")
    p.add_argument("--quick", action="store_true", help="fewer spherical-harmonics cases")
    p.set_defaults(run=check)
    # bench's options (--help included) are bench/ops.py's: parse_known_args hands them over
    p = sub.add_parser("bench", add_help=False, help="time every op against e3nn (bench/ops.py)")
    p.set_defaults(run=bench)
    # md's options (--help included) are fastcg/md.py's
    p = sub.add_parser("md", add_help=False, help="NVE MD throughput, fastcg vs e3nn (fastcg.md)")
    p.set_defaults(run=md)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("bench", "md"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.options = extra
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
