"""Tests that need mace-torch 0.3.16 and its pinned e3nn 0.4.4 (`make test-mace`, .venv-mace)."""

from pathlib import Path

import pytest

import fastcg.irreps

fastcg.irreps.o3()  # e3nn first, through fastcg (it handles 0.4.4's loading flag)
import e3nn  # noqa: E402

try:
    import mace  # noqa: F401

    MACE = True
except ImportError:  # the main environment has no mace-torch
    MACE = False

E3NN_VERSION = e3nn.__version__
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items):
    if MACE:
        return
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.skip(reason="needs the mace-torch environment"))
