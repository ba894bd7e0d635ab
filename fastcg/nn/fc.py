"""``e3nn.nn.FullyConnectedNet`` with its constant factors folded into the weights.

e3nn scales each layer's weight by ``1/sqrt(fan_in)``, multiplies the activation by its
second-moment constant (``normalize2mom``) and the output by ``sqrt(var_out)``: two elementwise
passes over every ``[E, hidden]`` activation, forward and backward, on every edge. Here those
constants multiply the next layer's (small) weight matrix instead, so each layer is one matmul and
one activation. In MACE's radial MLPs (36,874 edges, [10, 64, 64, 64, wn]) that drops 23 full
passes over ``[E, 64]`` tensors per energy + forces call.
"""

import functools
from collections.abc import Callable

import torch
from torch import Tensor

# Activations a folded net can call (scriptable modules); others keep e3nn's module.
_ACTIVATIONS: dict[Callable, Callable[[], torch.nn.Module]] = {
    torch.nn.functional.silu: torch.nn.SiLU,
    torch.tanh: torch.nn.Tanh,
    torch.sigmoid: torch.nn.Sigmoid,
    torch.relu: torch.nn.ReLU,
    torch.nn.functional.relu: torch.nn.ReLU,
    torch.nn.functional.gelu: torch.nn.GELU,
}


class _LinearSiLU(torch.autograd.Function):
    """``silu(x @ w)`` that saves only ``x`` and ``w``: the backward recomputes ``x @ w`` (a
    [E, 64] x [64, 64] matmul) instead of autograd keeping the [E, hidden] pre-activation as
    well, half of what a radial MLP keeps for the backward. The backward is made of
    differentiable ops, so double backward (training on forces) works."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(x, w)
        return torch.nn.functional.silu(x @ w)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, w = ctx.saved_tensors
        z = x @ w
        if torch.is_grad_enabled():  # create_graph: differentiable ops (double backward)
            s = torch.sigmoid(z)
            dz = g * (s * (1 + z * (1 - s)))  # silu'(z) = s + z s (1 - s)
        else:  # one fused kernel (aten's silu_backward has no derivative of its own)
            dz = torch.ops.aten.silu_backward(g, z)
        gx = dz @ w.t() if ctx.needs_input_grad[0] else None
        gw = x.t() @ dz if ctx.needs_input_grad[1] else None
        return gx, gw


@torch.jit.unused
def _linear_silu(x: Tensor, w: Tensor) -> Tensor:
    return _LinearSiLU.apply(x, w)


class _Layer(torch.nn.Module):
    """``act(x @ (weight * scale)) * post``: ``weight`` is e3nn's parameter (same name, shape)."""

    scale: float
    post: float
    deferred: bool
    silu: bool

    def __init__(self, h_in: int, h_out: int, act: torch.nn.Module, scale: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(h_in, h_out))
        self.act, self.scale, self.post = act, float(scale), 1.0
        self.deferred = False  # applied by a fused op instead (FullyConnectedNet.defer_last)
        self.silu = isinstance(act, torch.nn.SiLU)

    def matrix(self) -> Tensor:
        """The matrix this (linear) layer multiplies by: ``weight * scale``."""
        return self.weight * self.scale

    def forward(self, x: Tensor) -> Tensor:
        if self.deferred:
            return x
        if self.silu and not torch.jit.is_scripting():
            x = _linear_silu(x, self.matrix())
        else:
            x = self.act(x @ self.matrix())
        return x * self.post if self.post != 1.0 else x


