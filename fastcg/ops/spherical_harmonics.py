"""spherical_harmonics: boundary, fake kernels, value -> gradient -> hessian autograd chain."""

import torch
from torch import Tensor

from .. import reference
from ..backend import namespace
from ._autograd import register_forward_autograd
from ._checks import check_float, check_last_dim

NORMALIZATIONS = ("component", "norm", "integral")
LMAX = 8  # highest l in the generated csrc/core/sh.h


def spherical_harmonics(
    vectors: Tensor, lmax: int, normalize: bool = True, normalization: str = "component"
) -> Tensor:
    """Real spherical harmonics l = 0..lmax of ``vectors[..., 3]`` in e3nn's basis.

    Equals ``e3nn.o3.spherical_harmonics(list(range(lmax + 1)), vectors, normalize,
    normalization)``; zero vectors give finite values and zero gradients.

    >>> spherical_harmonics(torch.tensor([[0.0, 0.0, 1.0]]), 1).shape
    torch.Size([1, 4])
    """
    check_float(vectors, "vectors")
    check_last_dim(vectors, 3, "vectors")
    if lmax < 0 or lmax > 8:  # LMAX, spelled out for TorchScript
        raise ValueError(f"lmax must be in [0, 8], got {lmax}")
    if normalization not in ["component", "norm", "integral"]:  # NORMALIZATIONS
        raise ValueError(
            f"normalization must be 'component', 'norm' or 'integral', got '{normalization}'"
        )
    shape = list(vectors.shape[:-1]) + [(lmax + 1) * (lmax + 1)]
    if not torch.jit.is_scripting():
        ns = namespace(vectors.is_cuda, "spherical_harmonics")
        if ns != "fastcg":
            return _other(ns, vectors, lmax, normalize, normalization).reshape(shape)
    flat = vectors.reshape(-1, 3).contiguous()
    out = torch.ops.fastcg.spherical_harmonics(flat, lmax, normalize, normalization)
    return out.reshape(shape)


@torch.jit.unused
def _other(ns: str, vectors: Tensor, lmax: int, normalize: bool, normalization: str) -> Tensor:
    if ns == "reference":
        return reference.spherical_harmonics(vectors, lmax, normalize, normalization)
    flat = vectors.reshape(-1, 3).contiguous()
    return getattr(torch.ops, ns).spherical_harmonics(flat, lmax, normalize, normalization)


def register(ns: str) -> None:
    """Fake kernels and autograd for ``{ns}::spherical_harmonics`` and its two derivatives."""
    ops = getattr(torch.ops, ns)

    @torch.library.register_fake(f"{ns}::spherical_harmonics")
    def _(vectors, lmax, normalize, normalization):
        return vectors.new_empty(vectors.shape[0], (lmax + 1) ** 2)

    @torch.library.register_fake(f"{ns}::spherical_harmonics_backward")
    def _(grad_sh, vectors, lmax, normalize, normalization):
        return torch.empty_like(vectors)

    @torch.library.register_fake(f"{ns}::spherical_harmonics_double_backward")
    def _(grad_grad_vectors, grad_sh, vectors, lmax, normalize, normalization):
        return torch.empty_like(grad_sh), torch.empty_like(vectors)

    def setup(ctx, inputs, output):
        vectors, *ctx.args = inputs
        ctx.save_for_backward(vectors)

    def backward(ctx, grad):
        (vectors,) = ctx.saved_tensors
        gv = ops.spherical_harmonics_backward(grad.contiguous(), vectors, *ctx.args)
        return gv, None, None, None

    def setup_backward(ctx, inputs, output):
        grad_sh, vectors, *ctx.args = inputs
        ctx.save_for_backward(grad_sh, vectors)

    def backward_backward(ctx, grad):
        grad_sh, vectors = ctx.saved_tensors
        op = ops.spherical_harmonics_double_backward
        g_sh, g_vec = op(grad.contiguous(), grad_sh, vectors, *ctx.args)
        return g_sh, g_vec, None, None, None

    def no_third_derivative(ctx, *grads):
        raise NotImplementedError(
            "fastcg: third derivatives of spherical_harmonics are not implemented"
        )

    torch.library.register_autograd(
        f"{ns}::spherical_harmonics_double_backward", no_third_derivative
    )
    register_forward_autograd(f"{ns}::spherical_harmonics", backward, setup_context=setup)
    torch.library.register_autograd(
        f"{ns}::spherical_harmonics_backward", backward_backward, setup_context=setup_backward
    )


register("fastcg")
