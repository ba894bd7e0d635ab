"""MACE energy + forces against system size and threads: fastcg (exact and tabulated radial),
Symmetrix-XL and mace-torch, s per call (median).

bench/mace_md.py's model and measurement (each variant and size in its own process, float32,
rattled fcc Cu of 4 cells^3 atoms: 3 -> 108, 6 -> 864, 10 -> 4,000, 16 -> 16,384), for each
thread count; mace-torch only up to ``--e3nn-max-atoms`` atoms and at the first thread count
(minutes per call beyond). The last columns are fastcg's speed-ups over Symmetrix-XL.

    .venv-mace/bin/python bench/mace_scaling.py [--cells 3 6 10 16] [--threads 2 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
MD = os.path.join(HERE, "mace_md.py")
COLUMNS = ("fastcg", "fastcg-tabulated", "symmetrix", "e3nn")


def run(variant: str, cells: int, threads: int, repeats: int, deployed: str) -> dict | None:
    """One mace_md.py measurement in a child process (None when it fails)."""
    cmd = [sys.executable, MD, "--variant", variant, "--cells", str(cells), "--threads",
           str(threads), "--repeats", str(repeats), "--deployed", deployed]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        print(f"{variant} {cells} cells failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, nargs="+", default=[3, 6, 10, 16])
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--e3nn-max-atoms", type=int, default=4000)
    args = p.parse_args()
    has_symmetrix = importlib.util.find_spec("symmetrix") is not None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        deployed = os.path.join(tmp, "mace_fastcg.pt")
        subprocess.run([sys.executable, MD, "--save", deployed], check=True, capture_output=True)
        for threads in args.threads:
            for cells in args.cells:
                atoms = 4 * cells**3
                row = {"atoms": atoms, "threads": threads}
                for v in COLUMNS:
                    if v == "symmetrix" and not has_symmetrix:
                        continue
                    if v == "e3nn" and (atoms > args.e3nn_max_atoms or threads != args.threads[0]):
                        continue
                    r = run(v, cells, threads, args.repeats, deployed)
                    if r is not None:
                        row[v] = r["seconds_median"]
                        row["edges"] = r["edges"] or row.get("edges")
                        print(f"{atoms} atoms, {threads} threads, {v}: {row[v]:.3f} s",
                              file=sys.stderr, flush=True)  # fmt: skip
                rows.append(row)
    print("ScaleShiftMACE 128x0e+128x1o, max_ell 3, correlation 3; fcc Cu, float32; s per "
          "energy + forces call (median)")  # fmt: skip
    head = ["atoms", "edges", "threads", "fastcg", "tabulated", "Symmetrix-XL", "mace-torch",
            "exact vs S-XL", "tabulated vs S-XL"]  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---:|" * len(head))
    for r in rows:
        cell = [f"{r[v]:.3f}" if v in r else "-" for v in COLUMNS]
        sx = r.get("symmetrix")
        ratio = [f"{sx / r[v]:.2f}x" if sx and v in r else "-" for v in COLUMNS[:2]]
        lead = [str(r["atoms"]), str(r.get("edges") or "-"), str(r["threads"])]
        print("| " + " | ".join(lead + cell + ratio) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