class FullyConnectedNet(torch.nn.Sequential):
    """``e3nn.nn.FullyConnectedNet(hs, act, variance_in, variance_out, out_act)``: same outputs,
    same ``layer{i}.weight`` parameters (an e3nn state_dict loads unchanged).

    >>> net = FullyConnectedNet([10, 64, 8], torch.nn.functional.silu)
    >>> net(torch.randn(5, 10)).shape
    torch.Size([5, 8])
    """

    def __init__(
        self, hs: list[int], act: Callable | None = None, variance_in: float = 1.0,
        variance_out: float = 1.0, out_act: bool = False,
    ) -> None:  # fmt: skip
        super().__init__()
        if len(hs) < 2:
            raise ValueError(f"hs needs an input and an output size, got {list(hs)}")
        if act is not None and act not in _ACTIVATIONS:
            raise NotImplementedError(f"activation {act} (supported: silu, tanh, sigmoid, ...)")
        self.hs = list(hs)
        cst = second_moment_constant(act) if act is not None else 1.0
        carry, var_in = 1.0, float(variance_in)
        for i, (h1, h2) in enumerate(zip(self.hs, self.hs[1:])):
            last = i == len(self.hs) - 2
            var_out = float(variance_out) if last else 1.0
            if act is not None and (out_act or not last):
                # e3nn: act(x @ W / sqrt(h1 var_in)) * cst * sqrt(var_out); the factor after the
                # activation moves into the next layer's weight
                layer = _Layer(h1, h2, _ACTIVATIONS[act](), carry / (h1 * var_in) ** 0.5)
                carry = cst * var_out**0.5
            else:  # e3nn: x @ W / sqrt(h1 var_in / var_out)
                layer = _Layer(h1, h2, torch.nn.Identity(), carry / (h1 * var_in / var_out) ** 0.5)
                carry = 1.0
            self.add_module(f"layer{i}", layer)
            var_in = var_out
        layer.post = carry  # an activated last layer has no next weight to take its factor

    def defer_last(self) -> _Layer:
        """From now on return the last hidden layer and leave the last, linear layer (returned)
        to the op that consumes the output: :func:`fastcg.ops.conv_radial` applies it per chunk
        of edges, so the ``[E, weight_numel]`` output is never formed. The parameter stays
        where it is (same ``state_dict``)."""
        layer = self[len(self) - 1]
        if not isinstance(layer.act, torch.nn.Identity) or layer.post != 1.0:
            raise ValueError("only a net whose last layer is linear can defer it")
        layer.deferred = True
        return layer

    @classmethod
    def from_e3nn(cls, module: torch.nn.Module) -> "FullyConnectedNet":
        """Twin of an ``e3nn.nn.FullyConnectedNet`` (weights copied, same dtype and device)."""
        theirs = [getattr(module, f"layer{i}") for i in range(len(module.hs) - 1)]
        acts = [layer.act for layer in theirs]
        act = next((a for a in acts if a is not None), None)
        # e3nn puts one activation on every layer but (unless out_act) the last
        if any(a is not act for a in acts[:-1]) or acts[-1] not in (None, act):
            raise NotImplementedError("a FullyConnectedNet with mixed activations")
        f = getattr(act, "f", act)
        if act is not None and abs(_e3nn_constant(act) - second_moment_constant(f)) > 1e-12:
            raise NotImplementedError("e3nn's normalize2mom constant differs from ours")
        twin = cls(module.hs, f, theirs[0].var_in, theirs[-1].var_out, acts[-1] is not None)
        w = theirs[0].weight
        twin.to(dtype=w.dtype, device=w.device)
        with torch.no_grad():
            for mine, layer in zip(twin, theirs):
                mine.weight.copy_(layer.weight)
        return twin


def _e3nn_constant(act: torch.nn.Module) -> float:
    return 1.0 if getattr(act, "_is_id", True) else float(act.cst)


@functools.cache
def second_moment_constant(f: Callable) -> float:
    """e3nn's ``normalize2mom`` constant ``<f(z)^2>^(-1/2)`` for z ~ N(0, 1) (its estimate: a
    million float64 samples from a generator seeded 0), or 1 when within 1e-4 of 1."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    z = torch.randn(1_000_000, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        cst = f(z).pow(2).mean().pow(-0.5).item()
    return 1.0 if abs(cst - 1) < 1e-4 else cst
