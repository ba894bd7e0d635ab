"""fastcg.nn modules against their e3nn twins: outputs, gradients, state_dicts, from_e3nn, and a
small model under TorchScript, torch.compile and torch.export."""

import random
import warnings

import pytest
import torch
from conftest import TP_CASES, assert_close, default_dtype

import fastcg
import fastcg.nn as fnn
from fastcg.irreps import o3 as _o3

o3 = _o3()  # imports e3nn (0.4.4 needs a torch.load flag on torch >= 2.6; fastcg sets it)
from e3nn import nn as e3nn_nn  # noqa: E402  (after o3(), see above)

DTYPES = [torch.float64, torch.float32]
MODES = ["uvw", "uvu", "uvv", "uuw", "uuu"]


def same_keys(ours: torch.nn.Module, ref: torch.nn.Module) -> bool:
    """Same state_dict keys as e3nn, less e3nn's generated-code constants (``_w3j_*``)."""
    return set(ours.state_dict()) == {k for k in ref.state_dict() if "_compiled_main" not in k}


def random_irreps(rng: random.Random, n: int, lmax: int = 2, max_mul: int = 3) -> list:
    """n blocks of random (mul, (l, p)), unsorted, mixed parity."""
    return [
        (rng.randint(1, max_mul), (rng.randint(0, lmax), rng.choice([1, -1]))) for _ in range(n)
    ]


def random_tp(mode: str, seed: int) -> tuple:
    """(irreps_in1, irreps_in2, irreps_out, instructions) valid for e3nn in ``mode``.

    Several paths share output blocks so that e3nn's path normalisation matters.
    """
    rng = random.Random(seed)
    ir1 = random_irreps(rng, 3)
    ir2 = random_irreps(rng, 3)
    if mode in ("uuw", "uuu"):  # needs mul1 == mul2
        ir2 = [(m, ir) for (m, _), (_, ir) in zip(ir1, ir2)]
    out, ins = [], []
    for i1, (m1, (l1, p1)) in enumerate(ir1):
        for i2, (m2, (l2, p2)) in enumerate(ir2):
            if mode in ("uuw", "uuu") and m1 != m2:
                continue
            for l3 in range(abs(l1 - l2), min(l1 + l2, 2) + 1):
                if rng.random() < 0.3:
                    continue
                mul = {"uvw": rng.randint(1, 3), "uvu": m1, "uvv": m2, "uuw": rng.randint(1, 3),
                       "uuu": m1}[mode]  # fmt: skip
                block = (mul, (l3, p1 * p2))
                if block in out and rng.random() < 0.7:  # share an output block
                    io = out.index(block)
                else:
                    io = len(out)
                    out.append(block)
                has_weight = mode in ("uvw", "uuw") or rng.random() < 0.7
                ins.append((i1, i2, io, mode, has_weight, rng.choice([1.0, 1.0, 0.5])))
    assert ins, "empty test case"
    return ir1, ir2, out, ins


def e3nn_tp(mode: str, seed: int, dtype: torch.dtype, **kwargs):
    ir1, ir2, out, ins = random_tp(mode, seed)
    torch.manual_seed(seed)
    with default_dtype(dtype):
        return o3.TensorProduct(ir1, ir2, out, ins, **kwargs)


# ---------------------------------------------------------------- tensor products


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shared", [True, False])
def test_tensor_product_matches_e3nn(mode, shared, dtype):
    seed = MODES.index(mode) + 10 * shared
    ref = e3nn_tp(mode, seed, dtype, shared_weights=shared)
    ir1, ir2, out, ins = random_tp(mode, seed)
    tp = fnn.TensorProduct(ir1, ir2, out, ins, shared_weights=shared).to(dtype)
    tp.load_state_dict(ref.state_dict(), strict=True)  # e3nn state_dict loads unchanged
    assert same_keys(tp, ref)
    assert [tuple(i) for i in tp.instructions] == [tuple(i) for i in ref.instructions]
    assert tp.weight_numel == ref.weight_numel and torch.equal(tp.output_mask, ref.output_mask)
    torch.manual_seed(0)
    x1 = torch.randn(13, ref.irreps_in1.dim, dtype=dtype)
    x2 = torch.randn(13, ref.irreps_in2.dim, dtype=dtype)
    w = None if shared else torch.randn(13, ref.weight_numel, dtype=dtype)
    assert_close(tp(x1, x2, w), ref(x1, x2, w))


