"""fastcg's SymmetricContraction and SpeciesLinear against mace-torch's product basis and skip
tensor product: same outputs (1e-10 in float64) and gradients. mace is imported inside the tests,
so this module collects (and is skipped by conftest) without mace-torch."""

import contextlib
import warnings

import pytest
import torch

from fastcg.irreps import o3
from fastcg.nn.species_linear import SpeciesLinear
from fastcg.nn.symmetric_contraction import SymmetricContraction
from fastcg.ops.symmetric_contraction import coupling_tensors
from fastcg.testing import assert_close as close
from fastcg.testing import default_dtype

F64 = torch.float64


@contextlib.contextmanager
def mace_build(dtype):
    """Build mace-torch modules under ``dtype``, their construction warnings silenced."""
    with default_dtype(dtype), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def mace_sc(irreps_in, irreps_out, correlation, elements, dtype=F64):
    from mace.modules.symmetric_contraction import SymmetricContraction as MaceSC

    torch.manual_seed(0)
    with mace_build(dtype):
        return MaceSC(o3().Irreps(irreps_in), o3().Irreps(irreps_out), correlation,
                      num_elements=elements)  # fmt: skip


def mace_inputs(sc, n=11, dtype=F64):
    c, d = sc.irreps_in.count((0, 1)), sum(ir.dim for _, ir in sc.irreps_in)
    elements = sc.contractions[0].weights_max.shape[0]
    x = torch.randn(n, c, d, dtype=dtype, requires_grad=True)
    species = torch.randint(0, elements, (n,))
    return x, torch.nn.functional.one_hot(species, elements).to(dtype)


SC_CASES = [
    ("8x0e+8x1o+8x2e+8x3o", "8x0e+8x1o", 3, 3),  # MACE's default product basis
    ("5x0e+5x1o+5x2e", "5x0e+5x1o+5x2e", 2, 2),
    ("3x0e+3x1o", "3x0e", 1, 1),
    ("4x0e+4x1o", "4x0e+4x1o", 4, 2),
]


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", SC_CASES, ids=lambda c: f"{c[0]}->{c[1]}-corr{c[2]}")
def test_from_mace(case, dtype):
    mace = mace_sc(*case, dtype=dtype)
    ours = SymmetricContraction.from_mace(mace)
    # mace-torch's parameters and persistent buffers, under mace-torch's names
    assert ours.state_dict().keys() == mace.state_dict().keys()
    for (name, p), (name_m, p_m) in zip(ours.named_parameters(), mace.named_parameters()):
        assert name == name_m and p.dtype == dtype and torch.equal(p, p_m)
    x, y = mace_inputs(mace, dtype=dtype)
    expected, out = mace(x, y), ours(x, y)
    close(out, expected, dtype)
    g = torch.randn_like(out)
    grads_m = torch.autograd.grad(expected, [x, *mace.parameters()], g, allow_unused=True)
    grads = torch.autograd.grad(out, [x, *ours.parameters()], g, allow_unused=True)
    assert len(grads) == len(grads_m) > 1
    for a, b in zip(grads, grads_m):
        if b is None:  # a correlation order whose coupling is zero
            assert a is None or not a.any()
        else:
            close(a, b, dtype)


def test_from_mace_rejects_attributes_that_are_not_one_hot():
    mace = mace_sc("3x0e+3x1o", "3x0e", 2, 2)
    ours = SymmetricContraction.from_mace(mace)
    x, y = mace_inputs(mace, n=4)
    with pytest.raises(RuntimeError, match="one-hot"):
        ours(x, 0.5 * y)


def test_from_mace_loads_a_mace_state_dict_and_scripts():
    mace = mace_sc("4x0e+4x1o+4x2e", "4x0e+4x1o", 3, 2)
    ours = SymmetricContraction.from_mace(mace)
    with torch.no_grad():
        for p in mace.parameters():
            p.add_(1.0)
    ours.load_state_dict(mace.state_dict())
    x, y = mace_inputs(mace, n=5)
    close(ours(x, y), mace(x, y), F64)
    close(torch.jit.script(ours)(x, y), mace(x, y), F64)


