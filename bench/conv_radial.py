"""Conv with radial-MLP weights: ``fastcg.conv_radial(x, Y, h, W)`` against ``fastcg.conv(x, Y,
h @ W)`` and e3nn (``h @ W``, TensorProduct of ``x[src]``, ``index_add``), time and peak memory.

h is the radial MLP's last hidden layer [E, 64], W its last layer [64, weight_numel]; the
gradient (fwd+bwd) is taken w.r.t. x, h and the edge vectors (what forces need), not W. Each
variant runs in its own process, so peak memory is its own.

``--second`` times what force training adds: forward, the first derivatives with create_graph,
and the derivative of a random linear function of them w.r.t. x, h, the edge vectors and W.
``fastcg-radial`` takes that second derivative without create_graph (the one-pass
``conv_radial_double_backward``), ``fastcg-radial-composed`` with it (the first-order ops
composed, as on CUDA).

    python bench/conv_radial.py [--problem conv-64x3] [--libraries fastcg-radial fastcg e3nn]
    python bench/conv_radial.py --second --libraries fastcg-radial fastcg-radial-composed fastcg
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import problems  # noqa: E402
from ops import _peak_growth_mb  # noqa: E402

HIDDEN = 64


def _inputs(p, dtype) -> dict:
    t = problems.make_inputs(p, dtype, "cpu", seed=0)
    del t["weights"]  # [E, numel]: what the radial variant avoids; each variant forms its own
    gen = torch.Generator().manual_seed(1)
    e = t["src"].shape[0]
    t["h"] = torch.randn(e, HIDDEN, generator=gen, dtype=dtype)
    t["W"] = torch.randn(HIDDEN, t["descriptor"].weight_numel, generator=gen, dtype=dtype)
    t["W"] /= HIDDEN**0.5
    return t


def _fn(lib: str, p, t: dict, dtype):
    import fastcg

    d, n, lmax = t["descriptor"], p.num_nodes, p.lmax_sh
    if lib == "e3nn":
        from fastcg.irreps import o3

        tp = o3().TensorProduct(p.irreps_in1, p.irreps_in2, p.irreps_out, p.instructions(),
                                shared_weights=False, internal_weights=False).to(dtype)  # fmt: skip

        def e3nn(x, h, v):
            y = o3().spherical_harmonics(list(range(lmax + 1)), v, True, "component")
            msg = tp(x[t["src"]], y, h @ t["W"])
            return msg.new_zeros(n, msg.shape[1]).index_add(0, t["dst"], msg)

        return e3nn

    def fastcg_fn(x, h, v):
        y = fastcg.spherical_harmonics(v, lmax, True, "component")
        if lib.startswith("fastcg-radial"):
            return fastcg.conv_radial(x, y, h, t["W"], t["src"], t["dst"], n, d)
        return fastcg.conv(x, y, h @ t["W"], t["src"], t["dst"], n, d)

    return fastcg_fn


def measure(lib: str, problem: str, dtype_name: str, threads: int, second: bool) -> dict:
    """Median ms and peak RSS growth of one library's forward and forward+backward, or with
    ``second`` of forward, backward and second derivative."""
    from torch.utils import benchmark

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    p = problems.ALL[problem]
    t = _inputs(p, dtype)
    fn = _fn(lib, p, t, dtype)
    args = [t["x"], t["h"], t["vectors"]]
    grad_args = [a.clone().requires_grad_(True) for a in args]

    def fwd():
        with torch.no_grad():
            return fn(*args)

    def fwd_bwd():
        out = fn(*grad_args)
        return torch.autograd.grad(out, grad_args, torch.ones_like(out))

    gen = torch.Generator().manual_seed(2)
    cot = [torch.randn(a.shape, generator=gen, dtype=dtype) for a in args]

    def fwd_bwd_2nd():
        out = fn(*grad_args)
        first = torch.autograd.grad(out, grad_args, torch.ones_like(out), create_graph=True)
        total = sum((f * c).sum() for f, c in zip(first, cot))
        wrt = [*grad_args, t["W"]]
        return torch.autograd.grad(total, wrt, create_graph=lib.endswith("-composed"))

    out = {"library": lib, "out": fwd()[:4].tolist()}
    steps = (("fwd", fwd), ("fwd+bwd", fwd_bwd))
    if second:
        t["W"].requires_grad_(True)  # training: W's gradient too (after the first-order timings)
        out["out"] = [g.flatten()[:4].tolist() for g in fwd_bwd_2nd()]
        steps = (("2nd", fwd_bwd_2nd),)
    for name, f in steps:
        out[f"{name}_mb"] = _peak_growth_mb(f)
        f()  # steady state, as in MD: glibc has adapted its mmap threshold to the big buffers
        timer = benchmark.Timer("f()", globals={"f": f}, num_threads=threads)
        # a second-derivative step takes seconds: at least 5 of them for a median
        min_time = 10.0 if second else 2.0
        out[f"{name}_ms"] = timer.blocked_autorange(min_run_time=min_time).median * 1e3
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", default="conv-64x3", choices=sorted(problems.CONV))
    ap.add_argument("--libraries", nargs="+", default=["fastcg-radial", "fastcg", "e3nn"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--second", action="store_true", help="time the second derivative too")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.child, a.problem, a.dtype, a.threads, a.second)))
        return 0
    rows = []
    for lib in a.libraries:
        cmd = [sys.executable, __file__, "--child", lib, "--problem", a.problem, "--dtype",
               a.dtype, "--threads", str(a.threads)]  # fmt: skip
        cmd += ["--second"] if a.second else []
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            print(run.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    ref = torch.tensor(rows[0]["out"])
    for r in rows[1:]:  # same numbers before comparing times
        torch.testing.assert_close(torch.tensor(r["out"]), ref, rtol=1e-3, atol=1e-3)
    p = problems.ALL[a.problem]
    print(f"{a.problem}: {p.num_nodes} nodes, {p.num_edges} edges, radial hidden {HIDDEN}, "
          f"{a.dtype}, {a.threads} threads")  # fmt: skip
    if a.second:
        base = rows[0]["2nd_ms"]
        print("| library | fwd + bwd + 2nd ms | peak MB | vs first |")
        print("|---|---:|---:|---:|")
        for r in rows:
            print(f"| {r['library']} | {r['2nd_ms']:.1f} | {r['2nd_mb']:.0f} | "
                  f"{r['2nd_ms'] / base:.2f}x |")  # fmt: skip
        return 0
    print("| library | fwd ms | fwd peak MB | fwd+bwd ms | fwd+bwd peak MB |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['library']} | {r['fwd_ms']:.1f} | {r['fwd_mb']:.0f} | {r['fwd+bwd_ms']:.1f} "
              f"| {r['fwd+bwd_mb']:.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
