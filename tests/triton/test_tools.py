"""Ahead-of-time compile check (sm_80, no GPU) and generated-code drift of the Triton files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_kernels_compile_for_sm80_within_limits():
    """Each kernel configuration of a small problem compiles, no smem overflow, no spill."""
    res = _run("tools/triton_aot.py", "--quick")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "0 over the limits" in res.stdout


def test_generated_spherical_harmonics_are_up_to_date():
    """tools/gen_sh.py writes _sh_generated.py (and csrc/core/sh.h) from one set of term lists."""
    res = _run("tools/gen_sh.py", "--check")
    assert res.returncode == 0, res.stderr
    assert "_sh_generated.py is up to date" in res.stdout


def test_gpu_benchmark_smoke():
    """bench/gpu.py --smoke runs the conv benchmark end to end through the interpreter."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run(
        [sys.executable, "bench/gpu.py", "--smoke"], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fastcg" in res.stdout and "failed" not in res.stdout