def test_from_mace_in_product_block():
    """mace-torch's EquivariantProductBasisBlock with its contraction swapped: same output."""
    from mace.modules.blocks import EquivariantProductBasisBlock

    torch.manual_seed(0)
    with mace_build(F64):
        block = EquivariantProductBasisBlock(
            o3().Irreps("6x0e+6x1o+6x2e"), o3().Irreps("6x0e+6x1o"), correlation=3, use_sc=True,
            num_elements=4,
        )  # fmt: skip
    x, attrs = mace_inputs(block.symmetric_contractions, n=9)
    sc = torch.randn(9, 24, dtype=F64)
    expected = block(x, sc, attrs)
    block.symmetric_contractions = SymmetricContraction.from_mace(block.symmetric_contractions)
    close(block(x, sc, attrs), expected, F64)


@pytest.mark.parametrize("correlation", [1, 2, 3])
def test_coupling_tensors_match_mace(correlation):
    """fastcg's own U (no mace needed at run time) equals mace-torch's U_matrix_real."""
    from mace.tools.cg import U_matrix_real

    irreps = "0e+1o+2e"
    for ir_out in ("0e", "1o", "2e", "1e"):
        ours = coupling_tensors(irreps, ir_out, correlation)[-1]
        theirs = U_matrix_real(irreps, ir_out, correlation, dtype=F64, use_cueq_cg=False)[-1]
        close(ours.reshape(theirs.shape), theirs, F64)


def test_init_like_mace():
    """Constructed (not converted): the weight shape mace-torch would have, concatenated."""
    mace = mace_sc("4x0e+4x1o+4x2e", "4x0e+4x1o", 3, 5)
    ours = SymmetricContraction("4x0e+4x1o+4x2e", "4x0e+4x1o", 3, num_elements=5)
    numel = sum(p.shape[1] for p in mace.parameters())
    assert tuple(ours.weight.shape) == (5, numel, 4)


def skip_tp(irreps_in, elements, irreps_out, dtype=F64):
    from mace.modules.wrapper_ops import FullyConnectedTensorProduct

    torch.manual_seed(0)
    with mace_build(dtype):
        return FullyConnectedTensorProduct(
            o3().Irreps(irreps_in), o3().Irreps(f"{elements}x0e"), o3().Irreps(irreps_out),
            cueq_config=None,
        )  # fmt: skip


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize(
    "irreps",
    [("8x0e+8x1o+4x2e", 3, "6x0e+6x1o+2x2e"), ("5x0e+5x1o", 1, "7x0e+2x0e+3x1o+1x2e")],
    ids=str,
)
def test_species_linear_from_skip_tp(irreps, dtype):
    irreps_in, elements, irreps_out = irreps
    tp = skip_tp(irreps_in, elements, irreps_out, dtype)
    lin = SpeciesLinear.from_skip_tp(tp)
    assert lin.weight.dtype == dtype and torch.equal(lin.weight, tp.weight)
    assert lin.state_dict().keys() == tp.state_dict().keys()
    x = torch.randn(13, o3().Irreps(irreps_in).dim, dtype=dtype, requires_grad=True)
    species = torch.randint(0, elements, (13,))
    attrs = torch.nn.functional.one_hot(species, elements).to(dtype)
    expected, out = tp(x, attrs), lin(x, attrs)
    close(out, expected, dtype)
    close(lin(x, species), expected, dtype)
    g = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, [x, lin.weight], g)
    gx_e, gw_e = torch.autograd.grad(expected, [x, tp.weight], g)
    close(gx, gx_e, dtype)
    close(gw, gw_e, dtype)


def test_species_linear_of_mace_block():
    """The skip_tp of a real mace-torch interaction block."""
    from mace.modules.blocks import RealAgnosticResidualInteractionBlock

    torch.manual_seed(0)
    with mace_build(F64):
        block = RealAgnosticResidualInteractionBlock(
            node_attrs_irreps=o3().Irreps("3x0e"), node_feats_irreps=o3().Irreps("8x0e+8x1o"),
            edge_attrs_irreps=o3().Irreps("0e+1o+2e"), edge_feats_irreps=o3().Irreps("4x0e"),
            target_irreps=o3().Irreps("8x0e+8x1o+8x2e"), hidden_irreps=o3().Irreps("8x0e+8x1o"),
            avg_num_neighbors=3.0,
        )  # fmt: skip
    lin = SpeciesLinear.from_skip_tp(block.skip_tp)
    x = torch.randn(6, 32, dtype=F64)
    attrs = torch.nn.functional.one_hot(torch.randint(0, 3, (6,)), 3).to(F64)
    close(lin(x, attrs), block.skip_tp(x, attrs), F64)
