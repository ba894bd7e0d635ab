"""Seeded fuzz of fastcg.nn's e3nn twins against e3nn, in child processes (issue 13, item 4).

Each test runs ``tests/e3nn_fuzz_worker.py`` for one seed: a few hundred random specifications
(valid and invalid) of TensorProduct, FullyConnected / Elementwise tensor products, Linear and
spherical harmonics. fastcg must raise iff e3nn raises at construction, else equal e3nn in
float64 (values, gradients, some second derivatives). The worker is a child process, so a
crash (segfault, abort) fails the test with the case that caused it instead of killing pytest.
Reproduce a failure with the command the message prints
(``python tests/e3nn_fuzz_worker.py --seed S --only K -v``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("e3nn_fuzz_worker.py")
SEEDS = (0, 1, 2, 3)  # 4 x 250 = 1,000 cases
CASES = 250
TIMEOUT_S = 600  # generous: a hang is reported with its case, it is not a slow pass


def run_worker(seed: int, cases: int, *extra: str) -> tuple[int | None, list[dict], str]:
    """Run the worker; (returncode or None on timeout, its JSON lines, stderr tail)."""
    cmd = [sys.executable, str(WORKER), "--seed", str(seed), "--cases", str(cases), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=WORKER.parent
        )
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = None, _text(exc.stdout), _text(exc.stderr)
    lines = []
    for line in out.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # stray prints of the code under test
    return rc, lines, err[-3000:]


def _text(b: bytes | str | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def _reproduce(seed: int, case: int) -> str:
    return f"python tests/e3nn_fuzz_worker.py --seed {seed} --only {case} -v"


def failures(seed: int, cases: int, rc: int | None, lines: list[dict], stderr: str) -> list[str]:
    """Everything wrong with one worker run, as messages (empty: it passed)."""
    msgs = []
    starts = [x for x in lines if "start" in x]
    done = {x["case"] for x in lines if "status" in x}
    summary = next((x["summary"] for x in lines if "summary" in x), None)
    if rc is None or rc not in (0, 1) or summary is None:
        how = "timed out" if rc is None else _exit(rc)
        last = starts[-1] if starts else None
        where = "before any case"
        if last:
            when = "after" if last["case"] in done else "in"
            where = (
                f"{when} case {last['case']} ({last['kind']}): {last['call']} "
                f"inputs={last['inputs']}\n  reproduce: {_reproduce(seed, last['case'])}"
            )
        msgs.append(f"CRASH: worker --seed {seed} {how} {where}\n  stderr: {stderr[-1500:]}")
    elif summary["cases"] != cases:
        msgs.append(f"worker --seed {seed} ran {summary['cases']} cases, not {cases}")
    else:  # guard against a vacuous pass (e.g. a generator that only draws rejected specs)
        agree = sum(n for k, n in summary["counts"].items() if k.startswith("agree"))
        if agree < cases // 3 or summary["compared"] == 0:
            msgs.append(f"worker --seed {seed}: only {agree} of {cases} cases compared values")
    for x in lines:
        if x.get("status") == "disagree":
            msgs.append(
                f"DISAGREE [{x['category']}] case {x['case']}: {x['call']} inputs={x['inputs']}"
                f"\n  {x.get('detail', '')}\n  reproduce: {_reproduce(seed, x['case'])}"
            )
    return msgs


def _exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with status {rc}"


def _report(msgs: list[str], limit: int = 25) -> str:
    head = "\n".join(msgs[:limit])
    more = f"\n... and {len(msgs) - limit} more" if len(msgs) > limit else ""
    return f"{len(msgs)} problem(s):\n{head}{more}"


@pytest.mark.parametrize("seed", SEEDS)
def test_fuzz_against_e3nn(seed: int) -> None:
    rc, lines, err = run_worker(seed, CASES)
    msgs = failures(seed, CASES, rc, lines, err)
    assert not msgs, _report(msgs)


def test_harness_catches_crash_and_disagreement() -> None:
    """The harness itself can fail: perturbed fastcg values and an os.abort() are reported."""
    rc, lines, err = run_worker(8, 4, "--perturb", "--kinds", "linear,sh", "--abort-at", "3")
    msgs = failures(8, 4, rc, lines, err)
    assert rc == -signal.SIGABRT, (rc, err)
    crash = [m for m in msgs if m.startswith("CRASH")]
    assert len(crash) == 1 and "SIGABRT" in crash[0] and "--seed 8 --only 3" in crash[0], msgs
    perturbed = [m for m in msgs if m.startswith("DISAGREE") and "values]" in m]
    assert perturbed and "--seed 8 --only" in perturbed[0], msgs
