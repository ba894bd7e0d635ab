"""Force training, mace-torch MACE vs ``fastcg.convert(MACE)``: s per step and peak RSS.

One step: energy and forces of a batch of two 256-atom rattled fcc Cu cells (about 22k edges),
the loss ``mean((E - E_ref)^2) + mean((F - F_ref)^2)``, and its backward to every parameter (the
forces' own derivative: the convs' double backward). The model is bench/mace_md.py's (the
issue's ScaleShiftMACE 128x0e+128x1o, max_ell 3, correlation 3). Each variant runs in its own
process so that peak RSS is its own; the parameter gradients of the two are compared at the end.

    .venv-mace/bin/python bench/mace_train.py [--threads 2] [--repeats 3] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from mace_md import LABELS, _proc_status_gb, build

VARIANTS = ("e3nn", "fastcg")


def batch(dtype, small: bool) -> dict:
    """mace-torch's input dict for two rattled Cu cells (256 atoms each; 32 with ``small``)."""
    import numpy as np
    import torch
    from ase.build import bulk

    from fastcg.calculator import neighbour_list

    parts, offset = [], 0
    for seed in (1, 2):
        reps = 2 if small else 4
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (reps, reps, reps)
        atoms.rattle(0.1, seed=seed)
        src, dst, unit = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.0)
        # fastcg's r_ij = pos[src] - pos[dst] + shift; mace-torch's pos[receiver] -
        # pos[sender] + shift with edge_index [sender, receiver]: the same edges as
        # fastcg.integrations.mace.MaceTorchModel gives it
        parts.append((atoms, np.stack([src, dst]) + offset, -(unit @ atoms.cell.array)))
        offset += len(atoms)
    n = [len(a) for a, _, _ in parts]
    t = lambda a: torch.as_tensor(np.concatenate(a), dtype=dtype)  # noqa: E731
    return {
        "positions": t([a.positions for a, _, _ in parts]),
        "node_attrs": torch.ones(sum(n), 1, dtype=dtype),  # one species
        "edge_index": torch.as_tensor(np.concatenate([e for _, e, _ in parts], 1)),
        "shifts": t([s for _, _, s in parts]),
        "unit_shifts": torch.zeros(sum(len(s) for _, _, s in parts), 3, dtype=dtype),
        "cell": t([a.cell.array[None] for a, _, _ in parts]),
        "batch": torch.repeat_interleave(torch.arange(len(n)), torch.tensor(n)),
        "ptr": torch.tensor([0, *np.cumsum(n).tolist()]),
    }


def measure(variant: str, threads: int, repeats: int, dtype_name: str, small: bool,
            grads_path: str) -> dict:  # fmt: skip
    """One variant in this process: seconds per training step (min, median), peak RSS; the
    parameter gradients of the first step go to ``grads_path`` (.npz)."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    model = build(small)
    if variant == "fastcg":
        from fastcg.convert import convert

        model = convert(model)
    model = model.to(dtype)
    data = batch(dtype, small)
    gen = torch.Generator().manual_seed(0)
    e_ref = torch.randn(2, generator=gen, dtype=torch.float64).to(dtype)
    f_ref = torch.randn(data["positions"].shape, generator=gen, dtype=torch.float64).to(dtype)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        out = model(dict(data, positions=data["positions"].clone()), training=True,
                    compute_force=True)  # fmt: skip
        loss = ((out["energy"] - e_ref) ** 2).mean() + ((out["forces"] - f_ref) ** 2).mean()
        loss.backward()

    before = _proc_status_gb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM: the steps' own high-water mark
    step()
    grads = {k: p.grad.double().numpy() for k, p in model.named_parameters() if p.grad is not None}
    np.savez(grads_path, **grads)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "variant": variant, "seconds_min": min(times), "seconds_median": float(np.median(times)),
        "atoms": int(data["positions"].shape[0]), "edges": int(data["edge_index"].shape[1]),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "call_gb": _proc_status_gb("VmHWM") - before,
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--small", action="store_true", help="tiny model and 2 x 32 atoms (smoke test)")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--grads", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(measure(args.variant, args.threads, args.repeats, args.dtype,
                                 args.small, args.grads)))  # fmt: skip
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--repeats",
                   str(args.repeats), "--dtype", args.dtype, "--variant", variant, "--grads",
                   os.path.join(tmp, variant + ".npz")]  # fmt: skip
            cmd += ["--small"] if args.small else []
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                print(run.stderr[-3000:], file=sys.stderr)
                return 1
            results[variant] = json.loads(run.stdout.strip().splitlines()[-1])
        report(results, args, *(os.path.join(tmp, v + ".npz") for v in VARIANTS))
    return 0


def report(results: dict, args: argparse.Namespace, ref_grads: str, our_grads: str) -> None:
    """The table, and the largest parameter-gradient difference relative to the largest one."""
    import numpy as np

    a, b = np.load(ref_grads), np.load(our_grads)
    assert sorted(a.files) == sorted(b.files), "different parameters"
    diff = max(np.abs(a[k] - b[k]).max() for k in a.files)
    scale = max(np.abs(a[k]).max() for k in a.files)
    base, ours = results["e3nn"], results["fastcg"]
    print(f"force training step, ScaleShiftMACE, {base['atoms']} atoms in 2 cells, "
          f"{base['edges']} edges, {args.dtype}, {args.threads} threads")  # fmt: skip
    print(f"{'variant':<12} {'s/step (min)':>13} {'s/step (median)':>16} {'peak RSS GB':>12} "
          f"{'steps GB':>9}")  # fmt: skip
    for v, r in results.items():
        print(f"{LABELS.get(v, v):<12} {r['seconds_min']:13.3f} {r['seconds_median']:16.3f} "
              f"{r['peak_rss_gb']:12.2f} {r['call_gb']:9.2f}")  # fmt: skip
    print(f"speed-up {base['seconds_median'] / ours['seconds_median']:.2f}x, peak RSS "
          f"{ours['peak_rss_gb'] / base['peak_rss_gb']:.3f} of mace-torch's (steps alone "
          f"{ours['call_gb'] / base['call_gb']:.3f}), parameter gradients: max |diff| "
          f"{diff:.1e} of max |grad| {scale:.1e} over {len(a.files)} tensors")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
