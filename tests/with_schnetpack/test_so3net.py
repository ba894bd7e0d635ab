"""fastcg's SO3Net against SchNetPack 2.2's SO3net (same weights): energies, forces and
training gradients in float64 and float32, ``fastcg.convert`` and the calculator hook.

SchNetPack keeps constants in float32 even in a float64 model (its Clebsch-Gordan coefficients
are built in complex64; radial centres, widths and cutoff are float32 buffers; the m = 0 factor
of its spherical harmonics is a float32 ``torch.ones``). For the float64 comparison the
SchNetPack model gets them recomputed exactly (``exact_constants``) and runs under a float64
default dtype; fastcg's are float64 by construction.
"""

import numpy as np
import pytest
import torch

spk = pytest.importorskip("schnetpack")

import schnetpack.nn.ops.so3 as spk_so3  # noqa: E402
import schnetpack.properties as P  # noqa: E402

import fastcg  # noqa: E402
from fastcg.calculator import neighbour_list  # noqa: E402
from fastcg.models import SO3Net  # noqa: E402
from fastcg.testing import default_dtype  # noqa: E402

ZS = [1, 6, 8]
CUTOFF = 3.5


def schnetpack_model(features=4, interactions=2, lmax=2, n_rbf=6, rbf="gaussian", seed=0,
                     shared=False):  # fmt: skip
    """A SchNetPack SO3net potential with every weight random (biases included)."""
    torch.manual_seed(seed)
    with default_dtype(torch.float32):  # SchNetPack builds its CG coefficients in complex64
        basis = (spk.nn.GaussianRBF(n_rbf, CUTOFF, start=0.5) if rbf == "gaussian"
                 else spk.nn.BesselRBF(n_rbf, CUTOFF))  # fmt: skip
        rep = spk.representation.SO3net(
            n_atom_basis=features, n_interactions=interactions, lmax=lmax, radial_basis=basis,
            cutoff_fn=spk.nn.CosineCutoff(CUTOFF), shared_interactions=shared,
        )  # fmt: skip
        nnp = spk.model.NeuralNetworkPotential(
            representation=rep,
            input_modules=[spk.atomistic.PairwiseDistances()],
            output_modules=[spk.atomistic.Atomwise(features, output_key="energy"),
                            spk.atomistic.Forces(energy_key="energy", force_key="forces")],
        )  # fmt: skip
    with torch.no_grad():
        for p in nnp.parameters():
            p.copy_(torch.randn_like(p) * 0.6)
    return nnp


def exact_constants(nnp):
    """SchNetPack's float32-rounded constants recomputed in float64 (float64 model)."""
    rep = nnp.representation
    lmax = int(rep.lmax)
    with default_dtype(torch.float64):
        rep.sphharm = spk.nn.so3.RealSphericalHarmonics(lmax, dtype_str="float64")
        # generate_clebsch_gordan_rsh in complex128 (SchNetPack's goes through complex64)
        cg = spk_so3.generate_clebsch_gordan.__wrapped__(lmax).to(torch.complex128)
        u = spk_so3.generate_sh_to_rsh.__wrapped__(lmax).to(torch.complex128)
    cg = torch.einsum("ijk,mi,nj,ok->mno", cg, u, u, u.conj())
    lidx, _ = spk_so3.sh_indices(lmax)
    parity = (-1.0) ** lidx
    cg = cg * (parity[:, None, None] * parity[None, :, None] == parity[None, None, :])
    cg, i1, i2, io = spk_so3.sparsify_clebsch_gordon(cg.real.to(torch.float64))
    for m in [*rep.so3convs, rep.so3product]:
        m.clebsch_gordan, m.idx_in_1, m.idx_in_2, m.idx_out = cg, i1, i2, io
        if hasattr(m, "Widx"):
            m.Widx = lidx[i1]
    basis = rep.radial_basis
    if hasattr(basis, "offsets"):
        off = torch.linspace(0.5, CUTOFF, basis.n_rbf, dtype=torch.float64)
        basis.offsets = off
        basis.widths = torch.full_like(off, float(off[1] - off[0]))
    else:
        basis.freqs = torch.arange(1, basis.n_rbf + 1, dtype=torch.float64) * np.pi / CUTOFF
    rep.cutoff_fn.cutoff = torch.tensor([CUTOFF], dtype=torch.float64)
    rep.cutoff = rep.cutoff_fn.cutoff


