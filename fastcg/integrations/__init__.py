"""One module per framework fastcg plugs into (``fastcg/integrations/<framework>.py``).

Each module is imported only when its framework is, and offers up to three hooks, called by
:func:`fastcg.convert` and by the calculator in this order:

- ``convert_modules(model) -> int``: in place, before the e3nn modules become fastcg's twins:
  swap the framework's own hot-path modules (e.g. mace-torch's conv + scatter for one fused conv);
  returns how many it swapped.
- ``finish(model) -> int``: in place, after the e3nn swap (e.g. fold a radial MLP's last layer
  into the fused conv once that MLP is fastcg's).
- ``tabulate(model, step) -> list[RadialTable]``: in place, after ``finish``, only when the
  caller opts in (``convert(model, radial="tabulated")``): read the convs' per-edge weights from
  tables of the radial functions (:func:`fastcg.nn.radial_table`); returns the tables.
- ``as_model(model) -> Module | None``: ``model`` wrapped in the fastcg model interface
  (``energy = model(positions, numbers, src, dst, shifts, cell)``) when it is this framework's
  model, else None.

A framework is recognised by its top-level package name being in ``sys.modules``: a model that
holds one of its modules has imported it, and fastcg never imports a framework on its own.
"""

import importlib
import sys
from types import ModuleType

import torch

# framework's top-level package -> fastcg module holding its hooks
FRAMEWORKS = {
    "mace": "fastcg.integrations.mace",
    "nequip": "fastcg.integrations.nequip",
    "sevenn": "fastcg.integrations.sevennet",
    "schnetpack": "fastcg.integrations.schnetpack",
}


def loaded() -> list[ModuleType]:
    """The hook modules of the frameworks this process has imported."""
    return [importlib.import_module(mod) for pkg, mod in FRAMEWORKS.items() if pkg in sys.modules]


def convert_modules(model: torch.nn.Module) -> int:
    """Every loaded framework's ``convert_modules`` on ``model`` (in place); how many swapped."""
    return sum(m.convert_modules(model) for m in loaded() if hasattr(m, "convert_modules"))


def finish(model: torch.nn.Module) -> int:
    """Every loaded framework's ``finish`` on ``model`` (in place); how many changed."""
    return sum(m.finish(model) for m in loaded() if hasattr(m, "finish"))


def tabulate(model: torch.nn.Module, step: float) -> list:
    """Every loaded framework's ``tabulate`` on ``model`` (in place); the tables it built."""
    return [t for m in loaded() if hasattr(m, "tabulate") for t in m.tabulate(model, step)]


def as_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in the fastcg model interface: wrapped by its framework's hook, or itself."""
    for m in loaded():
        wrapped = m.as_model(model) if hasattr(m, "as_model") else None
        if wrapped is not None:
            return wrapped
    return model
