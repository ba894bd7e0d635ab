"""ASE calculator for fastcg models (energy, forces, stress), neighbour list from vesin.

Any module with the model interface of :mod:`fastcg.models` works::

    energy = model(positions, numbers, src, dst, shifts, cell)   # 0-d tensor

(``r_ij = positions[src] - positions[dst] + shifts``, full neighbour list, Cartesian shifts), which
includes the models in ``fastcg.models``, e3nn models with that interface after
``fastcg.convert``, and mace-torch models (converted or not), which are wrapped in
:class:`fastcg.integrations.mace.MaceTorchModel` automatically.

>>> from ase.build import molecule
>>> from fastcg.models import SchNet
>>> atoms = molecule("H2O")
>>> atoms.calc = FastCGCalculator(SchNet([1, 8], num_features=8), cutoff=3.0)
>>> atoms.get_forces().shape
(3, 3)
"""

from __future__ import annotations

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress

# Two atoms (or an atom and a periodic image) closer than this are rejected before the model
# runs: at distance 0 the models divide by |r_ij| (unit vectors, radial basis) and the energy
# is NaN; just above it the forces are meaningless. The check runs in the model's dtype, so a
# float32 model also catches pairs that only coincide after rounding.
MIN_DISTANCE = 1e-6  # Angstrom