@pytest.mark.parametrize("case", sorted(TP_CASES))
def test_tensor_product_cases_match_e3nn(case, backend, dtype):
    ir1, ir2, iro, ins, var1, var2, var_out = TP_CASES[case]
    kwargs = dict(in1_var=var1, in2_var=var2, out_var=var_out, shared_weights=False)
    with default_dtype(dtype):
        ref = o3.TensorProduct(ir1, ir2, iro, ins, **kwargs)
    tp = fnn.TensorProduct(ir1, ir2, iro, ins, **kwargs).to(dtype)
    tp.load_state_dict(ref.state_dict(), strict=True)
    assert torch.equal(tp.output_mask, ref.output_mask)
    x1 = torch.randn(5, ref.irreps_in1.dim, dtype=dtype)
    x2 = torch.randn(5, ref.irreps_in2.dim, dtype=dtype)
    w = torch.randn(5, ref.weight_numel, dtype=dtype)
    assert_close(tp(x1, x2, w), ref(x1, x2, w))


@pytest.mark.parametrize("mode", ["uvw", "uvu", "uuu"])
def test_tensor_product_gradients_match_e3nn(mode):
    ref = e3nn_tp(mode, 3, torch.float64, shared_weights=False)
    tp = fnn.TensorProduct.from_e3nn(ref)
    torch.manual_seed(1)
    inputs = [torch.randn(6, n, dtype=torch.float64, requires_grad=True)
              for n in (ref.irreps_in1.dim, ref.irreps_in2.dim, ref.weight_numel)]  # fmt: skip
    g = torch.randn(6, ref.irreps_out.dim, dtype=torch.float64)
    got = torch.autograd.grad(tp(*inputs), inputs, g)
    want = torch.autograd.grad(ref(*inputs), inputs, g)
    for a, b in zip(got, want):
        assert_close(a, b)


