"""Triton interpreter tests: run with ``TRITON_INTERPRET=1 pytest tests/triton`` (own process).

The variable must be set before triton kernels are imported, so without it (or without triton)
every test here is skipped instead of silently testing compiled kernels on a machine without a
GPU.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
HAVE_TRITON = importlib.util.find_spec("triton") is not None


def pytest_collection_modifyitems(config, items):
    if INTERPRET and HAVE_TRITON:
        return
    why = "needs TRITON_INTERPRET=1 and triton (run: TRITON_INTERPRET=1 pytest tests/triton)"
    for item in items:
        if "tests/triton" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def triton_backend():
    """Import fastcg.triton (registers fastcg_triton) and force the Triton backend."""
    import fastcg
    import fastcg.triton  # noqa: F401

    with fastcg.use_backend("triton"):
        yield
