"""scatter_sum: deterministic segment sum with an explicit output size (no host sync)."""

import torch
from torch import Tensor

from .. import reference
from ..backend import use_reference
from ._checks import check_float, check_index


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """``zeros(dim_size, *src.shape[1:]).index_add_(0, index, src)``.

    >>> scatter_sum(torch.ones(3, 2), torch.tensor([0, 2, 0]), 3)[:, 0]
    tensor([2., 0., 1.])
    """
    check_float(src, "src")
    if src.dim() == 0:
        raise ValueError("src must have at least one dimension (the scattered one)")
    if dim_size < 0:
        raise ValueError(f"dim_size must be >= 0, got {dim_size}")
    if index.dim() != 1 or index.shape[0] != src.shape[0]:
        raise ValueError(f"index must have shape [{src.shape[0]}], got {list(index.shape)}")
    index = check_index(index, "index", dim_size, src, "dim_size")
    if not torch.jit.is_scripting() and use_reference(src.is_cuda):
        return _reference(src, index, dim_size)
    shape = [dim_size] + list(src.shape[1:])
    flat = src.reshape(src.shape[0], -1).contiguous()
    return torch.ops.fastcg.scatter_sum(flat, index, dim_size).reshape(shape)


@torch.jit.unused
def _reference(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    return reference.scatter_sum(src, index, dim_size)


@torch.library.register_fake("fastcg::scatter_sum")
def _(src, index, dim_size):
    return src.new_empty([dim_size] + list(src.shape[1:]))


def _setup(ctx, inputs, output):
    _, index, _ = inputs
    ctx.save_for_backward(index)


def _backward(ctx, grad):
    # The transpose of a scatter is a gather; index_select is differentiable (its backward is
    # index_add), which gives the double backward for free.
    (index,) = ctx.saved_tensors
    return grad.index_select(0, index), None, None


torch.library.register_autograd("fastcg::scatter_sum", _backward, setup_context=_setup)
