"""tensor_product: boundary, fake kernels and autograd of e3nn's TensorProduct."""

import torch
from torch import Tensor

from .. import reference
from ..backend import namespace
from ..descriptors import TPDescriptor, TPTables
from ._checks import (
    check_float,
    check_last_dim,
    check_same,
    check_weights,
    fake_dtype,
    fake_same_device,
)
from ._trilinear import double_backward, present, weighted_paths


def broadcast(a: list[int], b: list[int]) -> list[int]:
    """NumPy broadcasting of two shapes (TorchScript has no torch.broadcast_shapes)."""
    n = max(len(a), len(b))
    a = [1] * (n - len(a)) + a
    b = [1] * (n - len(b)) + b
    out: list[int] = []
    for i in range(n):
        if a[i] != b[i] and a[i] != 1 and b[i] != 1:
            raise ValueError(f"batch shapes {a} and {b} do not broadcast")
        out.append(b[i] if a[i] == 1 else a[i])
    return out


def _flat(t: Tensor, batch: list[int]) -> Tensor:
    size = t.shape[-1]
    rows = 1
    for n in batch:
        rows *= n
    # explicit rows, not -1: a zero-width operand (empty irreps) has no size to infer it from
    return t.expand(batch + [size]).reshape(rows, size).contiguous()


def tensor_product(x1: Tensor, x2: Tensor, weights: Tensor | None, tables: TPTables) -> Tensor:
    """e3nn ``TensorProduct`` of ``x1[..., dim1]`` and ``x2[..., dim2]`` given by ``tables``.

    ``tables`` is a :class:`~fastcg.descriptors.TPTables` (``descriptor.tables(device)``, or
    built by a ``fastcg.nn`` module from its buffers; what TorchScript takes) or, in eager
    Python, the :class:`~fastcg.descriptors.TPDescriptor` itself. ``weights`` is
    ``[weight_numel]`` (shared), ``[..., weight_numel]`` (per sample) or None when the product
    has no weights.

    >>> d = fastcg.tensor_product_descriptor("1x1o", "1x1o", "1x0e", [(0, 0, 0, "uuu", False)])
    >>> fastcg.tensor_product(torch.ones(3), torch.ones(3), None, d)
    tensor([1.7321])
    """
    if not torch.jit.is_scripting():
        if isinstance(tables, TPDescriptor):
            tables = tables.tables(x1.device)
    check_float(x1, "x1")
    check_same(x2, x1, "x2", "x1")
    check_last_dim(x1, tables.dim1, "x1")
    check_last_dim(x2, tables.dim2, "x2")
    w = check_weights(weights, tables.weight_numel, x1, "weights")
    batch = broadcast(list(x1.shape[:-1]), list(x2.shape[:-1]))
    if w.dim() > 1:
        batch = broadcast(batch, list(w.shape[:-1]))
        w = _flat(w, batch)
    a, b = _flat(x1, batch), _flat(x2, batch)
    dim_out = tables.dim_out
    if not torch.jit.is_scripting():
        ns = namespace(x1.is_cuda, "tensor_product")
        if ns != "fastcg":
            return _other(ns, a, b, w, tables).reshape(batch + [dim_out])
    cg_value = tables.cg_value.to(torch.float64)
    out = torch.ops.fastcg.tensor_product(a, b, w, tables.paths, tables.cg_index, cg_value, dim_out)
    return out.reshape(batch + [dim_out])


@torch.jit.unused
def _other(ns: str, a: Tensor, b: Tensor, w: Tensor, tables: TPTables) -> Tensor:
    if ns == "reference":
        return reference.tensor_product(a, b, w, tables)
    t = tables
    cg_value = t.cg_value.to(torch.float64)
    return getattr(torch.ops, ns).tensor_product(a, b, w, t.paths, t.cg_index, cg_value, t.dim_out)


def register(ns: str) -> None:
    """Fake kernels and autograd for ``{ns}::tensor_product`` and its backward."""
    ops = getattr(torch.ops, ns)

    def check(op, x1, x2, weights, paths, cg_index, cg_value, grad_out=None):
        # metadata only, as the C++ kernels check it: one device, one float dtype, table dtypes
        fake_same_device(op, x1=x1, x2=x2, weights=weights, grad_out=grad_out, paths=paths,
                         cg_index=cg_index, cg_value=cg_value)  # fmt: skip
        fake_dtype(op, x1.dtype, x2=x2, weights=weights, grad_out=grad_out)
        fake_dtype(op, torch.int64, paths=paths, cg_index=cg_index)
        fake_dtype(op, torch.float64, cg_value=cg_value)

    @torch.library.register_fake(f"{ns}::tensor_product")
    def _(x1, x2, weights, paths, cg_index, cg_value, dim_out):
        check(f"{ns}::tensor_product", x1, x2, weights, paths, cg_index, cg_value)
        return x1.new_empty(x1.shape[0], dim_out)

    @torch.library.register_fake(f"{ns}::tensor_product_backward")
    def _(grad_out, x1, x2, weights, paths, cg_index, cg_value, output_mask):
        op = f"{ns}::tensor_product_backward"
        check(op, x1, x2, weights, paths, cg_index, cg_value, grad_out=grad_out)
        inputs = (x1, x2, weights)
        return tuple(t.new_empty(list(t.shape) if m else [0]) for m, t in zip(output_mask, inputs))

    def setup_backward(ctx, inputs, output):
        g, x1, x2, w, paths, cg_index, cg_value, ctx.mask = inputs
        ctx.save_for_backward(g, x1, x2, w, paths, cg_index, cg_value)

    def backward_backward(ctx, gg1, gg2, ggw):
        g, x1, x2, w, *tables = ctx.saved_tensors

        paths, cg_index, cg_value = tables

        def fwd(a, b, c, weighted):
            p = weighted_paths(paths) if weighted else paths
            return ops.tensor_product(a, b, c, p, cg_index, cg_value, g.shape[1])

        def bwd(a, b, c, mask, weighted):
            p = weighted_paths(paths) if weighted else paths
            return ops.tensor_product_backward(g, a, b, c, p, cg_index, cg_value, mask)

        gg = present((gg1, gg2, ggw), ctx.mask)
        grads = double_backward(x1, x2, w, gg, tuple(ctx.needs_input_grad[:4]), fwd, bwd)
        return *grads, None, None, None, None

    torch.library.register_autograd(
        f"{ns}::tensor_product_backward", backward_backward, setup_context=setup_backward
    )


register("fastcg")
