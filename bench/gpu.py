"""GPU benchmark: fastcg (Triton) vs e3nn vs cuequivariance-torch vs openequivariance.

For each problem of bench/problems.py (MACE-like fallbacks until it exists): the fused conv
(gather + TP + scatter) forward and forward+backward, timed with ``triton.testing.do_bench``;
prints ms, speed-up over e3nn, achieved TB/s and TFLOP/s (from the cost model below) and their
fraction of the GPU's peak. Libraries that are not installed are skipped. Then MACE's product
basis (symmetric contraction, 128 channels of 0e..3o -> 0e+1o, correlation 3, 1 and 10
elements): fastcg vs mace-torch (when installed), speed-up over mace-torch.

    python bench/gpu.py                 # needs a CUDA GPU
    python bench/gpu.py --model         # cost model only (bytes, FLOPs, implied H100 time)
    TRITON_INTERPRET=1 python bench/gpu.py --smoke   # CI: tiny run through the interpreter

Symmetric contraction cost model: s * N * C * (D + dim_out) + s * S * K * C bytes (x, out,
weights); FLOPs N * C * sum over pairs of (monomial degree + 1), times 3 for forward+backward.

Cost model (float32, s = 4 bytes, per edge unless said): conv forward moves
s * (dim1 + dim2 + numel + dim_out) + 16 bytes (x[src] row, edge attribute, per-edge weights,
atomic add into out[dst], two indices) and does sum_paths 3 * nnz * elements FLOPs (2 products
and 1 add per CG entry and channel combination, the weight multiply folded in). The
deterministic (dst-sorted) variant writes out once per node instead of once per edge.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fastcg  # noqa: E402

PEAKS = {  # (TB/s, fp32 TFLOP/s without tensor cores)
    "H100": (3.35, 60.0),
    "H200": (4.8, 60.0),
    "A100": (2.0, 19.5),
    "L40": (0.86, 90.0),
}
# channel combinations per CG entry of a path, by connection mode (mul1, mul2)
ELEMENTS = {
    "uvw": lambda m1, m2: m1 * m2,
    "uvu": lambda m1, m2: m1 * m2,
    "uvv": lambda m1, m2: m1 * m2,
    "uuw": lambda m1, m2: m1,
    "uuu": lambda m1, m2: m1,
}


@dataclass
class Problem:
    name: str
    descriptor: fastcg.TPDescriptor
    num_nodes: int
    num_edges: int


def _uvu(irreps_in: str, lmax_sh: int) -> fastcg.TPDescriptor:
    """MACE's conv TP (every uvu path with l_out <= 3), as bench/problems.py builds it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import problems

    return problems.ConvProblem("", irreps_in, lmax_sh, 3, 0, 0).descriptor


def problems(smoke: bool) -> list[Problem]:
    """bench/problems.py when it provides conv problems, else MACE-like fallbacks."""
    if smoke:
        return [Problem("smoke", _uvu("4x0e+4x1o", 1), 6, 20)]
    try:
        from bench import problems as bp

        return [Problem(p.name, p.descriptor, p.num_nodes, p.num_edges) for p in bp.PROBLEMS]
    except Exception:  # noqa: BLE001  (absent or a different shape: use the fallbacks)
        return [
            Problem("mace_128x_l2_sh3", _uvu("128x0e+128x1o+128x2e", 3), 5000, 100_000),
            Problem("mace_64x_l2_sh3", _uvu("64x0e+64x1o+64x2e", 3), 5000, 100_000),
        ]


def cost(d: fastcg.TPDescriptor, num_nodes: int, num_edges: int, s: int = 4) -> dict[str, float]:
    """Bytes and FLOPs of conv forward and backward (see the module docstring)."""
    flops = 0.0
    for p in d.paths:
        nnz = sum(1 for _ in fastcg.cg.sparse_cg(p.l1, p.l2, p.l3))
        flops += 3 * nnz * ELEMENTS[p.mode](p.mul1, p.mul2)
    fwd_bytes = s * (d.dim1 + d.dim2 + d.weight_numel + d.dim_out) + 16
    # backward: d x (reads g[dst], y, w; atomics into dx[src]), d y (reads x[src], g[dst], w),
    # d w (reads x[src], y, g[dst]; writes per-edge dw)
    bwd_bytes = s * (3 * d.dim_out + 3 * d.dim1 + 3 * d.dim2 + 3 * d.weight_numel) + 48
    return {
        "fwd_bytes": fwd_bytes * num_edges, "fwd_flops": flops * num_edges,
        "bwd_bytes": bwd_bytes * num_edges, "bwd_flops": 3 * flops * num_edges,
    }  # fmt: skip


