"""torch-sim: fastcg models in torch-sim's batched integrators, optimisers and runners.

:class:`FastCGModel` is a torch-sim ``ModelInterface`` around any model with the fastcg model
interface (``energy = model(positions, numbers, src, dst, shifts, cell)``, see
:mod:`fastcg.models`): the models of ``fastcg.models``, their e3nn twins, e3nn models with that
interface after :func:`fastcg.convert`, and mace-torch models (converted or not), which are
wrapped by their integration (:func:`fastcg.integrations.as_model`). One call evaluates every
system of a torch-sim state: one neighbour list per system (torch-sim's ``vesin_nl_ts``), then,
for models with ``node_energies`` (all of the above), one model call on the whole batch whose
per-atom energies are summed per system; forces and stress come from one backward pass::

    import torch_sim as ts
    from fastcg.integrations.torchsim import FastCGModel

    model = FastCGModel(fastcg.models.MACE([29]), device="cpu", dtype=torch.float64)
    state = ts.io.atoms_to_state([atoms_1, atoms_2], model.device, model.dtype)
    final = ts.integrate(system=state, model=model, integrator=ts.nvt_langevin,
                         n_steps=100, timestep=0.002, temperature=300)

A converted mace-torch model also runs in torch-sim's own ``MaceModel`` unchanged:
``MaceModel(model=fastcg.convert(mace_model))``.

This module imports torch_sim; ``import fastcg`` never imports it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

try:
    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface
    from torch_sim.neighbors import vesin_nl_ts
except ImportError as e:  # pragma: no cover (exercised in environments without torch-sim)
    raise ImportError(
        "fastcg.integrations.torchsim needs torch-sim: pip install torch-sim-atomistic==0.3.0 "
        "(or fastcg[torchsim])"
    ) from e

from ..calculator import as_model, check_distances, model_cutoff, model_elements


class FastCGModel(ModelInterface):
    """A fastcg-interface model as a torch-sim model: ``forward(state)`` returns ``energy``
    ``[n_systems]``, ``forces`` ``[n_atoms, 3]`` and, for periodic states, ``stress``
    ``[n_systems, 3, 3]`` (``(1/V) dE/d(strain)``, as mace-torch and ASE).

    The model moves to ``device`` and ``dtype`` in place (as in ``FastCGCalculator``).
    ``cutoff`` defaults to the model's (:func:`fastcg.calculator.model_cutoff`).
    ``neighbor_list_fn(positions, cell, pbc, cutoff)`` is any of torch-sim's per-system
    neighbour lists returning ``(mapping [2, E], unit shifts [E, 3])`` with the edge vector
    ``pos[mapping[1]] - pos[mapping[0]] + shift @ cell``.
    A state in another dtype or on another device than the model's, an element the model lacks
    or atoms closer than ``fastcg.calculator.MIN_DISTANCE`` raise ValueError.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        cutoff: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
        compute_forces: bool = True,
        compute_stress: bool = True,
        neighbor_list_fn: Callable = vesin_nl_ts,
    ) -> None:
        super().__init__()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        cuda = torch.cuda.is_available()
        self._device = torch.device(device or ("cuda" if cuda else "cpu"))
        self._dtype = dtype
        self._compute_forces = bool(compute_forces)
        self._compute_stress = bool(compute_stress)
        self._memory_scales_with = "n_atoms_x_density"
        self.model = as_model(model).to(device=self._device, dtype=dtype).eval()
        self.cutoff = model_cutoff(self.model) if cutoff is None else float(cutoff)
        if not (math.isfinite(self.cutoff) and self.cutoff > 0):
            raise ValueError(f"cutoff must be a finite number > 0, got {self.cutoff}")
        self.elements = model_elements(self.model)
        self.neighbor_list_fn = neighbor_list_fn
        # one call on the whole batch needs per-atom energies; without them, one call per system
        self.batched = hasattr(self.model, "node_energies")

    def forward(self, state: ts.SimState | dict, **_) -> dict[str, Tensor]:
        """Energies, forces and stress of every system in ``state`` (see the class docstring)."""
        if isinstance(state, dict):
            pos = state["positions"]
            state = ts.SimState(**{"masses": pos.new_ones(pos.shape[0]), **state})
        self._check(state)
        with torch.enable_grad():  # forces and stress are gradients, also under torch.no_grad()
            return self._forward(state)

    def _forward(self, state: ts.SimState) -> dict[str, Tensor]:
        pos = state.positions.detach().requires_grad_(self._compute_forces)
        want_stress = self._compute_stress and _periodic(state.pbc)
        cells = state.row_vector_cell.detach()
        strain = torch.zeros_like(cells, requires_grad=want_stress)
        sym = 0.5 * (strain + strain.mT)
        system_idx = state.system_idx
        pos_s = pos + (pos.unsqueeze(-2) @ sym[system_idx]).squeeze(-2) if want_stress else pos
        cells_s = cells + cells @ sym
        graph = self._graph(pos, state, cells_s)
        energy = self._energies(pos_s, state, graph, cells_s)
        inputs = ([pos] if self._compute_forces else []) + ([strain] if want_stress else [])
        grads = torch.autograd.grad(energy.sum(), inputs, allow_unused=True) if inputs else ()
        grads = [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, inputs)]
        out = {"energy": energy.detach()}
        if self._compute_forces:
            out["forces"] = -grads[0].detach()
        if want_stress:
            volume = torch.linalg.det(cells).abs()
            out["stress"] = grads[-1].detach() / volume[:, None, None]
        return out

    def _check(self, state: ts.SimState) -> None:
        """Raise ValueError for a state the model cannot evaluate as given."""
        if state.positions.dtype != self._dtype:
            raise ValueError(
                f"state is {state.positions.dtype} but the model is {self._dtype}; build the "
                "state (ts.io.atoms_to_state) or the FastCGModel with the same dtype"
            )
        if state.positions.device != self._device:
            raise ValueError(f"state is on {state.positions.device}, the model on {self._device}")
        if not torch.isfinite(state.positions).all():
            raise ValueError("state.positions are not finite")
        if self.elements is not None:
            unknown = sorted(set(state.atomic_numbers.unique().tolist()) - set(self.elements))
            if unknown:
                raise ValueError(
                    f"the model does not support atomic numbers {unknown}; it supports "
                    f"{self.elements}"
                )

    def _graph(self, pos: Tensor, state: ts.SimState, cells: Tensor) -> dict[str, Tensor]:
        """Every system's neighbour list in global atom indices, edges sorted by ``dst``."""
        cutoff = torch.tensor(self.cutoff, dtype=torch.float64)
        parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        for b in range(state.n_systems):
            atoms = (state.system_idx == b).nonzero().flatten()
            mapping, unit = self.neighbor_list_fn(
                positions=pos.detach()[atoms], cell=cells.detach()[b], pbc=state.pbc,
                cutoff=cutoff,
            )  # fmt: skip
            system = torch.full_like(mapping[0], b)
            # the edge vector is pos[mapping[1]] - pos[mapping[0]] + shift: mapping[1] sends
            parts.append((atoms[mapping[1]], atoms[mapping[0]], unit.to(pos.dtype), system))
        src, dst, unit, system = (torch.cat(t) for t in zip(*parts))
        # sorted by receiver, as the calculator's list: the convs group edges without a permuted
        # copy of every per-edge tensor and sum in a reproducible order
        order = torch.argsort(dst, stable=True)
        return {"src": src[order], "dst": dst[order], "unit": unit[order], "system": system[order]}

    def _energies(
        self, pos: Tensor, state: ts.SimState, graph: dict[str, Tensor], cells: Tensor
    ) -> Tensor:
        """``[n_systems]`` energies: one batched call, or one call per system."""
        src, dst, unit, system = graph["src"], graph["dst"], graph["unit"], graph["system"]
        shifts = (unit.unsqueeze(-2) @ cells[system]).squeeze(-2)
        with torch.no_grad():  # the models' r_ij, before they divide by its length
            vectors = pos.index_select(0, src) - pos.index_select(0, dst) + shifts
            check_distances(vectors, src, dst, unit)
        numbers = state.atomic_numbers.long()
        scripted = isinstance(self.model, torch.jit.ScriptModule)  # see FastCGCalculator
        with torch.jit.optimized_execution(not scripted):
            if self.batched:
                atom_energies = self.model.node_energies(pos, numbers, src, dst, shifts)
                return pos.new_zeros(state.n_systems).index_add(0, state.system_idx, atom_energies)
            return torch.stack([self._one(pos, numbers, graph, shifts, cells, state, b)
                                for b in range(state.n_systems)])  # fmt: skip

    def _one(
        self, pos: Tensor, numbers: Tensor, graph: dict[str, Tensor], shifts: Tensor,
        cells: Tensor, state: ts.SimState, b: int,
    ) -> Tensor:  # fmt: skip
        """System ``b``'s energy from a model that only gives a total (local atom indices)."""
        atoms = (state.system_idx == b).nonzero().flatten()
        local = torch.full((pos.shape[0],), -1, dtype=torch.long, device=pos.device)
        local[atoms] = torch.arange(atoms.numel(), device=pos.device)
        edges = (graph["system"] == b).nonzero().flatten()
        cell = cells[b] if _periodic(state.pbc) else torch.zeros_like(cells[b])
        return self.model(pos[atoms], numbers[atoms], local[graph["src"][edges]],
                          local[graph["dst"][edges]], shifts[edges], cell)  # fmt: skip


