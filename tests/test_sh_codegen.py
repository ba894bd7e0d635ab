"""The generated csrc/core/sh.h must match its generator (and the generator must match e3nn)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_sh_header_is_up_to_date():
    # --check also re-verifies the recursion against e3nn before comparing.
    run = subprocess.run(
        [sys.executable, "tools/gen_sh.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
