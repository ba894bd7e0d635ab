"""``fastcg md``: NVE molecular dynamics with a fastcg model, timed against its e3nn reference.

Runs ASE's velocity Verlet on a built-in structure (default: 864-atom fcc Cu, rattled, 300 K
velocities) or any file ASE reads, with a model of seeded random weights (or the trained
SevenNet-0, ``--model sevennet-0``, converted by ``fastcg.convert``). Prints atom-steps/s of
fastcg and of the reference (mace-torch when ``--model mace-torch``, sevenn's SevenNet-0 when
``--model sevennet-0``, the e3nn twin otherwise) on
the same structure, the speed-up, max |dF| between them, the energy drift per atom, and writes a
PNG of the energies against the step. ``--engine torchsim --batch K`` also runs torch-sim's
batched velocity Verlet on K copies of the structure at once (atom-steps/s of the K together).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

import fastcg

DTYPES = {"float32": torch.float32, "float64": torch.float64}
MODEL_NAMES = ("mace", "mace-torch", "nequip", "schnet", "so3net", "sevennet-0")
# The --max-ell each model is built for, checked before anything is built. MACE's product basis
# (correlation 3) holds coupling tensors of (2l+1) x D^3 x K float64 values, D = (max_ell+1)^2:
# 43 MB at max_ell 4, 218 MB at 5 (0.8 GB peak while built), about 22 GB at 9, which ran a
# machine out of memory. mace-torch needs an l = 1 harmonic for its 1o hidden features.
# NequIP's and SO3Net's spherical harmonics run to l = 8. SchNet has no angular part (max_ell is
# unused).
# SevenNet-0 is the trained model shipped with sevenn: --channels and --max-ell do not apply.
ELL_RANGE = {"mace": (0, 4), "mace-torch": (1, 4), "nequip": (0, 8), "schnet": (0, 8),
             "so3net": (0, 8), "sevennet-0": (0, 8)}  # fmt: skip


def build_structure(spec: str, seed: int):
    """``cu`` (864-atom fcc Cu rattled by 0.05 A), ``cu-small`` (32 atoms), ``si`` (512-atom
    diamond Si, rattled) or a file ASE reads."""
    from ase.build import bulk

    if spec == "si":
        atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (4, 4, 4)
        atoms.rattle(0.05, seed=seed)
        return atoms
    if spec in ("cu", "cu-small"):
        reps = 6 if spec == "cu" else 2
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (reps, reps, reps)
        atoms.rattle(0.05, seed=seed)
        return atoms
    from ase.io import read

    return read(spec)


def build_models(
    name: str, atomic_numbers: list[int], channels: int, max_ell: int, seed: int,
    radial: str = "exact",
) -> tuple[torch.nn.Module, torch.nn.Module, str]:  # fmt: skip
    """(fastcg model, reference model, reference label), float64, seeded random weights.

    ``channels`` / ``max_ell`` size MACE and mace-torch (hidden ``C x 0e + C x 1o``, spherical
    harmonics to ``max_ell``), NequIP and SO3Net (features, lmax) and SchNet (features).
    ``sevennet-0`` is sevenn's trained SevenNet-0 (float32; its sizes are its own).
    ``radial="tabulated"`` (mace-torch only): ``fastcg.convert(model, radial="tabulated")``.
    """
    if radial != "exact" and name != "mace-torch":
        raise ValueError(f"radial={radial!r} needs the mace-torch model, got {name!r}")
    check_model_size(name, channels, max_ell)
    from .models import MODELS
    from .models._reference import default_dtype, reference_twin

    if name == "sevennet-0":  # trained: built as sevenn builds it (float32; the calculator casts)
        from .convert import convert
        from .integrations.sevennet import load_sevennet_0

        ref = load_sevennet_0()
        return convert(ref), ref, "sevenn (e3nn)"
    torch.manual_seed(seed)
    with default_dtype(torch.float64):
        if name == "mace-torch":
            from .convert import convert
            from .integrations.mace import random_model

            ref = random_model(atomic_numbers, channels, max_ell, seed)
            return convert(ref, radial=radial), ref, "mace-torch (e3nn)"
        kwargs = {"mace": {"num_channels": channels, "max_ell": max_ell},
                  "nequip": {"num_features": channels, "lmax": max_ell, "cutoff": 5.0},
                  "schnet": {"num_features": channels},
                  "so3net": {"num_features": channels, "lmax": max_ell}}[name]  # fmt: skip
        model = MODELS[name](atomic_numbers, **kwargs)
        return model, reference_twin(model), f"{name} e3nn twin"


def check_model_size(name: str, channels: int, max_ell: int) -> None:
    """Raise ValueError unless ``build_models(name, ..., channels, max_ell)`` is supported.

    Pure arithmetic, so it runs before anything is built (see ``ELL_RANGE`` for the bounds).

    >>> check_model_size("mace", 64, 9)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: max_ell for the mace model must be in [0, 4], got 9 (...)
    """
    if name not in ELL_RANGE:
        raise ValueError(f"model must be one of {', '.join(MODEL_NAMES)}, got {name!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
    low, high = ELL_RANGE[name]
    if isinstance(max_ell, bool) or not isinstance(max_ell, int) or not low <= max_ell <= high:
        why = "the product basis's coupling tensors grow as (max_ell + 1)^6" if "mace" in name \
            else "fastcg's spherical-harmonics kernels stop at l = 8"  # fmt: skip
        raise ValueError(
            f"max_ell for the {name} model must be in [{low}, {high}], got {max_ell!r} ({why})"
        )


def default_model() -> str:
    """mace-torch when it is installed, else the fastcg MACE-style model."""
    try:
        import mace  # noqa: F401
    except ImportError:
        return "mace"
    return "mace-torch"


def run_nve(atoms, calc, steps: int, timestep_fs: float, progress: bool, label: str) -> dict:
    """Velocity Verlet for ``steps`` steps; energies per step and the wall time of the steps."""
    from ase import units
    from ase.md.verlet import VelocityVerlet
    from tqdm import tqdm

    atoms.calc = calc
    dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    epot, ekin = [atoms.get_potential_energy()], [atoms.get_kinetic_energy()]
    bar = tqdm(total=steps, desc=label, disable=not progress, unit="step", leave=True)
    start = time.perf_counter()
    for _ in range(steps):
        dyn.run(1)
        epot.append(atoms.get_potential_energy())
        ekin.append(atoms.get_kinetic_energy())
        bar.update(1)
    seconds = time.perf_counter() - start
    bar.close()
    return {"epot": np.array(epot), "ekin": np.array(ekin), "seconds": seconds, "steps": steps}


def plot(path: str, runs: dict[str, dict], natoms: int) -> None:
    """Energies per atom against the step, each relative to its value at step 0 (top), and the
    total-energy drift (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for (label, run), style in zip(runs.items(), ("-", "--")):
        steps = np.arange(len(run["epot"]))
        etot = run["epot"] + run["ekin"]
        for values, name in ((run["epot"], "E_pot"), (run["ekin"], "E_kin"), (etot, "E_tot")):
            top.plot(steps, (values - values[0]) / natoms, style, label=f"{name} ({label})")
        bottom.plot(steps, (etot - etot[0]) / natoms * 1e3, style, label=f"E_tot ({label})")
    top.set_ylabel("E - E(step 0) per atom (eV)")
    bottom.set_ylabel("E_tot drift per atom (meV)")
    bottom.set_xlabel("step")
    top.legend(fontsize=7)
    bottom.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _number(
    kind: type, low: float, high: float | None = None, open_low: bool = False
) -> Callable[[str], float]:
    """An argparse ``type``: ``kind(text)`` in [low, high] (or (low, high]) and finite.

    argparse reports a failure as ``argument --NAME: <message>``, naming the option.
    """
    bound = f"> {low}" if open_low else f">= {low}"
    if high is not None:
        bound = f"in {'(' if open_low else '['}{low}, {high}]"
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {noun} {bound}, got {text!r}") from None
        bad = not math.isfinite(value) or value < low or (open_low and value == low)
        if bad or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {noun} {bound}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastcg md", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        choices=list(MODEL_NAMES),
        default=None,
        help="default: mace-torch when installed, else mace (fastcg's MACE-style)",
    )
    p.add_argument(
        "--structure",
        default="cu",
        help="'cu' (864 atoms), 'cu-small' (32 atoms), 'si' (512 atoms) or a file ASE reads",
    )
    p.add_argument("--steps", type=_number(int, 1), default=30, help="fastcg MD steps (>= 1)")
    p.add_argument(
        "--reference-steps",
        type=_number(int, 0),
        default=None,
        help="reference MD steps (default: min(steps, 3); 0 skips the reference)",
    )
    p.add_argument(
        "--backend",
        choices=["cpu", "reference", "triton", "cuda"],
        default=None,
        help="fastcg backend (default: automatic; the MD runs on the CPU)",
    )
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument(
        "--threads", type=_number(int, 1), default=None, help="torch intra-op threads (>= 1)"
    )
    p.add_argument(
        "--timestep", type=_number(float, 0, open_low=True), default=1.0, help="fs (> 0)"
    )
    p.add_argument("--temperature", type=_number(float, 0), default=300.0, help="initial K (>= 0)")
    p.add_argument(
        "--channels", type=_number(int, 1), default=64, help="model width (>= 1; see build_models)"
    )
    p.add_argument(
        "--max-ell",
        type=_number(int, 0),
        default=3,
        help="spherical harmonics degree; per model: "
        + ", ".join(f"{m} {a}..{b}" for m, (a, b) in ELL_RANGE.items()),
    )
    p.add_argument("--small", action="store_true", help="--channels 8 --max-ell 2 (quick runs)")
    p.add_argument("--seed", type=_number(int, 0, 2**32 - 1), default=0)
    p.add_argument("--plot", default="fastcg_md.png", help="PNG path ('' for none)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--radial",
        choices=["exact", "tabulated"],
        default="exact",
        help="tabulated (mace-torch only): radial MLPs read from cubic Hermite tables, an "
        "opt-in approximation (max |dF| against the reference is printed)",
    )
    p.add_argument(
        "--engine",
        choices=["ase", "torchsim"],
        default="ase",
        help="torchsim: also torch-sim's batched NVE on --batch copies at once",
    )
    p.add_argument(
        "--batch",
        type=_number(int, 1),
        default=None,
        help="systems per torch-sim batch (>= 1, default 4; --engine torchsim)",
    )
    return p  # fmt: skip