def run_nve(
    model: torch.nn.Module, atoms, batch: int, steps: int, timestep_fs: float,
    temperature_K: float, dtype: torch.dtype = torch.float64, seed: int = 0,
    progress: bool = False, label: str = "torchsim",
) -> dict:  # fmt: skip
    """torch-sim's velocity Verlet (``ts.nve``) on ``batch`` copies of ASE ``atoms`` at once,
    on the CPU, momenta drawn per copy at ``temperature_K`` (seeded).

    Returns ``epot`` and ``ekin`` (``[steps + 1, batch]`` numpy arrays, eV), ``seconds`` (wall
    time of the steps, the first model call excluded), ``steps`` and ``batch``.
    """
    from torch_sim.units import MetalUnits
    from tqdm import tqdm

    cpu = torch.device("cpu")
    ts_model = FastCGModel(model, device=cpu, dtype=dtype, compute_stress=False)
    state = ts.io.atoms_to_state([atoms] * batch, cpu, dtype)
    kt = torch.tensor(temperature_K * MetalUnits.temperature, dtype=dtype)
    dt = torch.tensor(timestep_fs * 1e-3 * MetalUnits.time, dtype=dtype)  # MetalUnits.time: 1 ps
    init, update = ts.nve(ts_model, dt=dt, kT=kt, seed=seed)
    md = init(state)
    epot, ekin = [], []

    def record(md) -> None:
        epot.append(md.energy.detach().cpu().double().numpy())
        kinetic = ts.calc_kinetic_energy(masses=md.masses, momenta=md.momenta,
                                         system_idx=md.system_idx)  # fmt: skip
        ekin.append(kinetic.detach().cpu().double().numpy())

    record(md)
    bar = tqdm(total=steps, desc=label, disable=not progress, unit="step", leave=True)
    start = time.perf_counter()
    for _ in range(steps):
        md = update(md)
        record(md)
        bar.update(1)
    seconds = time.perf_counter() - start
    bar.close()
    return {"epot": np.array(epot), "ekin": np.array(ekin), "seconds": seconds, "steps": steps,
            "batch": batch}  # fmt: skip


def _periodic(pbc: bool | Tensor) -> bool:
    """torch-sim 0.3 has one pbc flag for all axes; later releases a tensor of three."""
    return bool(torch.as_tensor(pbc).any())