def test_tensor_product_internal_weight_gradient_and_batch_shapes():
    ref = e3nn_tp("uvw", 7, torch.float64)
    tp = fnn.TensorProduct.from_e3nn(ref)
    assert isinstance(tp.weight, torch.nn.Parameter) and tp.internal_weights
    torch.manual_seed(2)
    x1 = torch.randn(2, 3, ref.irreps_in1.dim, dtype=torch.float64)
    x2 = torch.randn(2, 3, ref.irreps_in2.dim, dtype=torch.float64)
    out, want = tp(x1, x2), ref(x1, x2)
    assert_close(out, want)
    out.square().sum().backward()
    want.square().sum().backward()
    assert_close(tp.weight.grad, ref.weight.grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_connected_and_elementwise(dtype):
    torch.manual_seed(3)
    with default_dtype(dtype):
        ref = o3.FullyConnectedTensorProduct(
            "2x0e+3x1o+1x2e", "1x0e+2x1o+1x1e", "3x0e+2x1o+1x1e+2x2e",
            irrep_normalization="norm", path_normalization="path",
        )  # fmt: skip
    tp = fnn.FullyConnectedTensorProduct(
        ref.irreps_in1,
        ref.irreps_in2,
        ref.irreps_out,
        irrep_normalization="norm",
        path_normalization="path",
    )
    tp = tp.to(dtype)
    assert isinstance(tp, fnn.TensorProduct)
    tp.load_state_dict(ref.state_dict(), strict=True)  # includes e3nn's _w3j codegen buffers
    x1 = torch.randn(9, ref.irreps_in1.dim, dtype=dtype)
    x2 = torch.randn(9, ref.irreps_in2.dim, dtype=dtype)
    assert_close(tp(x1, x2), ref(x1, x2))
    twin = fnn.FullyConnectedTensorProduct.from_e3nn(ref)
    assert type(twin) is fnn.FullyConnectedTensorProduct
    assert_close(twin(x1, x2), ref(x1, x2))
    with default_dtype(dtype):
        ew = o3.ElementwiseTensorProduct("3x1o+2x0e", "1x0e+4x1e", ["0e", "1e", "1o", "2o"])
    ours = fnn.ElementwiseTensorProduct("3x1o+2x0e", "1x0e+4x1e", ["0e", "1e", "1o", "2o"])
    assert ours.irreps_out == ew.irreps_out
    ours.to(dtype).load_state_dict(ew.state_dict(), strict=True)
    a, b = torch.randn(9, 11, dtype=dtype), torch.randn(9, 13, dtype=dtype)
    assert_close(ours(a, b), ew(a, b))


def test_tensor_product_options_and_weight_views():
    kwargs = dict(in1_var=[1.0, 2.0, 0.5], in2_var=[0.3, 1.0, 1.0], out_var=None,
                  irrep_normalization="norm", path_normalization="path")  # fmt: skip
    ir1, ir2, out, ins = random_tp("uvu", 5)
    kwargs["out_var"] = [1.5] * len(out)
    torch.manual_seed(5)
    with default_dtype(torch.float64):
        ref = o3.TensorProduct(ir1, ir2, out, ins, **kwargs)
    tp = fnn.TensorProduct(ir1, ir2, out, ins, **kwargs).double()
    tp.load_state_dict(ref.state_dict(), strict=True)
    x1, x2 = (
        torch.randn(4, ref.irreps_in1.dim).double(),
        torch.randn(4, ref.irreps_in2.dim).double(),
    )
    assert_close(tp(x1, x2), ref(x1, x2))
    views = list(tp.weight_views())
    assert [v.shape for v in views] == [v.shape for v in ref.weight_views()]
    assert_close(tp(x1, x2, views), ref(x1, x2))  # a list of per-instruction weights, as e3nn
    assert repr(tp).split("(")[1] == repr(ref).split("(")[1]
    with pytest.raises(RuntimeError, match="Weights must be provided"):
        fnn.TensorProduct(ir1, ir2, out, ins, shared_weights=False)(x1.float(), x2.float())


def test_module_keeps_float64_tables():
    tp = fnn.TensorProduct("1x1o", "1x1o", "1x1e", [(0, 0, 0, "uuu", True)])
    tp.float()
    assert tp._cg_value.dtype == torch.float64 and tp.weight.dtype == torch.float32
    tp.double()
    assert tp._cg_value.dtype == torch.float64 and tp.weight.dtype == torch.float64


# ---------------------------------------------------------------- linear


LINEARS = [
    ("4x0e+2x1o+1x0e", "3x0e+2x1o+1x2e", {}),
    ("4x0e+2x1o+1x0e", "3x0e+2x1o+1x0o", {"biases": True}),
    ("2x0e+3x1o+2x1o", "3x0e+2x1o", {"instructions": [(0, 0), (2, 1)], "biases": [True, False]}),
    ("2x0e+3x1o+2x1o", "3x0e+2x1o", {"path_normalization": "path"}),
    ("2x0e+3x1o", "3x0e+2x1o+1x2e", {"shared_weights": False}),
    ("0x0e+2x1o", "3x0e+2x1o", {}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(LINEARS)))
def test_linear_matches_e3nn(case, dtype):
    irreps_in, irreps_out, kwargs = LINEARS[case]
    torch.manual_seed(case)
    with default_dtype(dtype):
        ref = o3.Linear(irreps_in, irreps_out, **kwargs)
    if ref.bias.numel():
        with torch.no_grad():
            ref.bias.normal_()  # e3nn initialises biases to zero
    lin = fnn.Linear(irreps_in, irreps_out, **kwargs).to(dtype)
    lin.load_state_dict(ref.state_dict(), strict=True)
    assert same_keys(lin, ref)
    assert [tuple(i) for i in lin.instructions] == [tuple(i) for i in ref.instructions]
    assert (lin.weight_numel, lin.bias_numel) == (ref.weight_numel, ref.bias_numel)
    x = torch.randn(2, 5, ref.irreps_in.dim, dtype=dtype, requires_grad=True)
    w = None if lin.shared_weights else torch.randn(2, 5, ref.weight_numel, dtype=dtype)
    got, want = lin(x, w), ref(x, w)
    assert_close(got, want)
    twin = fnn.Linear.from_e3nn(ref)
    assert_close(twin(x, w), want)
    if dtype == torch.float64:
        g = torch.randn_like(want)
        assert_close(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0])