def _check_backend(p: argparse.ArgumentParser, backend: str | None) -> None:
    """The backend (``--backend`` or ``FASTCG_BACKEND``) must run CPU tensors: the MD does."""
    from .backend import namespace

    name = "--backend" if backend else "FASTCG_BACKEND"
    try:
        chosen = backend or fastcg.get_backend()  # get_backend checks FASTCG_BACKEND's value
    except ValueError as e:
        p.error(f"argument {name}: {e}")
    if chosen == "cuda":
        p.error(f"argument {name}: the cuda backend runs CUDA tensors; fastcg md runs on the CPU")
    if chosen == "triton":
        if os.environ.get("TRITON_INTERPRET") != "1":
            p.error(f"argument {name}: the triton backend runs CPU tensors only under "
                    "TRITON_INTERPRET=1 (fastcg md runs on the CPU)")  # fmt: skip
        try:
            with fastcg.use_backend("triton"):
                namespace(False, "tensor_product")
        except NotImplementedError as e:
            p.error(f"argument {name}: {e}")


def _check_plot(p: argparse.ArgumentParser, path: str) -> None:
    """The plot is written last: a path it cannot be written to fails now, not after the MD."""
    if not path:
        return
    folder = Path(path).resolve().parent  # as savefig will see it (no ~ expansion)
    if not folder.is_dir():
        p.error(f"argument --plot: folder {str(folder)!r} does not exist")
    suffix = Path(path).suffix.lower().lstrip(".")
    if importlib.util.find_spec("matplotlib") is None:
        p.error(
            "argument --plot: matplotlib is not installed (pip install matplotlib, or --plot '')"
        )
    if suffix:
        from matplotlib.backend_bases import FigureCanvasBase

        kinds = FigureCanvasBase.get_supported_filetypes()
        if suffix not in kinds:
            p.error(f"argument --plot: matplotlib cannot write .{suffix} files; use one of "
                    + ", ".join(f".{k}" for k in sorted(kinds)))  # fmt: skip