def as_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` itself, or a framework's model (e.g. mace-torch's) wrapped in the fastcg model
    interface by its integration (:mod:`fastcg.integrations`)."""
    from .integrations import as_model as wrap

    return wrap(model)


def model_cutoff(model: torch.nn.Module) -> float:
    """The cutoff radius a model was built with (``config["cutoff"]`` or mace-torch's r_max)."""
    config = getattr(model, "config", None)
    if isinstance(config, dict) and "cutoff" in config:
        return float(config["cutoff"])
    inner = getattr(model, "model", model)
    if hasattr(inner, "r_max"):
        return float(inner.r_max)
    raise ValueError("cannot tell the model's cutoff; pass cutoff=")


def model_elements(model: torch.nn.Module) -> list[int] | None:
    """Atomic numbers ``model`` was built for, or None when it does not say.

    Read from ``config["atomic_numbers"]`` (fastcg models, their e3nn twins and converted
    copies), else a ``species_index`` table (``Z -> species``, -1 where absent: TorchScript'd
    fastcg models, wrapped mace-torch models), else mace-torch's ``atomic_numbers``.
    """
    config = getattr(model, "config", None)
    if isinstance(config, dict) and "atomic_numbers" in config:
        return sorted(int(z) for z in config["atomic_numbers"])
    index = getattr(model, "species_index", None)
    if isinstance(index, torch.Tensor) and index.dim() == 1:
        return (index >= 0).nonzero().flatten().tolist()
    numbers = getattr(getattr(model, "model", model), "atomic_numbers", None)
    if isinstance(numbers, torch.Tensor):
        return sorted(int(z) for z in numbers.flatten().tolist())
    return None


def _element(z: int) -> str:
    name = chemical_symbols[z] if 0 <= z < len(chemical_symbols) else "?"
    return f"{name} (Z={z})"


def _some(items: list, limit: int = 10) -> str:
    text = ", ".join(str(i) for i in items[:limit])
    return f"[{text}{', ...' if len(items) > limit else ''}]"


def check_atoms(atoms, elements: list[int] | None) -> None:
    """Raise ValueError, naming the atoms, for input no model can give a number for.

    Non-finite positions or cell, an element outside ``elements`` (the model's; None skips that
    check), a periodic axis whose cell vector is zero. Coincident atoms are checked on the
    neighbour list (``check_distances``).
    """
    bad = np.flatnonzero(~np.isfinite(atoms.positions).all(axis=1)).tolist()
    if bad:
        raise ValueError(f"positions of atoms {_some(bad)} are not finite")
    if elements is not None:
        numbers = np.asarray(atoms.numbers)
        unknown = sorted(set(numbers.tolist()) - set(elements))
        if unknown:
            where = "; ".join(
                f"{_element(z)} at atom indices {_some(np.flatnonzero(numbers == z).tolist())}"
                for z in unknown
            )
            supported = ", ".join(_element(z) for z in elements)
            raise ValueError(
                f"the model does not support {where}; it supports {supported or 'no element'}"
            )
    cell = atoms.cell.array
    if not np.isfinite(cell).all():
        raise ValueError(f"atoms.cell is not finite: {cell.tolist()}")
    for axis in np.flatnonzero(atoms.pbc):
        if not np.linalg.norm(cell[axis]) > 0:
            raise ValueError(f"atoms.pbc[{axis}] is True but cell vector {axis} is zero")


def check_distances(vectors: torch.Tensor, src: np.ndarray, dst: np.ndarray,
                    unit_shifts: np.ndarray) -> None:  # fmt: skip
    """Raise ValueError naming the atoms of any edge shorter than ``MIN_DISTANCE``.

    ``vectors`` are the edge vectors as the model gets them (its dtype and device).
    """
    d2 = vectors.square().sum(-1)
    if not len(d2) or float(d2.min()) >= MIN_DISTANCE**2:  # 0.4 ms at 37k edges (864 Cu)
        return
    close = (d2 < MIN_DISTANCE**2).nonzero().flatten().cpu().numpy()
    if not len(close):  # the minimum was NaN: NaN propagates, as everywhere in fastcg
        return
    pairs: dict[tuple, str] = {}  # the full list has each pair twice: (i, j, s) and (j, i, -s)
    for e in close:
        i, j, s = int(dst[e]), int(src[e]), tuple(int(k) for k in unit_shifts[e])
        neg = tuple(-k for k in s)
        key = min((i, j, s), (j, i, neg))
        image = f" (periodic image, cell shift {list(key[2])})" if any(s) else ""
        pairs.setdefault(key, f"atoms {key[0]} and {key[1]}{image}")
    text = "; ".join(list(pairs.values())[:10]) + (" ..." if len(pairs) > 10 else "")
    raise ValueError(
        f"{len(pairs)} pair(s) of atoms closer than {MIN_DISTANCE} A: {text}; at distance 0 "
        "the model's energy or forces are NaN (it divides by the distance)"
    )


def neighbour_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list ``(src, dst, unit_shifts)``:
    ``r_ij = pos[src] - pos[dst] + unit_shifts @ cell`` is shorter than ``cutoff``.

    vesin computes it (15 ms for 864 Cu atoms, 5 A cutoff); without vesin ASE's slower one does.
    Edges come sorted by ``dst`` (stable).
    """
    periodic = [bool(p) for p in pbc]
    try:
        from vesin import NeighborList
    except ImportError:
        from ase.neighborlist import primitive_neighbor_list

        i, j, s = primitive_neighbor_list("ijS", periodic, cell, positions, cutoff,
                                          self_interaction=False)  # fmt: skip
    else:
        box = cell if any(periodic) else np.zeros((3, 3))
        i, j, s = NeighborList(cutoff=cutoff, full_list=True).compute(
            points=positions, box=box, periodic=periodic if any(periodic) else False,
            quantities="ijS",
        )  # fmt: skip
    # both give the vector pos[j] - pos[i] + S @ cell: j sends (src), i receives (dst). Sorted
    # by receiver: the convs then group edges without a permuted copy of every per-edge tensor
    # (conv_radial: 22 MB per MACE interaction at 37k edges) and sum in a reproducible order.
    order = np.argsort(i, kind="stable")
    return j[order].astype(np.int64), i[order].astype(np.int64), s[order].astype(np.int64)


class FastCGCalculator(Calculator):
    """ASE calculator: ``energy``, ``free_energy``, ``forces`` and (periodic cells) ``stress``.

    Forces are ``-dE/dpositions``; the stress is ``(1/V) dE/d(strain)`` for a symmetric strain
    applied to the positions and the cell (so to the periodic shifts), ASE's sign convention.
    ``dtype`` is the model's dtype (float64 by default); ASE sees float64 numpy arrays.
    Before the model runs, input it cannot give a number for raises ValueError naming the atoms:
    elements the model lacks, non-finite positions or cell, atoms closer than ``MIN_DISTANCE``.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        model: torch.nn.Module,
        cutoff: float | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.model = as_model(model).to(device=device, dtype=dtype)
        self.cutoff = model_cutoff(self.model) if cutoff is None else float(cutoff)
        if not (np.isfinite(self.cutoff) and self.cutoff > 0):
            raise ValueError(f"cutoff must be a finite number > 0, got {self.cutoff}")
        self.dtype, self.device = dtype, torch.device(device)
        self.elements = model_elements(self.model)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=self.dtype, device=self.device)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(atoms.pbc.any())
        want_stress = "stress" in properties and periodic
        check_atoms(atoms, self.elements)
        src, dst, unit = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, self.cutoff)
        pos = self._tensor(atoms.positions).requires_grad_(True)
        cell = self._tensor(atoms.cell.array)
        strain = torch.zeros(3, 3, dtype=self.dtype, device=self.device, requires_grad=want_stress)
        sym = 0.5 * (strain + strain.T)
        pos_s, cell_s = pos + pos @ sym, cell + cell @ sym
        shifts = self._tensor(unit) @ cell_s
        index = [torch.as_tensor(a, device=self.device) for a in (src, dst)]
        with torch.no_grad():  # the models' r_ij, before they divide by its length
            vectors = pos.index_select(0, index[0]) - pos.index_select(0, index[1]) + shifts
            check_distances(vectors, src, dst, unit)
        numbers = torch.as_tensor(atoms.numbers, dtype=torch.long, device=self.device)
        # A TorchScript model runs without the graph executor's optimisations: they fuse nothing
        # around fastcg's ops, and on the 864-atom MACE (scripted, converted) they made each call
        # 0.82 s instead of 0.49 s and its memory 0.50 GB instead of 0.31 GB
        scripted = isinstance(self.model, torch.jit.ScriptModule)
        with torch.jit.optimized_execution(not scripted):
            energy = self.model(pos_s, numbers, index[0], index[1], shifts, cell_s)
            inputs = [pos, strain] if want_stress else [pos]
            grads = torch.autograd.grad(energy, inputs, allow_unused=True)
        e = float(energy.detach())
        forces = -grads[0] if grads[0] is not None else torch.zeros_like(pos)
        self.results = {
            "energy": e,
            "free_energy": e,
            "forces": forces.detach().cpu().to(torch.float64).numpy(),
        }
        if want_stress:
            volume = abs(float(np.linalg.det(atoms.cell.array)))
            g = grads[1] if grads[1] is not None else torch.zeros(3, 3, dtype=self.dtype)
            stress = g.detach().cpu().to(torch.float64).numpy() / volume
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)