# ---------------------------------------------------------------- spherical harmonics


SH = [
    (3, True, "component", None),
    ([0, 2], True, "integral", None),
    ("1x0e+1x2e", False, "norm", None),
    ("1x1e+1x3e", True, "component", None),  # even odd-l output: pseudovector input, as e3nn
    ([2, 1, 4], True, "norm", "1e"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(SH)))
def test_spherical_harmonics_matches_e3nn(case, dtype):
    irreps_out, normalize, normalization, irreps_in = SH[case]
    ref = o3.SphericalHarmonics(irreps_out, normalize, normalization, irreps_in)
    sh = fnn.SphericalHarmonics(irreps_out, normalize, normalization, irreps_in)
    sh.load_state_dict(ref.state_dict(), strict=True)
    assert (sh.irreps_in, sh.irreps_out) == (ref.irreps_in, ref.irreps_out)
    torch.manual_seed(case)
    v = torch.randn(2, 7, 3, dtype=dtype)
    v[0, 0] = 0.0  # zero vector: finite, like e3nn's normalize
    got = sh(v)
    assert torch.isfinite(got).all()
    assert_close(got, ref(v))
    assert_close(fnn.SphericalHarmonics.from_e3nn(ref)(v), ref(v))
    if dtype == torch.float64:
        v = v[1].clone().requires_grad_()
        g = torch.randn(7, ref.irreps_out.dim, dtype=dtype)
        want = torch.autograd.grad(ref(v), v, g)[0]
        assert_close(torch.autograd.grad(sh(v), v, g)[0], want)


def test_spherical_harmonics_rejects_bad_parity():
    with pytest.raises(ValueError):
        fnn.SphericalHarmonics("1x1e", True, irreps_in="1o")
    with pytest.raises(ValueError):
        fnn.SphericalHarmonics([1], True, irreps_in="2x1o")


# ---------------------------------------------------------------- gate


def _softplus_shift(x):  # a plain Python activation (NequIP's shifted softplus)
    return torch.nn.functional.softplus(x) - 0.6931471805599453


GATES = [
    ("4x0e+2x0o", [torch.tanh, torch.tanh], "3x0e", [torch.sigmoid], "1x1o+2x2e"),
    ("16x0o", [torch.tanh], "32x0o", [torch.tanh], "16x1e+16x1o"),
    ("3x0e+2x0o", [torch.nn.functional.silu, torch.abs], "2x0e+1x0o",
     [torch.sigmoid, torch.tanh], "1x1o+1x2e+1x1e"),
    ("2x0e", [_softplus_shift], "1x0e+1x0e", [torch.nn.SiLU(), None], "1x2o+1x1e"),
    ("2x0e+1x0o", [None, torch.tanh], "", [], ""),
]  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(GATES)))
def test_gate_matches_e3nn(case, dtype):
    with default_dtype(dtype):
        ref = e3nn_nn.Gate(*GATES[case])
    gate = fnn.Gate(*GATES[case]).to(dtype)
    gate.load_state_dict(ref.state_dict(), strict=True)
    assert same_keys(gate, ref)
    assert (gate.irreps_in, gate.irreps_out) == (ref.irreps_in, ref.irreps_out)
    torch.manual_seed(case)
    x = torch.randn(3, 5, ref.irreps_in.dim, dtype=dtype, requires_grad=True)
    got, want = gate(x), ref(x)
    assert_close(got, want)
    assert_close(fnn.Gate.from_e3nn(ref)(x), want)
    if dtype == torch.float64:
        g = torch.randn_like(want)
        assert_close(torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0])