def print_model(probs: list[Problem], peak=PEAKS["H100"]) -> None:
    """Cost model per problem and the time it implies at the peak (max of memory, compute)."""
    print(f"{'problem':<20} {'pass':<5} {'MB':>9} {'GFLOP':>8} {'B/edge':>8} {'FLOP/edge':>10} "
          f"{'H100 ms':>8}")  # fmt: skip
    for p in probs:
        c = cost(p.descriptor, p.num_nodes, p.num_edges)
        for k in ("fwd", "bwd"):
            b, f = c[f"{k}_bytes"], c[f"{k}_flops"]
            ms = max(b / (peak[0] * 1e12), f / (peak[1] * 1e12)) * 1e3
            print(f"{p.name:<20} {k:<5} {b / 1e6:>9.1f} {f / 1e9:>8.2f} "
                  f"{b / p.num_edges:>8.0f} {f / p.num_edges:>10.0f} {ms:>8.3f}")  # fmt: skip


def _inputs(p: Problem, device, dtype):
    d = p.descriptor
    g = torch.Generator().manual_seed(0)
    x = torch.randn(p.num_nodes, d.dim1, generator=g).to(device, dtype).requires_grad_(True)
    y = torch.randn(p.num_edges, d.dim2, generator=g).to(device, dtype).requires_grad_(True)
    w = torch.randn(p.num_edges, d.weight_numel, generator=g).to(device, dtype)
    src = torch.randint(0, p.num_nodes, (p.num_edges,), generator=g).to(device)
    dst = torch.randint(0, p.num_nodes, (p.num_edges,), generator=g).to(device)
    src, dst, perm = fastcg.sort_edges(src, dst)
    return x, y.detach()[perm].requires_grad_(True), w.requires_grad_(True), src, dst


def candidates(p: Problem) -> dict:
    """name -> fn(x, y, w, src, dst) for every installed library."""
    d, n = p.descriptor, p.num_nodes
    out = {}  # e3nn first: the speed-up column divides by its time
    try:
        from e3nn import o3

        ins = [(q.i1, q.i2, q.i_out, q.mode, q.has_weight, 1.0) for q in d.paths]
        tp = o3.TensorProduct(d.irreps_in1, d.irreps_in2, d.irreps_out, ins,
                              shared_weights=False, internal_weights=False)  # fmt: skip

        def e3nn_conv(x, y, w, s, t, tp=tp):
            msg = tp.to(x.device, x.dtype)(x[s], y, w)
            return msg.new_zeros(n, msg.shape[1]).index_add(0, t, msg)

        out["e3nn"] = e3nn_conv
    except ImportError:
        pass
    out["fastcg"] = lambda x, y, w, s, t: fastcg.conv(x, y, w, s, t, n, d)
    if torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "fastcg::conv", "CUDA"
    ):

        def cuda_conv(x, y, w, s, t):  # the CUDA C++ kernels (their backward follows the op)
            with fastcg.use_backend("cuda"):
                return fastcg.conv(x, y, w, s, t, n, d)

        out["fastcg (CUDA C++)"] = cuda_conv
    try:
        import cuequivariance as cue
        import cuequivariance_torch as cuet

        cu = cuet.ChannelWiseTensorProduct(
            cue.Irreps("O3", d.irreps_in1), cue.Irreps("O3", d.irreps_in2),
            filter_irreps_out=cue.Irreps("O3", d.irreps_out), layout=cue.mul_ir,
            shared_weights=False, internal_weights=False,
        )  # fmt: skip

        def cue_conv(x, y, w, s, t, cu=cu):
            msg = cu.to(x.device)(x[s], y, w[:, : cu.weight_numel])
            return msg.new_zeros(n, msg.shape[1]).index_add(0, t, msg)

        out["cuequivariance"] = cue_conv  # its output irreps order may differ from fastcg's
    except Exception:  # noqa: BLE001  (not installed or API mismatch)
        pass
    try:
        import openequivariance as oeq

        ins = [(q.i1, q.i2, q.i_out, q.mode, q.has_weight) for q in d.paths]
        prob = oeq.TPProblem(d.irreps_in1, d.irreps_in2, d.irreps_out, ins,
                             shared_weights=False, internal_weights=False)  # fmt: skip
        oconv = oeq.TensorProductConv(prob, deterministic=True)

        def oeq_conv(x, y, w, s, t, oconv=oconv):
            return oconv(x, y, w, t, s)  # openequivariance: (rows = receivers, cols = senders)

        out["openequivariance"] = oeq_conv
    except Exception:  # noqa: BLE001
        pass
    return out


