"""scatter_sum: deterministic segment sum with an explicit output size (no host sync)."""

import torch
from torch import Tensor

from .. import reference
from ..backend import namespace
from ._checks import check_float, check_index, check_index_values, fake_dtype, fake_same_device


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
    index = check_index(index, "index", src)
    shape = [dim_size] + list(src.shape[1:])
    features = 1
    for n in src.shape[1:]:
        features *= n
    flat = src.reshape(src.shape[0], features).contiguous()
    if not torch.jit.is_scripting():
        ns = namespace(src.is_cuda, "scatter_sum")
        if ns != "fastcg":
            return _other(ns, flat, index, dim_size).reshape(shape)
    return torch.ops.fastcg.scatter_sum(flat, index, dim_size).reshape(shape)


@torch.jit.unused
def _other(ns: str, src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    if ns == "reference":  # the only backend whose index values Python checks
        check_index_values(index, "index", dim_size, "dim_size")
        return reference.scatter_sum(src, index, dim_size)
    return getattr(torch.ops, ns).scatter_sum(src, index, dim_size)


def register(ns: str) -> None:
    """Fake kernel of ``{ns}::scatter_sum`` (its autograd, a gather, is csrc/autograd.cpp's)."""

    @torch.library.register_fake(f"{ns}::scatter_sum")
    def _(src, index, dim_size):
        op = f"{ns}::scatter_sum"
        fake_same_device(op, src=src, index=index)
        fake_dtype(op, torch.int64, index=index)
        # dim_size stays symbolic (SymInt): one graph for every number of nodes
        return src.new_empty([dim_size] + list(src.shape[1:]))


register("fastcg")