def molecule(n=10, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, 3, generator=gen, dtype=torch.float64) * 1.3
    numbers = torch.tensor((ZS * n)[:n])
    src, dst, _ = neighbour_list(pos.numpy(), np.zeros((3, 3)), np.zeros(3, bool), CUTOFF)
    src, dst = torch.from_numpy(src), torch.from_numpy(dst)
    return pos.to(dtype), numbers, src, dst, torch.zeros(len(src), 3, dtype=dtype)


def copper(dtype=torch.float64):
    """Rattled 2x2x2 fcc Cu (32 atoms), periodic."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.1, seed=1)
    cell = atoms.cell.array
    src, dst, s = neighbour_list(atoms.positions, cell, atoms.pbc, CUTOFF)
    shifts = torch.from_numpy(s @ cell).to(dtype)
    pos = torch.from_numpy(atoms.positions).to(dtype)
    numbers, src, dst = (torch.from_numpy(a) for a in (atoms.numbers, src, dst))
    return pos, numbers, src, dst, shifts


def spk_energy_forces(nnp, pos, numbers, src, dst, shifts):
    """SchNetPack's energy and forces; its edges: idx_i receives (dst), idx_j sends (src)."""
    n = pos.shape[0]
    inputs = {
        P.Z: numbers, P.R: pos.detach().clone(), P.idx_i: dst, P.idx_j: src, P.offsets: shifts,
        P.n_atoms: torch.tensor([n]), P.idx_m: torch.zeros(n, dtype=torch.long),
        P.cell: torch.zeros(1, 3, 3, dtype=pos.dtype), P.pbc: torch.zeros(1, 3, dtype=torch.bool),
    }  # fmt: skip
    with default_dtype(pos.dtype):  # its m = 0 harmonic is a torch.ones in the default dtype
        out = nnp(inputs)
    return out["energy"].sum(), out["forces"]


def fastcg_energy_forces(model, pos, numbers, src, dst, shifts, create_graph=False):
    p = pos.detach().clone().requires_grad_(True)
    e = model(p, numbers, src, dst, shifts, torch.zeros(3, 3, dtype=pos.dtype))
    (g,) = torch.autograd.grad(e, p, create_graph=create_graph)
    return e, -g


def pair(dtype, **kwargs):
    nnp = schnetpack_model(**kwargs).to(dtype)
    if dtype == torch.float64:
        exact_constants(nnp)
    return nnp, SO3Net.from_schnetpack(nnp, atomic_numbers=ZS + [29])


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("system", [molecule, copper])
@pytest.mark.parametrize("kwargs", [{}, {"rbf": "bessel", "lmax": 3, "shared": True}])
def test_float64_energy_forces(system, kwargs):
    nnp, model = pair(torch.float64, **kwargs)
    args = system()
    e_ref, f_ref = spk_energy_forces(nnp.eval(), *args)
    e, f = fastcg_energy_forces(model, *args)
    assert rel(e, e_ref) < 1e-12 and rel(f, f_ref) < 1e-10, (rel(e, e_ref), rel(f, f_ref))
    assert f_ref.abs().max() > 1e-3  # a real test: the forces are not zero


def test_float32_energy_forces():
    nnp, model = pair(torch.float32)
    args = copper(torch.float32)
    e_ref, f_ref = spk_energy_forces(nnp.eval(), *args)
    e, f = fastcg_energy_forces(model, *args)
    assert rel(e, e_ref) < 2e-5 and rel(f, f_ref) < 2e-4, (rel(e, e_ref), rel(f, f_ref))