# ---------------------------------------------------------------- fully connected net

FC_CASES = [
    ([10, 64, 64, 64, 24], torch.nn.functional.silu, 1.0, 1.0, False),  # MACE's radial MLP
    ([8, 16, 5], torch.tanh, 2.0, 0.5, False),
    ([8, 16, 5], torch.sigmoid, 1.0, 3.0, True),  # activated last layer
    ([8, 16, 16, 5], None, 0.7, 1.0, False),
    ([6, 3], torch.nn.functional.silu, 1.0, 1.0, True),
]


@pytest.mark.parametrize("case", range(len(FC_CASES)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_connected_net_matches_e3nn(case, dtype):
    hs, act, var_in, var_out, out_act = FC_CASES[case]
    with default_dtype(dtype):
        ref = e3nn_nn.FullyConnectedNet(hs, act, var_in, var_out, out_act)
    ours = fnn.FullyConnectedNet.from_e3nn(ref)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    x = torch.randn(7, hs[0], dtype=dtype, requires_grad=True)
    assert_close(ours(x), ref(x))
    (gx,) = torch.autograd.grad(ours(x).square().sum(), x, create_graph=True)
    (gx_ref,) = torch.autograd.grad(ref(x).square().sum(), x, create_graph=True)
    assert_close(gx, gx_ref)
    mine = torch.autograd.grad(gx.square().sum(), list(ours.parameters()))
    theirs = torch.autograd.grad(gx_ref.square().sum(), list(ref.parameters()))
    for a, b in zip(mine, theirs):
        assert_close(a, b)
    fresh = fnn.FullyConnectedNet(hs, act, var_in, var_out, out_act).to(dtype)
    fresh.load_state_dict(ref.state_dict())  # e3nn's state_dict loads strictly
    assert_close(fresh(x), ref(x))
    assert_close(torch.jit.script(ours)(x), ref(x))


def test_fully_connected_net_unsupported_stays_e3nn():
    ref = e3nn_nn.FullyConnectedNet([4, 8, 2], torch.abs)
    with pytest.raises(NotImplementedError, match="activation"):
        fnn.FullyConnectedNet.from_e3nn(ref)
    assert type(fastcg.convert(torch.nn.Sequential(ref))[0]) is type(ref)
    with pytest.raises(ValueError, match="hs"):
        fnn.FullyConnectedNet([4])


# ---------------------------------------------------------------- convolution


def random_edges(num_nodes: int, num_edges: int, seed: int) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    dst = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    return src, dst  # unsorted, with repeats and self-loops


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["uvu", "uvw"])
@pytest.mark.parametrize("shared", [False, True])
def test_conv_matches_index_add_of_e3nn(mode, shared, dtype):
    ir1, ir2, out, ins = random_tp(mode, 20 + shared)
    torch.manual_seed(4)
    with default_dtype(dtype):
        ref = o3.TensorProduct(ir1, ir2, out, ins, shared_weights=shared)
    conv = fnn.TensorProductConv(ir1, ir2, out, ins, shared_weights=shared,
                                 internal_weights=shared).to(dtype)  # fmt: skip
    conv.load_state_dict(ref.state_dict(), strict=True)
    n, e = 7, 40
    src, dst = random_edges(n, e, seed=int(shared))
    x = torch.randn(n, ref.irreps_in1.dim, dtype=dtype, requires_grad=True)
    y = torch.randn(e, ref.irreps_in2.dim, dtype=dtype, requires_grad=True)
    w = None if shared else torch.randn(e, ref.weight_numel, dtype=dtype, requires_grad=True)
    got = conv(x, y, w, src, dst, n)
    msg = ref(x[src], y, w)
    want = msg.new_zeros(n, ref.irreps_out.dim).index_add_(0, dst, msg)
    assert_close(got, want)
    twin = fnn.TensorProductConv.from_e3nn(ref)
    assert_close(twin(x, y, w, src, dst, n), want)
    if dtype == torch.float64:
        inputs = [t for t in (x, y, w) if t is not None]
        g = torch.randn_like(want)
        for a, b in zip(torch.autograd.grad(got, inputs, g), torch.autograd.grad(want, inputs, g)):
            assert_close(a, b)


def test_conv_defaults_and_no_edges():
    conv = fnn.TensorProductConv("2x0e+1x1o", "1x0e+1x1o", "2x0e+2x1o",
                                 [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True)])  # fmt: skip
    assert not conv.shared_weights and not conv.internal_weights and conv.weight.numel() == 0
    empty = torch.zeros(0, dtype=torch.long)
    out = conv(torch.randn(3, 5), torch.randn(0, 4), torch.randn(0, conv.weight_numel), empty,
               empty, 3)  # fmt: skip
    assert out.shape == (3, 8) and not out.any()


