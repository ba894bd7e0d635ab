"""Benchmark fastcg against e3nn, sphericart and cuequivariance-torch on the CPU.

    python bench/ops.py [--problems conv-64x3 sh-l3 ...] [--dtype float32] [--threads 2]
                        [--scale 1.0] [--quick] [--libraries fastcg e3nn ...]
                        [--plot bench/out/ops.png]

Problems are bench/problems.py's (``--problems all`` for every one). Per problem and op, each
library runs in its own subprocess, so one library's caches and allocator state never count
against another (``--quick`` runs a problem's measurements in one process, to save the ~2 s
start-up of each); in it, forward and forward+backward are each:

- timed with torch.utils.benchmark's blocked_autorange (median of the blocks, in ms);
- measured for peak memory: the growth of the process's peak resident set during one call over
  its resident set just before it (Linux: the high-water mark is reset through
  /proc/self/clear_refs first; elsewhere ru_maxrss, which can only under-report). This is what
  the call costs the machine beyond its inputs, whoever allocates it (tracemalloc does not see
  torch's allocations);
- turned into achieved GFLOP/s and GB/s with the cost model below, printed beside this
  machine's peak measured in the same run: a large matmul (GFLOP/s) and a large copy (GB/s,
  bytes read + written), both in the benchmark's dtype and thread count.

Cost model (forward, s = bytes per element; fwd+bwd rates use k times it, k = 1 + number of
differentiated inputs, since each input's gradient is a contraction about as large as the
forward: conv and tensor_product 4, linear 3, scatter_sum 2, spherical_harmonics 4):

- tensor_product over E rows, per path with CG nonzeros nnz, l_out and channel pairs P (mul1 *
  mul2 for uvw/uvu/uvv, mul1 for uuw/uuu) and weight entries T (uvw: mul1*mul2*mul_out, uvu/uvv:
  mul1*mul2, uuw: mul1*mul_out, uuu: mul1): FLOPs = E * sum(2*nnz*P + 2*(2*l_out+1)*T);
  bytes = s * E * (dim1 + dim2 + weight_numel + dim_out).
- conv: the tensor product above plus the spherical harmonics of the edge vectors (both timed
  together, as a model calls them); bytes = the streaming minimum of a fused kernel:
  s * (E * (dim1 + 3 + weight_numel) + N * dim_out) + 16 * E (x[src] rows, vectors, weights,
  src and dst, the output once).
- spherical_harmonics: FLOPs = n * (10 + 4 * (lmax+1)^2) (normalisation, then about two
  multiply-adds per component of the recurrences); bytes = s * n * (3 + (lmax+1)^2).
- linear: FLOPs = rows * sum(2 * mul_in * mul_out * (2l+1)); bytes = s * (rows * (dim_in +
  dim_out) + weight_numel).
- scatter_sum: FLOPs = E * F; bytes = s * (E * F + N * F) + 8 * E.

Speed-ups are baseline time / library time; the baseline is e3nn (torch's index_add for
scatter_sum). cuequivariance-torch runs its "naive" (pure PyTorch) method on the CPU. Run it on
an otherwise idle machine: with 2 threads, any other load shows up as 4 ms scheduler steps.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parent))
import problems  # noqa: E402

LIBRARIES = {
    "spherical_harmonics": ("fastcg", "e3nn", "sphericart", "cuequivariance"),
    "conv": ("fastcg", "e3nn", "cuequivariance"),
    "tensor_product": ("fastcg", "e3nn", "cuequivariance"),
    "linear": ("fastcg", "e3nn", "cuequivariance"),
    "scatter_sum": ("fastcg", "torch"),
}
BASELINE = {"scatter_sum": "torch"}  # every other op: e3nn
# the inputs each op's backward differentiates
DIFF = {
    "spherical_harmonics": ("vectors",),
    "conv": ("x", "vectors", "weights"),
    "tensor_product": ("x1", "edge_attr", "weights"),
    "linear": ("x", "weights"),
    "scatter_sum": ("src",),
}
BACKWARD_FACTOR = {"conv": 4, "tensor_product": 4, "linear": 3, "scatter_sum": 2,
                   "spherical_harmonics": 4}  # fmt: skip
LIBRARIES_ALL = ("fastcg", "e3nn", "torch", "sphericart", "cuequivariance")
# cuequivariance's CPU path is pure PyTorch and takes ~5 s to import and build: not in --quick
SLOW = ("cuequivariance",)
MODULES = {"sphericart": "sphericart.torch", "cuequivariance": "cuequivariance_torch"}
DEFAULT_PROBLEMS = ["conv-64x3", "nequip-32", "sh-l3", "sh-l6", "conv-64x3-linear-up",
                    "conv-64x3-linear-out", "conv-64x3-scatter"]  # fmt: skip


def ops_of(p) -> list[str]:
    """The ops benchmarked on a problem: a conv problem also times its bare tensor product."""
    if isinstance(p, problems.ConvProblem):
        return ["conv", "tensor_product"]
    if isinstance(p, problems.SHProblem):
        return ["spherical_harmonics"]
    return ["linear"] if isinstance(p, problems.LinearProblem) else ["scatter_sum"]


# ---------------------------------------------------------------- the libraries' functions


def _fastcg(op: str, p, t: dict):
    import fastcg

    if op == "spherical_harmonics":
        return lambda: fastcg.spherical_harmonics(t["vectors"], p.lmax, True, "component")
    if op == "conv":
        d, n, lmax = t["descriptor"], p.num_nodes, p.lmax_sh

        def conv():
            y = fastcg.spherical_harmonics(t["vectors"], lmax, True, "component")
            return fastcg.conv(t["x"], y, t["weights"], t["src"], t["dst"], n, d)

        return conv
    if op == "tensor_product":
        return lambda: fastcg.tensor_product(t["x1"], t["edge_attr"], t["weights"],
                                             t["descriptor"])  # fmt: skip
    if op == "linear":
        return lambda: fastcg.linear(t["x"], t["weights"], t["descriptor"])
    return lambda: fastcg.scatter_sum(t["src"], t["index"], p.num_nodes)


def _e3nn(op: str, p, t: dict, dtype):
    from fastcg.irreps import o3

    if op == "spherical_harmonics":
        return lambda: o3().spherical_harmonics(
            list(range(p.lmax + 1)), t["vectors"], True, "component"
        )
    if op == "linear":
        lin = o3().Linear(p.irreps_in, p.irreps_out).to(dtype)
        return lambda: lin(t["x"], t["weights"])
    tp = o3().TensorProduct(p.irreps_in1, p.irreps_in2, p.irreps_out, p.instructions(),
                            shared_weights=False, internal_weights=False).to(dtype)  # fmt: skip
    if op == "tensor_product":
        return lambda: tp(t["x1"], t["edge_attr"], t["weights"])
    lmax, n = p.lmax_sh, p.num_nodes

    def conv():
        y = o3().spherical_harmonics(list(range(lmax + 1)), t["vectors"], True, "component")
        msg = tp(t["x"][t["src"]], y, t["weights"])
        return msg.new_zeros(n, msg.shape[1]).index_add(0, t["dst"], msg)

    return conv


def _cuequivariance(op: str, p, t: dict, dtype):
    import cuequivariance as cue
    import cuequivariance_torch as cuet

    kw = {"method": "naive"}  # its CUDA kernels need a GPU; this is its PyTorch path
    if op == "linear":
        lin = cuet.Linear(cue.Irreps("O3", p.irreps_in), cue.Irreps("O3", p.irreps_out),
                          layout=cue.mul_ir, shared_weights=True, internal_weights=False,
                          dtype=dtype, **kw)  # fmt: skip
        _same_weights(lin.weight_numel, t["descriptor"].weight_numel)
        return lambda: lin(t["x"], t["weights"].unsqueeze(0))
    lmax = p.lmax if op == "spherical_harmonics" else p.lmax_sh
    sh = cuet.SphericalHarmonics(list(range(lmax + 1)), normalize=True, **kw)
    if op == "spherical_harmonics":
        return lambda: sh(t["vectors"])
    # its channel-wise product is uvu with one output block per (l_out, parity) path, sorted
    # by irrep rather than in instruction order: the same work, another output order
    outs = sorted({ir for _, ir in o3_irreps(p.irreps_out)})
    tp = cuet.ChannelWiseTensorProduct(
        cue.Irreps("O3", p.irreps_in1), cue.Irreps("O3", p.irreps_in2),
        [cue.O3(l, par) for l, par in outs], layout=cue.mul_ir, shared_weights=False,
        internal_weights=False, dtype=dtype, **kw,
    )  # fmt: skip
    _same_weights(tp.weight_numel, t["descriptor"].weight_numel)
    if op == "tensor_product":
        return lambda: tp(t["x1"], t["edge_attr"], t["weights"])
    n = p.num_nodes

    def conv():  # gathers x[src] and sums into dst inside its own op
        y = sh(t["vectors"])
        return tp(t["x"], y, t["weights"], indices_1=t["src"], indices_out=t["dst"], size_out=n)

    return conv


def _same_weights(theirs: int, ours: int) -> None:
    if theirs != ours:
        raise RuntimeError(f"cuequivariance has {theirs} weights, e3nn {ours}: another problem")


def o3_irreps(s: str) -> list[tuple[int, tuple[int, int]]]:
    """[(mul, (l, parity))] of an irreps string."""
    from fastcg.irreps import o3

    return [(mul, (ir.l, ir.p)) for mul, ir in o3().Irreps(s)]


def build(lib: str, op: str, p, t: dict, dtype):
    """A zero-argument callable running ``op`` of ``lib`` on the inputs ``t``."""
    if lib in MODULES and importlib.util.find_spec(MODULES[lib].split(".")[0]) is None:
        raise ImportError(f"{MODULES[lib]} is not installed")
    if lib == "fastcg":
        return _fastcg(op, p, t)
    if lib in ("e3nn", "torch"):
        if op == "scatter_sum":
            return lambda: t["src"].new_zeros(p.num_nodes, p.num_features).index_add(
                0, t["index"], t["src"])  # fmt: skip
        return _e3nn(op, p, t, dtype)
    if lib == "sphericart":
        import sphericart.torch as sct

        sh = sct.SphericalHarmonics(p.lmax)  # its own normalisation: the same work as e3nn's
        return lambda: sh(t["vectors"])
    return _cuequivariance(op, p, t, dtype)


# ---------------------------------------------------------------- measuring, in a child


def _rss_kb(field: str) -> int | None:
    try:
        m = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _peak_growth_mb(fn) -> float:
    """Peak resident-set growth (MB) during one call of ``fn``, over the resident set before."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark (Linux)
        before = _rss_kb("VmRSS")
    except OSError:
        before = None
    if before is None:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    fn()
    return max(0, (_rss_kb("VmHWM") or before) - before) / 1024


