"""Tests against mace-torch (`.venv-mace/bin/python -m pytest tests/mace_layers`).

Every test here is skipped where mace-torch is not importable (the main environment). e3nn is
imported through fastcg first: e3nn 0.4.4 (mace-torch's pin) needs fastcg's import flag.
"""

import importlib.util
from pathlib import Path

import pytest

import fastcg.irreps

fastcg.irreps.o3()


def _has_mace() -> bool:
    # "mace.modules", not "mace": a directory named mace on sys.path would pass for the latter
    try:
        return importlib.util.find_spec("mace.modules") is not None
    except ImportError:
        return False


HAS_MACE = _has_mace()
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if HAS_MACE:
        return
    skip = pytest.mark.skip(reason="mace-torch is not installed (use .venv-mace)")
    for item in items:
        if Path(str(item.fspath)).resolve().parent == HERE:
            item.add_marker(skip)