# ---------------------------------------------------------------- script / compile / export


class SmallModel(torch.nn.Module):
    """SH edge attributes -> conv -> linear -> gate -> linear, built only from fastcg.nn."""

    def __init__(self) -> None:
        super().__init__()
        self.sh = fnn.SphericalHarmonics([0, 1, 2], True, "component")
        self.embed = fnn.Linear("3x0e", "4x0e")
        self.weights = torch.nn.Linear(1, 12)
        self.conv = fnn.TensorProductConv(
            "4x0e",
            self.sh.irreps_out,
            "4x0e+4x1o+4x2e",
            [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True), (0, 2, 2, "uvu", True)],
        )
        gates = [torch.sigmoid, torch.tanh]
        self.gate = fnn.Gate("2x0e", [torch.nn.functional.silu], "2x0e+2x0e", gates, "2x1o+2x2e")
        self.mix = fnn.Linear("4x0e+4x1o+4x2e", self.gate.irreps_in)
        self.tp = fnn.FullyConnectedTensorProduct(self.gate.irreps_out, "1x0e", "2x0e+1x1o")
        self.out = fnn.Linear("2x0e+1x1o", "1x0e", biases=True)

    def forward(self, species: torch.Tensor, pos: torch.Tensor, src: torch.Tensor,
                dst: torch.Tensor) -> torch.Tensor:  # fmt: skip
        vec = pos[src] - pos[dst]
        y = self.sh(vec)
        w = self.weights(vec.square().sum(dim=-1, keepdim=True))
        h = self.embed(species)
        h = self.conv(h, y, w, src, dst, pos.shape[0])
        h = self.gate(self.mix(h))
        h = self.tp(h, torch.ones_like(h[:, :1]))
        return self.out(h).sum()


def _model_inputs():
    torch.manual_seed(6)
    species = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 1, 0]), 3).double()
    pos = torch.randn(5, 3, dtype=torch.float64)
    src, dst = random_edges(5, 14, seed=6)
    keep = src != dst
    return species, pos, src[keep], dst[keep]