def _peak() -> tuple[float, float] | None:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAKS.items() if k in name), None)


def bench(probs: list[Problem], smoke: bool) -> None:
    device = "cpu" if smoke else "cuda"
    backend = "triton"
    peak = None if smoke else _peak()
    print(f"device: {'interpreter (smoke)' if smoke else torch.cuda.get_device_name()}")
    print(f"{'problem':<20} {'library':<17} {'pass':<8} {'ms':>9} {'x e3nn':>7} {'TB/s':>6} "
          f"{'TFLOP/s':>8} {'%peak':>6}")  # fmt: skip
    for p in probs:
        args = _inputs(p, device, torch.float32)
        c = cost(p.descriptor, p.num_nodes, p.num_edges)
        base = {}
        for lib, fn in candidates(p).items():
            for kind in ("fwd", "fwd+bwd"):

                def step(fn=fn, kind=kind, args=args):
                    out = fn(*args)
                    if kind == "fwd+bwd":
                        torch.autograd.grad(out, args[:3], torch.ones_like(out))

                try:
                    with fastcg.use_backend(backend):
                        ms = _time(step, smoke)
                except Exception as e:  # noqa: BLE001  (report, keep benchmarking the others)
                    print(f"{p.name:<20} {lib:<17} {kind:<8} failed: {type(e).__name__}: {e}")
                    continue
                b = c["fwd_bytes"] + (c["bwd_bytes"] if kind != "fwd" else 0)
                f = c["fwd_flops"] + (c["bwd_flops"] if kind != "fwd" else 0)
                tbs, tfs = b / ms / 1e9, f / ms / 1e9
                if lib == "e3nn":
                    base[kind] = ms
                speed = base.get(kind, float("nan")) / ms
                pct = 100 * max(tbs / peak[0], tfs / peak[1]) if peak else float("nan")
                print(f"{p.name:<20} {lib:<17} {kind:<8} {ms:>9.3f} {speed:>7.2f} {tbs:>6.2f} "
                      f"{tfs:>8.2f} {pct:>6.1f}", flush=True)  # fmt: skip


@dataclass
class SCProblem:
    name: str
    channels: int
    lmax: int
    correlation: int
    elements: int
    num_nodes: int

    @property
    def irreps_in(self) -> str:
        return "+".join(f"{self.channels}x{l}{'eo'[l % 2]}" for l in range(self.lmax + 1))

    @property
    def irreps_out(self) -> str:
        return f"{self.channels}x0e+{self.channels}x1o"


def sc_problems(smoke: bool) -> list[SCProblem]:
    if smoke:
        return [SCProblem("sc-smoke", 4, 1, 2, 2, 6)]
    return [SCProblem(f"mace-sc-{e}el", 128, 3, 3, e, 5000) for e in (1, 10)]


def sc_modules(p: SCProblem, device, dtype) -> dict:
    """name -> module(x, y): fastcg's twin of mace-torch's module when mace is installed."""
    from fastcg.nn.symmetric_contraction import SymmetricContraction

    torch.manual_seed(0)
    try:
        from mace.modules.symmetric_contraction import SymmetricContraction as MaceSC

        from fastcg.irreps import o3

        mace = MaceSC(o3().Irreps(p.irreps_in), o3().Irreps(p.irreps_out), p.correlation,
                      num_elements=p.elements).to(device, dtype)  # fmt: skip
        return {"mace-torch": mace, "fastcg": SymmetricContraction.from_mace(mace)}
    except ImportError:
        ours = SymmetricContraction(p.irreps_in, p.irreps_out, p.correlation,
                                    num_elements=p.elements)  # fmt: skip
        return {"fastcg": ours.to(device, dtype)}


def sc_cost(p: SCProblem, d, s: int = 4) -> tuple[float, float]:
    """(bytes, FLOPs) of one forward (see the module docstring)."""
    mono, pairs = d.tensors()[:2]
    deg = [0] * mono.shape[0]
    for n, (parent, _) in enumerate(mono.tolist()):
        deg[n] = 1 + (deg[parent] if parent >= 0 else 0)
    per_node = sum(deg[n] + 1 for _, n in pairs.tolist())
    nb = s * (p.num_nodes * p.channels * (d.dim_in + d.dim_out)
              + p.elements * d.weight_numel * p.channels)  # fmt: skip
    return nb, float(p.num_nodes * p.channels * per_node)


