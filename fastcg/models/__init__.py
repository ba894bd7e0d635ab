"""SchNet, NequIP, MACE-style and SO3Net models built only from ``fastcg.nn`` (and torch MLPs).

The model interface (what ``fastcg.calculator.FastCGCalculator`` and ``fastcg md`` call)::

    energy = model(positions, numbers, src, dst, shifts, cell)

- ``positions`` ``[N, 3]`` float, ``numbers`` ``[N]`` int64 atomic numbers;
- ``src``, ``dst`` ``[E]`` int64: edge e carries a message from atom ``src[e]`` (sender j) to
  atom ``dst[e]`` (receiver i); the neighbour list is *full* (both directions are edges);
- ``shifts`` ``[E, 3]`` Cartesian periodic shifts, so the edge vector is
  ``r_ij = positions[src] - positions[dst] + shifts`` (e3nn / NequIP convention);
- ``cell`` ``[3, 3]`` (rows are lattice vectors; zeros when not periodic). The models here do not
  read it: the shifts already carry the cell. It is part of the interface for models that do;
- returns the total energy, a 0-d tensor. Forces are ``-d energy / d positions``; the stress
  comes from a strain applied to both positions and shifts (see the calculator).

Every model has ``node_energies(positions, numbers, src, dst, shifts)`` (``[N]``), a
``ghost_exchange`` hook (:class:`GhostExchange`: applied to the node features before every
message-passing layer but the first; the identity, except under a domain-decomposed engine such
as LAMMPS ML-IAP, :mod:`fastcg.integrations.lammps`; a model that calls it sets the class
attribute ``calls_ghost_exchange = True``) and a ``config`` dict, so
``fastcg.models._reference.reference_twin(model)`` can build the same model from e3nn layers
with the same weights (what the tests compare against).
"""

from .base import (
    FASTCG_LAYERS,
    AtomisticModel,
    GhostExchange,
    Layers,
    edge_vectors,
)
from .mace import MACE
from .nequip import NequIP
from .schnet import SchNet
from .so3net import SO3Net

MODELS = {"schnet": SchNet, "nequip": NequIP, "mace": MACE, "so3net": SO3Net}

__all__ = [
    "FASTCG_LAYERS",
    "MACE",
    "MODELS",
    "AtomisticModel",
    "GhostExchange",
    "Layers",
    "NequIP",
    "SO3Net",
    "SchNet",
    "edge_vectors",
]