def test_training_gradients_float64():
    """d(E^2 + |F|^2)/d(parameters): force training differentiates twice."""
    nnp, model = pair(torch.float64)
    args = molecule()
    nnp.train()  # SchNetPack's Forces keeps the graph only in training mode
    e_ref, f_ref = spk_energy_forces(nnp, *args)
    (e_ref**2 + (f_ref**2).sum()).backward()
    e, f = fastcg_energy_forces(model, *args, create_graph=True)
    (e**2 + (f**2).sum()).backward()
    rep, zs = nnp.representation, torch.tensor(ZS + [29])
    pairs = [(model.embedding.weight, rep.embedding.weight.grad[zs])]
    for i, b in enumerate(model.interactions):
        c, g = rep.so3convs[i], rep.gatings[i]
        pairs += [
            (b.filter.weight, c.filternet.weight.grad),
            (b.filter.bias, c.filternet.bias.grad),
            (b.mixing1.weight, rep.mixings1[i].weight.grad),
            (b.mixing2.weight, rep.mixings2[i].weight.grad),
            (b.mixing3.weight, rep.mixings3[i].weight.grad),
            (b.gating.weight, g.scaling.weight.grad),
            (b.gating.bias, g.scaling.bias.grad),
        ]
    dense = list(nnp.output_modules[0].outnet)
    mine = [m for m in model.readout if isinstance(m, torch.nn.Linear)]
    pairs += [(a.weight, d.weight.grad) for a, d in zip(mine, dense)]
    pairs += [(a.bias, d.bias.grad) for a, d in zip(mine, dense)]
    for p, g in pairs:
        assert g.abs().max() > 0
        assert rel(p.grad, g) < 1e-10, rel(p.grad, g)


def test_convert_and_calculator_hook():
    """``fastcg.convert`` keeps a SchNetPack model as it is (no e3nn inside) and says so; the
    calculator's hook (``fastcg.integrations.as_model``) runs it as fastcg's SO3Net."""
    from ase.build import bulk

    from fastcg.calculator import FastCGCalculator
    from fastcg.integrations import FRAMEWORKS, as_model

    assert "schnetpack" in FRAMEWORKS
    nnp = schnetpack_model().double()
    exact_constants(nnp)
    with pytest.warns(UserWarning, match="from_schnetpack"):
        converted = fastcg.convert(nnp)
    assert isinstance(as_model(converted), SO3Net)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.1, seed=1)  # copper()'s structure
    atoms.calc = FastCGCalculator(nnp, dtype=torch.float64)
    e_ref, f_ref = (t.detach() for t in spk_energy_forces(nnp.eval(), *copper()))
    assert abs(atoms.get_potential_energy() - float(e_ref)) < 1e-10 * abs(float(e_ref))
    assert np.abs(atoms.get_forces() - f_ref.detach().numpy()).max() < 1e-9


def test_unsupported_raise():
    nnp = schnetpack_model()
    nnp.output_modules[0].aggregation_mode = "avg"
    with pytest.raises(ValueError, match="Atomwise"):
        SO3Net.from_schnetpack(nnp)
    nnp = schnetpack_model()
    nnp.representation.radial_basis = spk.nn.GaussianRBF(6, CUTOFF, trainable=True)
    with pytest.raises(ValueError, match="trainable"):
        SO3Net.from_schnetpack(nnp)
    with pytest.raises(ValueError, match="SO3net"):
        SO3Net.from_schnetpack(torch.nn.Linear(2, 2))


def test_energy_offsets_postprocessor():
    """SchNetPack's AddOffsets (mean per atom and atom references) become per-species energies."""
    nnp = schnetpack_model()
    atomrefs = torch.zeros(100)
    atomrefs[torch.tensor(ZS)] = torch.tensor([-0.5, -37.8, -75.1])
    nnp.postprocessors = torch.nn.ModuleList(
        [
            spk.transform.CastTo64(),
            spk.transform.AddOffsets(
                "energy", add_mean=True, add_atomrefs=True, atomrefs=atomrefs,
                property_mean=torch.tensor([0.25]),
            ),
        ]
    )  # fmt: skip
    nnp = nnp.double()
    exact_constants(nnp)
    model = SO3Net.from_schnetpack(nnp, atomic_numbers=ZS)
    args = molecule()
    e_ref, f_ref = spk_energy_forces(nnp.eval(), *args)
    e, f = fastcg_energy_forces(model, *args)
    assert rel(e, e_ref) < 1e-12 and rel(f, f_ref) < 1e-10
    assert float(model.atomic_energies[1]) == pytest.approx(-37.8 + 0.25, abs=1e-5)