def test_small_model_script_compile_export():
    model = SmallModel().double()
    with torch.no_grad():
        model.out.bias.normal_()
    args = _model_inputs()
    want = model(*args)
    pos = args[1].clone().requires_grad_()
    want_force = torch.autograd.grad(model(args[0], pos, *args[2:]), pos)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated in torch >= 2.10
        scripted = torch.jit.script(model)
    assert_close(scripted(*args), want)
    assert_close(torch.autograd.grad(scripted(args[0], pos, *args[2:]), pos)[0], want_force)
    compiled = torch.compile(model, fullgraph=True)
    assert_close(compiled(*args), want)
    exported = torch.export.export(model, args)
    assert_close(exported.module()(*args), want)


# ---------------------------------------------------------------- convert


class E3nnBlock(torch.nn.Module):
    """A small e3nn model: linear -> gate -> fully connected TP with SH, plus an Activation."""

    def __init__(self) -> None:
        super().__init__()
        gate = e3nn_nn.Gate("4x0e", [torch.tanh], "2x0e", [torch.sigmoid], "1x1o+1x2e")
        self.layers = torch.nn.ModuleList([o3.Linear("3x0e+2x1o", gate.irreps_in), gate])
        self.sh = o3.SphericalHarmonics([0, 1, 2], True)
        self.tp = o3.FullyConnectedTensorProduct(gate.irreps_out, self.sh.irreps_out, "3x0e+1x1o")
        self.act = e3nn_nn.Activation("3x0e+1x1o", [torch.abs, None])
        self.mlp = e3nn_nn.FullyConnectedNet([3, 8, 3], torch.nn.functional.silu)

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.act(self.tp(x, self.sh(vec))) * self.mlp(vec).sum(-1, keepdim=True)


def test_convert_swaps_e3nn_modules():
    with default_dtype(torch.float64):
        torch.manual_seed(8)
        model = E3nnBlock()
    x, vec = torch.randn(6, 9, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    want = model(x, vec)
    want_grads = _force_loss_grads(model, x, vec)
    model = fastcg.convert(model)
    kinds = [type(m) for m in model.modules()]
    for cls in (fnn.Linear, fnn.Gate, fnn.SphericalHarmonics, fnn.FullyConnectedTensorProduct,
                fnn.Activation, fnn.FullyConnectedNet):  # fmt: skip
        assert cls in kinds
    assert not any(type(m).__module__.startswith("e3nn.") for m in model.modules())
    assert_close(model(x, vec), want)
    got_grads = _force_loss_grads(model, x, vec)  # double backward, as in force training
    assert got_grads.keys() == want_grads.keys()
    for name, g in got_grads.items():
        assert_close(g, want_grads[name])


def _force_loss_grads(model: torch.nn.Module, x: torch.Tensor, vec: torch.Tensor) -> dict:
    """Gradients of |d sum(out) / d vec|^2 with respect to the parameters."""
    vec = vec.clone().requires_grad_()
    (force,) = torch.autograd.grad(model(x, vec).sum(), vec, create_graph=True)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(force.square().sum(), list(params.values()))
    return dict(zip(params, grads))


def test_e3nn_jit_compile_scripts_fastcg_modules():
    from e3nn.util.jit import compile as e3nn_compile

    model = torch.nn.Sequential(
        fnn.Linear("3x0e+1x1o", "2x0e+2x1o"), fnn.SphericalHarmonics(2, True)
    )
    x = torch.randn(4, 6)
    want = model[1](model[0](x)[:, 2:5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = e3nn_compile(model)
    assert all(isinstance(m, torch.jit.ScriptModule) for m in compiled)
    assert_close(compiled[1](compiled[0](x)[:, 2:5]), want)


def test_linear_silu_saves_less_and_differentiates_twice():
    from fastcg.nn.fc import _LinearSiLU

    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_LinearSiLU.apply, (x, w))
    assert torch.autograd.gradgradcheck(_LinearSiLU.apply, (x, w))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: saved.append(t.shape) or t, lambda t: t
    ):
        _LinearSiLU.apply(x, w)
    assert saved == [x.shape, w.shape]  # not the [6, 3] pre-activation
