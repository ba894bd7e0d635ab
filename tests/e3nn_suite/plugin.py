"""Pytest plugin: run e3nn's own tests with fastcg's e3nn twins in place of e3nn's classes.

Loaded with ``-p tests.e3nn_suite.plugin`` on e3nn 0.6.0's test files (``make test-e3nn`` fetches
them from the e3nn sdist). The swap happens in ``pytest_configure``, before any test module runs
``from e3nn.o3 import TensorProduct``, so every name a test imports is fastcg's. e3nn's own
subclasses that fastcg has no twin of (``FullTensorProduct``, ``TensorSquare``) stay e3nn's.

The session fails unless every swapped class was actually built by some test: a swap that silently
stopped happening (e.g. an e3nn release importing the names differently) must not pass as green.
"""

from __future__ import annotations

import collections

import pytest

# e3nn name -> fastcg attribute path. Functions are swapped too: e3nn's tests call
# ``o3.spherical_harmonics`` through the module, so the module attribute is what they see.
SWAPS = {
    ("e3nn.o3", "TensorProduct"): ("fastcg.nn", "TensorProduct"),
    ("e3nn.o3", "FullyConnectedTensorProduct"): ("fastcg.nn", "FullyConnectedTensorProduct"),
    ("e3nn.o3", "ElementwiseTensorProduct"): ("fastcg.nn", "ElementwiseTensorProduct"),
    ("e3nn.o3", "Linear"): ("fastcg.nn", "Linear"),
    ("e3nn.o3", "SphericalHarmonics"): ("fastcg.nn", "SphericalHarmonics"),
    ("e3nn.o3", "spherical_harmonics"): ("fastcg.nn", "spherical_harmonics"),
    ("e3nn.nn", "Gate"): ("fastcg.nn", "Gate"),
}

# Tests of e3nn's suite that check something fastcg deliberately does differently, by node id
# suffix, with the reason. Each becomes a strict xfail: if it starts passing, the entry goes.
DIFFERENT: dict[str, str] = {}

_built: collections.Counter[str] = collections.Counter()


def _counting(cls: type, name: str) -> type:
    """``cls`` with construction counted (a subclass would break ``type(m) is cls`` checks, so the
    original ``__init__`` is wrapped in place, once)."""
    if "_e3nn_suite_counted" in cls.__dict__:  # its own flag, not a base class's
        return cls
    init = cls.__init__

    def __init__(self, *args, **kwargs):
        if type(self) is cls:  # a subclass's super().__init__ counts for the subclass only
            _built[name] += 1
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    cls._e3nn_suite_counted = True
    return cls


def _counting_function(fn, name: str):
    def wrapper(*args, **kwargs):
        _built[name] += 1
        return fn(*args, **kwargs)

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


def pytest_configure(config: pytest.Config) -> None:
    import importlib
    import random

    import torch

    # e3nn's tests draw their parameters with `random` at collection: seeded, every pytest-xdist
    # worker collects the same tests (and a failure names a case that can be run again).
    random.seed(0)
    torch.manual_seed(0)

    for (e3nn_mod, e3nn_name), (mod, name) in SWAPS.items():
        target = getattr(importlib.import_module(mod), name)
        label = f"{e3nn_mod}.{e3nn_name}"
        if isinstance(target, type):
            target = _counting(target, label)
        else:
            target = _counting_function(target, label)
        setattr(importlib.import_module(e3nn_mod), e3nn_name, target)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for suffix, reason in DIFFERENT.items():
            if item.nodeid.endswith(suffix):
                item.add_marker(pytest.mark.xfail(reason=reason, strict=True))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist: add up the counts of a worker that finished."""
    _built.update(getattr(node, "workeroutput", {}).get("fastcg_built", {}))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.option.collectonly:
        return
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller adds the counts up
        workeroutput["fastcg_built"] = dict(_built)
        return
    unused = [f"{m}.{n}" for (m, n) in SWAPS if _built[f"{m}.{n}"] == 0]
    if unused:
        print(f"\ne3nn suite: fastcg's twin of {', '.join(unused)} was never used by any test")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    else:
        used = ", ".join(f"{k} {v}" for k, v in _built.items())
        print(f"\ne3nn suite: fastcg twins used: {used}")