def _check_engine(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--engine torchsim`` needs torch-sim installed; ``--batch`` needs that engine."""
    if args.engine != "torchsim":
        if args.batch is not None:
            p.error("argument --batch: only with --engine torchsim")
        return
    if importlib.util.find_spec("torch_sim") is None:
        p.error("argument --engine: torch-sim is not installed "
                "(pip install torch-sim-atomistic==0.3.0, or fastcg[torchsim])")  # fmt: skip
    args.batch = 4 if args.batch is None else args.batch


def _load_structure(p: argparse.ArgumentParser, spec: str, seed: int):
    """``build_structure``, with any problem reported as an error of ``--structure``."""
    if spec not in ("cu", "cu-small", "si") and not Path(spec).is_file():
        p.error(f"argument --structure: {spec!r} is neither 'cu', 'cu-small', 'si' nor a file")
    try:
        atoms = build_structure(spec, seed)
    except Exception as e:  # noqa: BLE001 (ASE raises many kinds for an unreadable file)
        why = f"{type(e).__name__}: {e}" if str(e) else "it holds no structure"
        p.error(f"argument --structure: cannot read {spec!r}: {why}")
    if isinstance(atoms, list) or len(atoms) == 0:
        p.error(f"argument --structure: {spec!r} must hold one structure with at least one atom")
    odd = sorted({int(z) for z in atoms.numbers if not 1 <= z <= 118})
    if odd:
        p.error(f"argument --structure: {spec!r} has atomic numbers {odd} (not elements 1..118)")
    from .calculator import check_atoms

    try:  # the calculator's own checks (elements aside: the models are built for these)
        check_atoms(atoms, None)
    except ValueError as e:
        p.error(f"argument --structure: {spec!r}: {e}")
    return atoms


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, object]:
    """Parse and validate every option before any work; returns (options, the ASE structure).

    A bad option exits with status 2 and a message naming it (argparse's ``error``), before
    anything large is built: the model's size is checked by arithmetic (``check_model_size``).
    """
    p = _parser()
    args = p.parse_args(argv)
    args.model = args.model or default_model()
    if args.model == "mace-torch" and importlib.util.find_spec("mace") is None:
        p.error("argument --model: mace-torch is not installed (pip install mace-torch)")
    if args.model == "sevennet-0" and importlib.util.find_spec("sevenn") is None:
        p.error("argument --model: sevenn is not installed (pip install sevenn==0.13.0, or "
                "fastcg[sevennet])")  # fmt: skip
    channels, max_ell = (8, 2) if args.small else (args.channels, args.max_ell)
    try:
        check_model_size(args.model, args.channels, args.max_ell)
        check_model_size(args.model, channels, max_ell)
    except ValueError as e:
        option = "--channels" if str(e).startswith("channels") else "--max-ell"
        p.error(f"argument {option}: {e}")
    if args.radial != "exact" and args.model != "mace-torch":
        p.error(f"argument --radial: {args.radial} needs --model mace-torch")
    _check_backend(p, args.backend)
    _check_plot(p, args.plot)
    _check_engine(p, args)
    atoms = _load_structure(p, args.structure, args.seed)
    if args.engine == "torchsim" and len(set(atoms.pbc.tolist())) > 1:
        p.error(f"argument --structure: torch-sim takes one periodicity for all axes; "
                f"{args.structure!r} has pbc {atoms.pbc.tolist()}")  # fmt: skip
    return args, atoms


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fastcg md``; returns the exit status."""
    args, atoms = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from .calculator import FastCGCalculator

    name = args.model
    dtype = DTYPES[args.dtype]
    MaxwellBoltzmannDistribution(atoms, temperature_K=args.temperature,
                                 rng=np.random.default_rng(args.seed))  # fmt: skip
    numbers = sorted({int(z) for z in atoms.numbers})
    channels, max_ell = (8, 2) if args.small else (args.channels, args.max_ell)
    fast, ref, ref_label = build_models(name, numbers, channels, max_ell, args.seed, args.radial)
    fast_calc = FastCGCalculator(fast, dtype=dtype)
    ref_calc = FastCGCalculator(ref, dtype=dtype, cutoff=fast_calc.cutoff)
    n = len(atoms)
    print(f"fastcg md: {name} model, {n} atoms, {args.dtype}, {torch.get_num_threads()} threads, "
          f"backend {args.backend or 'auto'}, cutoff {fast_calc.cutoff} A")  # fmt: skip

    with fastcg.use_backend(args.backend) if args.backend else _nothing():
        probe = atoms.copy()
        probe.calc = fast_calc
        forces = probe.get_forces()  # also warms up (first call allocates)
        probe.calc = ref_calc
        df = float(np.abs(probe.get_forces() - forces).max())
        run = run_nve(atoms.copy(), fast_calc, args.steps, args.timestep, not args.no_progress,
                      "fastcg")  # fmt: skip
    ref_steps = min(args.steps, 3) if args.reference_steps is None else args.reference_steps
    runs = {"fastcg": run}
    if ref_steps > 0:
        runs[ref_label] = run_nve(atoms.copy(), ref_calc, ref_steps, args.timestep,
                                  not args.no_progress, "reference")  # fmt: skip
    _report(runs, ref_label, n, df)
    if args.engine == "torchsim":
        _torchsim(args, atoms, [("fastcg", fast, args.steps), (ref_label, ref, ref_steps)],
                  dtype, float(run["epot"][0]))  # fmt: skip
    if args.plot:
        plot(args.plot, runs, n)
        print(f"plot: {args.plot}")
    return 0


def _torchsim(args: argparse.Namespace, atoms, models: list, dtype: torch.dtype,
              e_ase: float) -> None:  # fmt: skip
    """torch-sim's batched NVE on ``args.batch`` copies of ``atoms`` per model (label, model,
    steps): atom-steps/s of the batch, beside the ASE loop's."""
    from .integrations.torchsim import run_nve as run_batched

    n, k = len(atoms), args.batch
    print(f"torch-sim batched NVE, {k} systems x {n} atoms at once:")
    runs = {}
    for label, model, steps in models:
        if steps == 0:
            continue
        fast = label == "fastcg"
        with fastcg.use_backend(args.backend) if args.backend and fast else _nothing():
            runs[label] = run_batched(model, atoms, k, steps, args.timestep, args.temperature,
                                      dtype, args.seed, not args.no_progress, label)  # fmt: skip
    rate = {label: k * n * r["steps"] / r["seconds"] for label, r in runs.items()}
    for label, r in runs.items():
        print(f"{label:<24} {r['steps']:5d} steps {r['seconds']:8.2f} s "
              f"{rate[label]:12.1f} atom-steps/s")  # fmt: skip
    if len(rate) == 2:
        print(f"speed-up (torch-sim): {rate['fastcg'] / rate[models[1][0]]:.2f}x")
    r = runs["fastcg"]
    print(f"max |E(step 0)| torch-sim vs ASE calculator: {abs(r['epot'][0] - e_ase).max():.3e} eV")
    etot = r["epot"] + r["ekin"]
    print(f"energy drift per atom over {r['steps']} steps (worst of {k}): "
          f"{abs(etot[-1] - etot[0]).max() / n:.3e} eV")  # fmt: skip


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def _report(runs: dict[str, dict], ref_label: str, natoms: int, df: float) -> None:
    rate = {k: natoms * r["steps"] / r["seconds"] for k, r in runs.items()}
    for label, r in runs.items():
        print(f"{label:<24} {r['steps']:5d} steps {r['seconds']:8.2f} s "
              f"{rate[label]:12.1f} atom-steps/s")  # fmt: skip
    if ref_label in rate:
        print(f"speed-up: {rate['fastcg'] / rate[ref_label]:.2f}x")
    print(f"max |dF| fastcg vs {ref_label}: {df:.3e} eV/A")
    r = runs["fastcg"]
    etot = r["epot"] + r["ekin"]
    drift = (etot[-1] - etot[0]) / natoms
    spread = (etot.max() - etot.min()) / natoms
    print(f"energy drift per atom over {r['steps']} steps: {drift:.3e} eV "
          f"(max - min {spread:.3e} eV)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build_models", "build_structure", "check_model_size", "main", "parse_args", "run_nve"]