def _with_grad(op: str, t: dict) -> tuple[dict, list[torch.Tensor]]:
    t = dict(t)
    diff = []
    for k in DIFF[op]:
        t[k] = t[k].detach().clone().requires_grad_()
        diff.append(t[k])
    return t, diff


def measure(spec: dict) -> list[dict]:
    """Child process: time one (library, problem, op), forward then forward+backward."""
    torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    p = problems.ALL[spec["problem"]]
    t = problems.make_inputs(p, dtype, "cpu", seed=0, scale=spec["scale"])
    p = t["problem"]
    if "src" in t and "x" in t:
        t["x1"] = t["x"][t["src"]]  # the bare tensor product gets gathered rows
    results = []
    for backward in (False, True):
        try:
            if backward:
                tg, diff = _with_grad(spec["op"], t)
                f = build(spec["lib"], spec["op"], p, tg, dtype)
                g = torch.randn_like(f().detach())

                def fn(f=f, g=g, diff=diff):
                    return torch.autograd.grad(f(), diff, g)
            else:
                fn = build(spec["lib"], spec["op"], p, t, dtype)
        except ImportError as err:
            return [{"error": f"not installed ({err})"}] * 2
        fn()  # warm-up: one-time set-up is not the call's cost
        peak = _peak_growth_mb(fn)
        timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=spec["threads"])
        m = timer.blocked_autorange(min_run_time=spec["min_run_time"])
        results.append({"median_s": m.median, "runs": len(m.times), "peak_mb": peak})
    return results