def print_sc_model(probs: list[SCProblem], peak=PEAKS["H100"]) -> None:
    """Symmetric contraction forward: bytes, FLOPs and the H100 time they imply."""
    from fastcg.ops.symmetric_contraction import symmetric_contraction_descriptor

    print(f"{'problem':<20} {'pass':<5} {'MB':>9} {'GFLOP':>8} {'B/node':>8} {'FLOP/node':>10} "
          f"{'H100 ms':>8}")  # fmt: skip
    for p in probs:
        b, f = sc_cost(p, symmetric_contraction_descriptor(p.irreps_in, p.irreps_out,
                                                           p.correlation))  # fmt: skip
        ms = max(b / (peak[0] * 1e12), f / (peak[1] * 1e12)) * 1e3
        print(f"{p.name:<20} {'fwd':<5} {b / 1e6:>9.1f} {f / 1e9:>8.2f} "
              f"{b / p.num_nodes:>8.0f} {f / p.num_nodes:>10.0f} {ms:>8.3f}")  # fmt: skip


def bench_sc(probs: list[SCProblem], smoke: bool) -> None:
    device = "cpu" if smoke else "cuda"
    peak = None if smoke else _peak()
    for p in probs:
        mods = sc_modules(p, device, torch.float32)
        d = mods["fastcg"].descriptor
        b, f = sc_cost(p, d)
        x = torch.randn(p.num_nodes, p.channels, d.dim_in, device=device)
        y = torch.nn.functional.one_hot(torch.arange(p.num_nodes) % p.elements, p.elements)
        y = y.to(device, torch.float32)
        if "mace-torch" in mods:  # same numbers before timing
            with fastcg.use_backend("triton"), torch.no_grad():
                err = (mods["fastcg"](x, y) - mods["mace-torch"](x, y)).abs().max().item()
            print(f"{p.name:<20} fastcg vs mace-torch: max |diff| {err:.1e}")
        base = {}
        for lib, mod in mods.items():
            for kind in ("fwd", "fwd+bwd"):

                def step(mod=mod, kind=kind, x=x, y=y):
                    xr = x.detach().requires_grad_(kind != "fwd")
                    out = mod(xr, y)
                    if kind != "fwd":
                        torch.autograd.grad(out.sum(), [xr, *mod.parameters()])

                try:
                    with fastcg.use_backend("triton"):
                        ms = _time(step, smoke)
                except Exception as e:  # noqa: BLE001  (report, keep benchmarking the others)
                    print(f"{p.name:<20} {lib:<17} {kind:<8} failed: {type(e).__name__}: {e}")
                    continue
                k = 1 if kind == "fwd" else 3
                tbs, tfs = k * b / ms / 1e9, k * f / ms / 1e9
                if lib == "mace-torch":
                    base[kind] = ms
                speed = base.get(kind, float("nan")) / ms
                pct = 100 * max(tbs / peak[0], tfs / peak[1]) if peak else float("nan")
                print(f"{p.name:<20} {lib:<17} {kind:<8} {ms:>9.3f} {speed:>7.2f} {tbs:>6.2f} "
                      f"{tfs:>8.2f} {pct:>6.1f}", flush=True)  # fmt: skip


def _time(step, smoke: bool) -> float:
    if smoke:  # the interpreter: one warm call and one timed call are enough to prove it runs
        step()
        t = time.perf_counter()
        step()
        return (time.perf_counter() - t) * 1e3
    import triton.testing

    return triton.testing.do_bench(step, warmup=25, rep=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny run under TRITON_INTERPRET=1")
    ap.add_argument("--model", action="store_true", help="print the cost model only")
    args = ap.parse_args()
    probs = problems(args.smoke)
    if args.model:
        print_model(probs)
        print_sc_model(sc_problems(args.smoke))
        return 0
    if args.smoke and os.environ.get("TRITON_INTERPRET", "0") != "1":
        sys.exit("--smoke runs the Triton interpreter: set TRITON_INTERPRET=1")
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU (or --smoke / --model)")
    import fastcg.triton  # noqa: F401  (registers fastcg_triton)

    bench(probs, args.smoke)
    print("symmetric contraction ('x e3nn' column: speed-up over mace-torch)")
    bench_sc(sc_problems(args.smoke), args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())
