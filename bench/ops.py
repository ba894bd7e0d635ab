"""Benchmark fastcg against e3nn, sphericart and cuequivariance-torch on the CPU.

    python bench/ops.py [--problems conv-64x3 sh-l3 ...] [--dtype float32] [--threads 2]
                        [--scale 1.0] [--quick] [--plot bench/out/ops.png]

Each measurement runs in its own subprocess: the median of torch.utils.benchmark, and the peak
RSS growth of the first call (ru_maxrss after it minus before it, inputs already allocated), so
one library's caches never count against another. Ratios are e3nn time / library time. Run it
on an otherwise idle machine: with 2 threads, any other load shows up as 4 ms scheduler steps.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))
import problems  # noqa: E402

LIBRARIES = ("fastcg", "e3nn", "sphericart", "cuequivariance")


def _sh_fn(lib: str, p, dtype, backward: bool):
    v = torch.randn(p.num_vectors, 3, dtype=dtype, requires_grad=backward)
    if lib == "fastcg":
        import fastcg

        def f():
            return fastcg.spherical_harmonics(v, p.lmax)
    elif lib == "e3nn":
        from fastcg.irreps import o3

        def f():
            return o3().spherical_harmonics(list(range(p.lmax + 1)), v, True, "component")
    elif lib == "sphericart":
        import sphericart.torch as sct

        sh = sct.SphericalHarmonics(p.lmax)

        def f():
            return sh(v)
    else:
        raise ImportError(f"{lib} has no spherical harmonics benchmark here")
    if not backward:
        return f
    return lambda: torch.autograd.grad(f().sum(), v)


def _conv_fn(lib: str, p, dtype, backward: bool):
    inp = problems.conv_inputs(p, dtype)
    d, n = inp["descriptor"], p.num_nodes
    x, vec, w, src, dst = (inp[k] for k in ("x", "vectors", "weights", "src", "dst"))
    if backward:
        x, vec, w = (t.requires_grad_() for t in (x, vec, w))
    lmax = p.lmax_sh
    if lib == "fastcg":
        import fastcg

        def f():
            y = fastcg.spherical_harmonics(vec, lmax)
            return fastcg.conv(x, y, w, src, dst, n, d)
    elif lib == "e3nn":
        from fastcg.irreps import o3

        tp = o3().TensorProduct(p.irreps_in, p.irreps_sh(), inp["irreps_out"],
                                inp["instructions"], shared_weights=False,
                                internal_weights=False).to(dtype)  # fmt: skip

        def f():
            y = o3().spherical_harmonics(list(range(lmax + 1)), vec, True, "component")
            msg = tp(x[src], y, w)
            return msg.new_zeros(n, msg.shape[1]).index_add(0, dst, msg)
    elif lib == "cuequivariance":
        import cuequivariance_torch  # noqa: F401  (its CPU fallback; not installed here)

        raise ImportError("cuequivariance-torch adapter not written for the CPU fallback")
    else:
        raise ImportError(f"{lib} has no conv")
    if not backward:
        return f
    return lambda: torch.autograd.grad(f().square().sum(), (x, vec, w))


def _cost(p) -> tuple[float, float]:
    """(FLOPs, bytes) of one forward: see README's cost model."""
    if isinstance(p, problems.SHProblem):
        dim = (p.lmax + 1) ** 2
        return p.num_vectors * dim * 3.0, p.num_vectors * (3 + dim) * 4.0
    from fastcg.cg import sparse_cg

    d = problems.conv_inputs(p.scaled(1e-9))["descriptor"]
    macs = sum(len(sparse_cg(q.l1, q.l2, q.l3)) * q.mul1 for q in d.paths)
    flops = p.num_edges * macs * 3.0  # c * y_j * w_u * x_ui accumulated: 3 flops per entry
    read = p.num_edges * (d.dim1 + d.dim2 + d.weight_numel) * 4.0
    return flops, read + p.num_nodes * d.dim_out * 4.0