def _measure_or_error(spec: dict) -> list[dict]:
    """measure(), with a failure reported in the table rather than ending the process."""
    try:
        return measure(spec)
    except Exception as err:  # any library's failure is one row of the table, not the run
        return [{"error": f"error: {type(err).__name__}: {str(err).splitlines()[0][:80]}"}] * 2


def run_child(specs: list[dict]) -> list[list[dict]]:
    """Measure ``specs`` one after another in a fresh Python process."""
    env = {**os.environ, "OMP_NUM_THREADS": str(specs[0]["threads"])}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(specs)],
                         capture_output=True, text=True, env=env)  # fmt: skip
    if out.returncode != 0:
        err = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"
        return [[{"error": f"error: {err}"}] * 2 for _ in specs]
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- cost model and machine peak


def cost(p, op: str, itemsize: int) -> tuple[float, float]:
    """(FLOPs, bytes) of one forward of ``op`` on ``p`` (see the module docstring)."""
    s = itemsize
    if op == "spherical_harmonics":
        dim = (p.lmax + 1) ** 2
        return p.num_vectors * (10 + 4 * dim), s * p.num_vectors * (3 + dim)
    if op == "scatter_sum":
        ef = p.num_edges * p.num_features
        return ef, s * (ef + p.num_nodes * p.num_features) + 8 * p.num_edges
    if op == "linear":
        from fastcg import linear_descriptor

        d = linear_descriptor(p.irreps_in, p.irreps_out)
        flops = p.num_rows * sum(2 * q[2] * q[3] * q[4] for q in d.paths)
        return flops, s * (p.num_rows * (d.dim_in + d.dim_out) + d.weight_numel)
    d, e = p.descriptor, p.num_edges
    flops = e * sum(_tp_path_flops(q) for q in d.paths)
    if op == "tensor_product":
        return flops, s * e * (d.dim1 + d.dim2 + d.weight_numel + d.dim_out)
    sh_flops, _ = cost(problems.SHProblem("", p.lmax_sh, e), "spherical_harmonics", s)
    nbytes = s * (e * (d.dim1 + 3 + d.weight_numel) + p.num_nodes * d.dim_out) + 16 * e
    return flops + sh_flops, nbytes


