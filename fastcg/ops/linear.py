"""linear: e3nn ``o3.Linear`` with shared or per-species weights, and its autograd."""

import torch
from torch import Tensor

from .. import reference
from ..backend import namespace
from ..descriptors import LinearDescriptor, LinearTables
from ._checks import (
    check_float,
    check_index,
    check_index_values,
    check_last_dim,
    check_same,
    fake_dtype,
    fake_same_device,
)


def linear(
    x: Tensor, weights: Tensor, tables: LinearTables, species: Tensor | None = None
) -> Tensor:
    """``e3nn.o3.Linear(irreps_in, irreps_out)(x)`` with these weights (biases are the layer's).

    With ``species`` ([batch] integers), ``weights`` is ``[num_species, weight_numel]`` and each
    row of x uses its species' weights (MACE's element-dependent linears). ``tables`` is a
    :class:`~fastcg.descriptors.LinearTables` (``descriptor.tables(device)``; what TorchScript
    takes) or, in eager Python, the :class:`~fastcg.descriptors.LinearDescriptor` itself.

    >>> d = fastcg.linear_descriptor("2x0e", "1x0e")
    >>> fastcg.linear(torch.ones(2), torch.ones(d.weight_numel), d)
    tensor([1.4142])
    """
    if not torch.jit.is_scripting():
        if isinstance(tables, LinearDescriptor):
            tables = tables.tables(x.device)
    dim_in, dim_out, weight_numel = tables.dim_in, tables.dim_out, tables.weight_numel
    check_float(x, "x")
    check_last_dim(x, dim_in, "x")
    check_float(weights, "weights")
    check_same(weights, x, "weights", "x")
    check_last_dim(weights, weight_numel, "weights")
    flat = x.reshape(-1, dim_in).contiguous()
    if species is None:
        if weights.dim() != 1:
            raise ValueError(
                f"weights must be [{weight_numel}] without species, got {list(weights.shape)}"
            )
    else:
        if weights.dim() != 2:
            raise ValueError(f"weights must be [num_species, {weight_numel}] with species")
        if species.dim() != 1 or species.shape[0] != flat.shape[0]:
            raise ValueError(
                f"species must have shape [{flat.shape[0]}], got {list(species.shape)}"
            )
        species = check_index(species, "species", x)
    weights = weights.contiguous()
    shape = list(x.shape[:-1]) + [dim_out]
    if not torch.jit.is_scripting():
        ns = namespace(x.is_cuda, "linear")
        if ns != "fastcg":
            return _other(ns, flat, weights, species, tables).reshape(shape)
    coeff = tables.path_coeff.to(torch.float64)
    out = torch.ops.fastcg.linear(flat, weights, species, tables.paths, coeff, dim_out)
    return out.reshape(shape)


@torch.jit.unused
def _other(ns: str, x: Tensor, w: Tensor, species: Tensor | None, tables: LinearTables) -> Tensor:
    if ns == "reference":  # the only backend whose index values Python checks
        if species is not None:
            check_index_values(species, "species", w.shape[0], "weights.shape[0]")
        return reference.linear(x, w, tables, species)
    coeff = tables.path_coeff.to(torch.float64)
    return getattr(torch.ops, ns).linear(x, w, species, tables.paths, coeff, tables.dim_out)


def register(ns: str) -> None:
    """Fake kernels and autograd for ``{ns}::linear`` and its backward."""
    ops = getattr(torch.ops, ns)

    def check(op, x, weights, species, paths, path_coeff, grad_out=None):
        # metadata only, as the C++ kernels check it: one device, one float dtype, table dtypes
        fake_same_device(op, x=x, weights=weights, species=species, grad_out=grad_out,
                         paths=paths, path_coeff=path_coeff)  # fmt: skip
        fake_dtype(op, x.dtype, weights=weights, grad_out=grad_out)
        fake_dtype(op, torch.int64, species=species, paths=paths)
        fake_dtype(op, torch.float64, path_coeff=path_coeff)

    @torch.library.register_fake(f"{ns}::linear")
    def _(x, weights, species, paths, path_coeff, dim_out):
        check(f"{ns}::linear", x, weights, species, paths, path_coeff)
        return x.new_empty(x.shape[0], dim_out)

    @torch.library.register_fake(f"{ns}::linear_backward")
    def _(grad_out, x, weights, species, paths, path_coeff, output_mask):
        check(f"{ns}::linear_backward", x, weights, species, paths, path_coeff, grad_out)
        inputs = (x, weights)
        return tuple(t.new_empty(list(t.shape) if m else [0]) for m, t in zip(output_mask, inputs))

    def save(ctx, *tensors, species):
        ctx.has_species = species is not None
        ctx.save_for_backward(*tensors, species if species is not None else tensors[0].new_empty(0))

    def saved(ctx):
        *tensors, species = ctx.saved_tensors
        return (*tensors, species if ctx.has_species else None)

    def setup_backward(ctx, inputs, output):
        g, x, w, species, paths, coeff, ctx.mask = inputs
        save(ctx, g, x, w, paths, coeff, species=species)

    def backward_backward(ctx, ggx, ggw):
        # gx = L_x(g, w) and gw = L_w(x, g) are bilinear, so one backward call with (x, w)
        # replaced by the cotangents (ggx, ggw) returns both d/dx and d/dw.
        g, x, w, paths, coeff, species = saved(ctx)
        ggx = ggx.contiguous() if (ggx is not None and ctx.mask[0]) else None
        ggw = ggw.contiguous() if (ggw is not None and ctx.mask[1]) else None
        n_g, n_x, n_w = ctx.needs_input_grad[:3]
        d_g = d_x = d_w = None
        if n_g:
            for a, b in ((ggx, w), (x, ggw)):
                if a is not None and b is not None:
                    t = ops.linear(a, b, species, paths, coeff, g.shape[1])
                    d_g = t if d_g is None else d_g + t
        mask = [n_x and ggw is not None, n_w and ggx is not None]
        if mask[0] or mask[1]:
            a = ggx if ggx is not None else x
            b = ggw if ggw is not None else w
            tx, tw = ops.linear_backward(g, a, b, species, paths, coeff, mask)
            d_x = tx if mask[0] else None
            d_w = tw if mask[1] else None
        return d_g, d_x, d_w, None, None, None, None

    torch.library.register_autograd(
        f"{ns}::linear_backward", backward_backward, setup_context=setup_backward
    )


register("fastcg")