def measure(spec: dict) -> dict:
    """Child process: time one (library, problem, direction) and its peak RSS growth."""
    torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    p = spec["problem"]
    p = (problems.CONV.get(p) or problems.SH[p]).scaled(spec["scale"])
    make = _sh_fn if isinstance(p, problems.SHProblem) else _conv_fn
    try:
        fn = make(spec["lib"], p, dtype, spec["backward"])
    except ImportError as err:
        return {"error": f"not installed ({err})"}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # inputs allocated
    fn()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    m = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=spec["threads"])
    t = m.blocked_autorange(min_run_time=spec["min_run_time"])
    return {"median_s": t.median, "runs": len(t.times), "peak_mb": (peak - base) / 1024}


def machine_peak(threads: int) -> tuple[float, float]:
    """(GFLOP/s of a float32 matmul, GB/s of a large copy) on this machine, now."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t = benchmark.Timer("a @ b", globals={"a": a, "b": b}).blocked_autorange(min_run_time=0.5)
    src, dst = torch.randn(64 * 2**20), torch.empty(64 * 2**20)
    c = benchmark.Timer("d.copy_(s)", globals={"d": dst, "s": src}).blocked_autorange(
        min_run_time=0.5
    )
    return 2 * 2048**3 / t.median / 1e9, 2 * src.numel() * 4 / c.median / 1e9


def run_child(spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=["conv-64x3", "nequip-32", "sh-l3",
                                                          "sh-l6"])  # fmt: skip
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="shrink problem sizes")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--plot", default=None, help="write a bar chart of speed-ups (PNG)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return 0
    scale = 0.01 if args.quick else args.scale
    gflops, gbs = machine_peak(args.threads)
    print(f"# {args.dtype}, {args.threads} threads, scale {scale}; machine now: "
          f"{gflops:.0f} GFLOP/s (matmul), {gbs:.1f} GB/s (copy)\n")  # fmt: skip
    print("| problem | direction | library | median ms | vs e3nn | peak MB | GFLOP/s | GB/s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    rows, start = [], time.perf_counter()
    for name in args.problems:
        p = (problems.CONV.get(name) or problems.SH[name]).scaled(scale)
        flops, nbytes = _cost(p)
        for backward in (False, True):
            results = {}
            for lib in LIBRARIES:
                spec = dict(lib=lib, problem=name, backward=backward, dtype=args.dtype,
                            threads=args.threads, scale=scale,
                            min_run_time=0.2 if args.quick else 1.0)  # fmt: skip
                results[lib] = run_child(spec)
            ref = results["e3nn"].get("median_s")
            for lib, r in results.items():
                direction = "fwd+bwd" if backward else "fwd"
                if "error" in r:
                    if "has no" not in r["error"]:
                        print(f"| {name} | {direction} | {lib} | {r['error']} | | | | |")
                    continue
                t = r["median_s"]
                ratio = f"{ref / t:.1f}x" if ref else ""
                # the cost model is for the forward; fwd+bwd rates use 3x its FLOPs and bytes
                k = 3.0 if backward else 1.0
                print(f"| {name} | {direction} | {lib} | {t * 1e3:.2f} | {ratio} | "
                      f"{r['peak_mb']:.0f} | {k * flops / t / 1e9:.1f} | "
                      f"{k * nbytes / t / 1e9:.1f} |")  # fmt: skip
                rows.append((name, direction, lib, t, ref))
    print(f"\n({time.perf_counter() - start:.0f} s)")
    if args.plot:
        _plot(rows, args.plot)
    return 0


def _plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(f"{n} {d}\n{lib}", ref / t) for n, d, lib, t, ref in rows if ref and lib != "e3nn"]
    fig, ax = plt.subplots(figsize=(max(6, len(bars) * 0.9), 4))
    ax.bar(range(len(bars)), [b[1] for b in bars])
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_ylabel("speed-up over e3nn")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
