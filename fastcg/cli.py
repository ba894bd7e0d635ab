"""The ``fastcg`` command: ``check`` (every op against e3nn), ``md`` and ``bench``."""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

import fastcg

from .irreps import o3

DTYPES = {"float64": torch.float64, "float32": torch.float32}
# float64: absolute, scaled by the reference's magnitude; float32: relative (the table)
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


@dataclass
class Case:
    """One comparison: fastcg and e3nn functions of the same differentiable inputs."""

    op: str
    name: str
    inputs: Callable[[torch.dtype], list[torch.Tensor]]
    fastcg: Callable[..., torch.Tensor]
    e3nn: Callable[..., torch.Tensor]


def _error(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    if a is None or b is None:
        return 0.0 if (a is None) == (b is None) else float("inf")
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    return float((a - b).abs().max()) / scale if a.numel() else 0.0


def _orders(fn, inputs: list[torch.Tensor], seed: int) -> list[list[torch.Tensor | None]]:
    """Value, first derivatives and a second-derivative contraction of ``fn`` at ``inputs``."""
    xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
    diff = [x for x in xs if x.requires_grad]
    out = fn(*xs)
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    if not out.requires_grad:  # e.g. l = 0 harmonics: constant
        return [[out.detach()], [], []]
    first = torch.autograd.grad(out, diff, g, create_graph=True, allow_unused=True)
    u = [torch.randn(d.shape, generator=gen, dtype=d.dtype) for d in diff]
    s = sum((f * v).sum() for f, v in zip(first, u) if f is not None and f.requires_grad)
    second = torch.autograd.grad(s, diff, allow_unused=True) if torch.is_tensor(s) else []
    return [[out.detach()], [f.detach() if f is not None else None for f in first], list(second)]


def _compare(case: Case, dtype: torch.dtype, backend: str) -> tuple[float, float, float]:
    inputs = case.inputs(dtype)
    with fastcg.use_backend(backend):
        mine = _orders(case.fastcg, inputs, 1)
    ref = _orders(case.e3nn, inputs, 1)
    return tuple(max((_error(a, b) for a, b in zip(m, r)), default=0.0) for m, r in zip(mine, ref))


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


def _instructions(ir1, ir2, iro, mode: str) -> list[tuple]:
    out = []
    for i, (m1, a) in enumerate(ir1):
        for j, (m2, b) in enumerate(ir2):
            for k, (mo, c) in enumerate(iro):
                ok = {"uvw": True, "uvu": mo == m1, "uuu": m1 == m2 == mo, "uvv": mo == m2,
                      "uuw": m1 == m2}[mode]  # fmt: skip
                if c in a * b and ok:
                    out.append((i, j, k, mode, True))
    return out


def _tp_cases() -> list[Case]:
    cases = []
    for name, (a, b, c, mode) in TP_CONFIGS.items():
        ir1, ir2, iro = o3().Irreps(a), o3().Irreps(b), o3().Irreps(c)
        ins = _instructions(ir1, ir2, iro, mode)
        for shared in (False, True):
            with torch.random.fork_rng():
                torch.set_default_dtype(torch.float64)
                tp = o3().TensorProduct(ir1, ir2, iro, ins, shared_weights=shared,
                                        internal_weights=False)  # fmt: skip
                torch.set_default_dtype(torch.float32)
            desc = fastcg.descriptor.from_e3nn(tp)
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


def _conv_case(tps: dict, desc, tag: str) -> Case:
    tp = tps[torch.float64]
    gen = torch.Generator().manual_seed(3)
    num_nodes, num_edges = 5, 12
    src = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    dst = torch.randint(0, num_nodes, (num_edges,), generator=gen)

    def inputs(dtype):
        g = torch.Generator().manual_seed(11)
        return [torch.randn(num_nodes, tp.irreps_in1.dim, generator=g, dtype=dtype),
                torch.randn(num_edges, tp.irreps_in2.dim, generator=g, dtype=dtype),
                torch.randn(num_edges, tp.weight_numel, generator=g, dtype=dtype)]  # fmt: skip

    def ref(x, y, w):
        msg = tps[x.dtype](x[src], y, w)
        return msg.new_zeros(num_nodes, msg.shape[1]).index_add(0, dst, msg)

    return Case("conv", tag, inputs,
                lambda x, y, w: fastcg.conv(x, y, w, src, dst, num_nodes, desc), ref)  # fmt: skip


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
    return cases


def check(args: argparse.Namespace) -> int:
    """Run every op against e3nn; print a table; 1 when anything fails."""
    dtypes = list(DTYPES.values()) if args.dtype == "both" else [DTYPES[args.dtype]]
    backends = ["reference", "cpu"] if args.backend == "all" else [args.backend]
    cases = _sh_cases() + _tp_cases() + _other_cases()
    if args.quick:
        cases = [c for i, c in enumerate(cases) if c.op != "spherical_harmonics" or i % 6 == 0]
    header = f"{'op':<20} {'case':<34} {'dtype':<8} {'backend':<9} {'fwd':>9} {'grad':>9} " \
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
                print(f"{case.op:<20} {case.name:<34} {name:<8} {backend:<9} "
                      + " ".join(f"{e:9.1e}" for e in errors)
                      + f" {tol:7.0e}  {'PASS' if ok else 'FAIL'}")  # fmt: skip
    total = len(cases) * len(dtypes) * len(backends)
    took = time.perf_counter() - start
    print(f"\n{total - failed} passed, {failed} failed ({took:.1f} s)")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastcg`` command."""
    parser = argparse.ArgumentParser(prog="fastcg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="validate every op against e3nn (values and derivatives)")
    p.add_argument("--dtype", choices=["float64", "float32", "both"], default="both")
    p.add_argument("--backend", choices=["reference", "cpu", "all"], default="all")
    p.add_argument("--quick", action="store_true", help="fewer spherical-harmonics cases")
    p.set_defaults(run=check)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