def _tp_path_flops(q) -> int:
    from fastcg.cg import sparse_cg

    pairs = q.mul1 * q.mul2 if q.mode in ("uvw", "uvu", "uvv") else q.mul1
    triples = {
        "uvw": q.mul1 * q.mul2 * q.mul_out,
        "uvu": q.mul1 * q.mul2,
        "uvv": q.mul1 * q.mul2,
        "uuw": q.mul1 * q.mul_out,
        "uuu": q.mul1,
    }[q.mode]
    return 2 * len(sparse_cg(q.l1, q.l2, q.l3)) * pairs + 2 * (2 * q.l3 + 1) * triples


def machine_peak(threads: int, dtype: torch.dtype, quick: bool) -> tuple[float, float]:
    """(GFLOP/s of a matmul, GB/s of a large copy) on this machine, now, in ``dtype``."""
    torch.set_num_threads(threads)
    n, run = (1024, 0.2) if quick else (2048, 0.5)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    t = benchmark.Timer("a @ b", globals={"a": a, "b": b}, num_threads=threads)
    mm = t.blocked_autorange(min_run_time=run).median
    # 256 MiB per buffer: far beyond any cache, so this is DRAM bandwidth
    src = torch.randn(256 * 2**20 // dtype.itemsize, dtype=dtype)
    dst = torch.empty_like(src)
    t = benchmark.Timer("d.copy_(s)", globals={"d": dst, "s": src}, num_threads=threads)
    cp = t.blocked_autorange(min_run_time=run).median
    return 2 * n**3 / mm / 1e9, 2 * src.numel() * dtype.itemsize / cp / 1e9


# ---------------------------------------------------------------- the table


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _lines(name, op, direction, results, base, flops, nbytes, peak) -> list[tuple]:
    out = []
    for lib, r in results.items():
        if "error" in r:
            out.append((_row([name, op, direction, lib, r["error"], "", "", "", "", "", ""]),
                        None))  # fmt: skip
            continue
        t = r["median_s"]
        ratio = f"{base / t:.2f}x" if base else ""
        gf, gb = flops / t / 1e9, nbytes / t / 1e9
        cells = [name, op, direction, lib, f"{t * 1e3:.3f}", ratio, f"{r['peak_mb']:.1f}",
                 f"{gf:.1f}", f"{100 * gf / peak[0]:.0f}%", f"{gb:.1f}",
                 f"{100 * gb / peak[1]:.0f}%"]  # fmt: skip
        out.append((_row(cells), (name, op, direction, lib, t, base)))
    return out


def _installed(lib: str) -> bool:
    return lib not in MODULES or importlib.util.find_spec(MODULES[lib].split(".")[0]) is not None


def _measure_problem(name: str, args: argparse.Namespace, scale: float) -> dict:
    """{(op, lib): [fwd result, fwd+bwd result]} of one problem, measured in subprocesses."""
    p = problems.ALL[name].scaled(scale)
    wanted = args.libraries or [lib for lib in LIBRARIES_ALL if not (args.quick and lib in SLOW)]
    specs = [dict(lib=lib, problem=name, op=op, dtype=args.dtype, threads=args.threads,
                  scale=scale, min_run_time=0.1 if args.quick else 1.0)
             for op in ops_of(p) for lib in LIBRARIES[op]
             if _installed(lib) and lib in wanted]  # fmt: skip
    # one process per measurement; --quick shares one per problem (start-up is ~2 s)
    groups = [specs] if args.quick else [[s] for s in specs]
    out = {(s["op"], s["lib"]): r for g in groups for s, r in zip(g, run_child(g))}
    for op in ops_of(p):
        for lib in LIBRARIES[op]:
            why = "skipped (--quick; --libraries to choose)" if args.quick else "not chosen"
            why = why if _installed(lib) else "not installed"
            out.setdefault((op, lib), [{"error": why}] * 2)
    return out


def run(args: argparse.Namespace) -> int:
    """Parent: measure every (problem, op, library) and print the markdown table."""
    import fastcg

    dtype = getattr(torch, args.dtype)
    scale = 0.01 if args.quick else args.scale
    names = list(problems.ALL) if args.problems == ["all"] else args.problems
    unknown = [n for n in names if n not in problems.ALL]
    if unknown:
        raise SystemExit(f"unknown problem(s) {unknown}; known: {', '.join(problems.ALL)}")
    peak = machine_peak(args.threads, dtype, args.quick)
    print(f"# {args.dtype}, {args.threads} threads, scale {scale}, fastcg backend "
          f"{fastcg.get_backend() or 'default'}, torch {torch.__version__}; this machine now: "
          f"{peak[0]:.1f} GFLOP/s (matmul), {peak[1]:.1f} GB/s (copy)\n")  # fmt: skip
    print(_row(["problem", "op", "direction", "library", "median ms", "speed-up", "peak MB",
                "GFLOP/s", "% peak", "GB/s", "% peak"]))  # fmt: skip
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    rows, start = [], time.perf_counter()
    for name in names:
        p = problems.ALL[name].scaled(scale)
        measured = _measure_problem(name, args, scale)
        for op in ops_of(p):
            flops, nbytes = cost(p, op, dtype.itemsize)
            for i, direction in enumerate(("fwd", "fwd+bwd")):
                results = {lib: measured[op, lib][i] for lib in LIBRARIES[op]}
                k = 1 if i == 0 else BACKWARD_FACTOR[op]
                base = results[BASELINE.get(op, "e3nn")].get("median_s")
                for line, row in _lines(name, op, direction, results, base, k * flops,
                                        k * nbytes, peak):  # fmt: skip
                    print(line, flush=True)
                    if row:
                        rows.append(row)
    print(f"\nspeed-up: e3nn's time (torch index_add for scatter_sum) / the library's; "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    if args.plot:
        _plot(rows, args.plot)
    return 0


def _plot(rows: list[tuple], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(f"{n} {op} {d}", lib, base / t) for n, op, d, lib, t, base in rows
            if base and lib not in ("e3nn", "torch")]  # fmt: skip
    colors = {lib: f"C{i}" for i, lib in enumerate(LIBRARIES_ALL)}
    fig, ax = plt.subplots(figsize=(max(6, len(bars) * 0.35), 5))
    for lib in dict.fromkeys(b[1] for b in bars):
        xs = [i for i, b in enumerate(bars) if b[1] == lib]
        ax.bar(xs, [bars[i][2] for i in xs], color=colors[lib], label=lib)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=6, rotation=90)
    ax.legend()
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("speed-up over e3nn (log)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    """``python bench/ops.py``; also ``fastcg bench``."""
    parser = argparse.ArgumentParser(prog="bench/ops.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--problems",
        nargs="+",
        default=DEFAULT_PROBLEMS,
        help=f"names from bench/problems.py, or all (default {DEFAULT_PROBLEMS})",
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply problem sizes")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="scale 0.01, one process per problem, no cuequivariance: a smoke run",
    )
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES_ALL, default=None,
                        help="libraries to time (default: all installed)")  # fmt: skip
    parser.add_argument("--plot", default=None, help="write a bar chart of speed-ups (PNG)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps([_measure_or_error(spec) for spec in json.loads(args.child)]))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
