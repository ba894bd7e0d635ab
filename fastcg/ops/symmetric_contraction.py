"""symmetric_contraction: MACE's product basis and its autograd (the op boundary).

The math and the descriptor (coupling tensors, sparse tables) are in
:mod:`fastcg.descriptors.symmetric_contraction`; its public names are re-exported here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference
from ..backend import namespace
from ..descriptors.symmetric_contraction import (  # noqa: F401  (re-exported)
    SymmetricContractionDescriptor,
    SymmetricContractionTables,
    coupling_tensors,
    descriptor_from_coupling,
    symmetric_contraction_descriptor,
)
from ..irreps import channel_irreps, to_channels  # noqa: F401  (re-exported)
from ._checks import (
    check_float,
    check_index,
    check_index_values,
    check_same,
    fake_dtype,
    fake_same_device,
)


def symmetric_contraction(
    x: Tensor, species: Tensor, weights: Tensor, tables: SymmetricContractionTables
) -> Tensor:
    """MACE's product basis: ``[N, C * dim_out]`` (mul_ir) from x ``[N, C, dim_in]``, species
    ``[N]`` and weights ``[num_species, weight_numel, C]``.

    ``tables`` is a :class:`~fastcg.descriptors.SymmetricContractionTables`
    (``descriptor.tables(device)``; what TorchScript takes) or, in eager Python, the
    :class:`~fastcg.descriptors.SymmetricContractionDescriptor` itself, which also takes x in
    mul_ir ``[N, C * dim_in]``.

    >>> d = symmetric_contraction_descriptor("0e+1o", "0e", 2)
    >>> symmetric_contraction(torch.randn(5, 3, 4), torch.zeros(5, dtype=torch.long),
    ...                       torch.randn(1, d.weight_numel, 3), d).shape
    torch.Size([5, 3])
    """
    if not torch.jit.is_scripting():
        if isinstance(tables, SymmetricContractionDescriptor):
            if x.dim() == 2:
                if weights.dim() != 3:
                    raise ValueError(f"weights must be 3-D, got shape {list(weights.shape)}")
                x = to_channels(x, tables.irreps_in, weights.shape[2])
            tables = tables.tables(x.device)
    dim_in, weight_numel = tables.dim_in, tables.weight_numel
    check_float(x, "x")
    if x.dim() != 3 or x.shape[2] != dim_in:
        raise ValueError(f"x must be [num_nodes, num_channels, {dim_in}], got {list(x.shape)}")
    check_float(weights, "weights")
    check_same(weights, x, "weights", "x")
    if weights.dim() != 3 or weights.shape[1] != weight_numel or weights.shape[2] != x.shape[1]:
        raise ValueError(
            f"weights must be [num_species, {weight_numel}, {x.shape[1]}], "
            f"got {list(weights.shape)}"
        )
    if species.dim() != 1 or species.shape[0] != x.shape[0]:
        raise ValueError(f"species must have shape [{x.shape[0]}], got {list(species.shape)}")
    species = check_index(species, "species", x)
    x, weights = x.contiguous(), weights.contiguous()
    if not torch.jit.is_scripting():
        ns = namespace(x.is_cuda, "symmetric_contraction")
        if ns != "fastcg":
            return _other(ns, x, species, weights, tables)
    t = tables
    return torch.ops.fastcg.symmetric_contraction(
        x, species, weights, t.monomials, t.pairs, t.entries, t.coeff.to(torch.float64),
        t.out_cols,
    )  # fmt: skip


@torch.jit.unused
def _other(
    ns: str, x: Tensor, species: Tensor, weights: Tensor, tables: SymmetricContractionTables
) -> Tensor:
    op = (
        None
        if ns == "reference"
        else getattr(getattr(torch.ops, ns), "symmetric_contraction", None)
    )
    if op is None:  # the reference, or a backend without this op
        check_index_values(species, "species", weights.shape[0], "weights.shape[0]")
        return reference.symmetric_contraction(x, species, weights, tables)
    t = tables
    coeff = t.coeff.to(torch.float64)
    return op(x, species, weights, t.monomials, t.pairs, t.entries, coeff, t.out_cols)


def register(ns: str) -> None:
    """Fake kernels and autograd for ``{ns}::symmetric_contraction`` and its backward."""
    ops = getattr(torch.ops, ns)

    def check(op, x, species, weights, monomials, pairs, entries, coeff, out_cols, **grads):
        # metadata only, as the C++ kernels check it: one device, one float dtype, table dtypes
        fake_same_device(op, x=x, species=species, weights=weights, **grads, monomials=monomials,
                         pairs=pairs, entries=entries, coeff=coeff, out_cols=out_cols)  # fmt: skip
        fake_dtype(op, x.dtype, weights=weights, **grads)
        fake_dtype(op, torch.int64, species=species, monomials=monomials, pairs=pairs,
                   entries=entries, out_cols=out_cols)  # fmt: skip
        fake_dtype(op, torch.float64, coeff=coeff)

    @torch.library.register_fake(f"{ns}::symmetric_contraction")
    def _(x, species, weights, monomials, pairs, entries, coeff, out_cols):
        check(f"{ns}::symmetric_contraction", x, species, weights, monomials, pairs, entries,
              coeff, out_cols)  # fmt: skip
        return x.new_empty(x.shape[0], x.shape[1] * out_cols.shape[0])

    @torch.library.register_fake(f"{ns}::symmetric_contraction_backward")
    def _(grad_out, x, species, weights, monomials, pairs, entries, coeff, out_cols, mask):
        check(f"{ns}::symmetric_contraction_backward", x, species, weights, monomials, pairs,
              entries, coeff, out_cols, grad_out=grad_out)  # fmt: skip
        return tuple(t.new_empty(list(t.shape) if m else [0]) for m, t in zip(mask, (x, weights)))

    @torch.library.register_fake(f"{ns}::symmetric_contraction_double_backward")
    def _(grad_out, x, species, weights, ggx, ggw, monomials, pairs, entries, coeff, out_cols,
          mask):  # fmt: skip
        check(f"{ns}::symmetric_contraction_double_backward", x, species, weights, monomials,
              pairs, entries, coeff, out_cols, grad_out=grad_out, grad_grad_x=ggx,
              grad_grad_weights=ggw)  # fmt: skip
        inputs = (grad_out, x, weights)
        return tuple(t.new_empty(list(t.shape) if m else [0]) for m, t in zip(mask, inputs))

    def setup_backward(ctx, inputs, output):
        ctx.mask = inputs[9]
        ctx.save_for_backward(*inputs[:9])

    def backward_backward(ctx, ggx, ggw):
        g, x, species, w, *tables = ctx.saved_tensors
        ggx = ggx.contiguous() if (ggx is not None and ctx.mask[0]) else None
        ggw = ggw.contiguous() if (ggw is not None and ctx.mask[1]) else None
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[3]]
        if not any(need) or (ggx is None and ggw is None):
            return (None,) * 10
        dg, dx, dw = ops.symmetric_contraction_double_backward(
            g, x, species, w, ggx, ggw, *tables, need
        )
        return (dg if need[0] else None), (dx if need[1] else None), None, \
            (dw if need[2] else None), *([None] * 6)  # fmt: skip

    torch.library.register_autograd(
        f"{ns}::symmetric_contraction_backward", backward_backward, setup_context=setup_backward
    )


def _has_op(ns: str) -> bool:
    """Whether the loaded library has this op (a library built before it existed has not)."""
    try:
        _ = getattr(torch.ops, ns).symmetric_contraction_double_backward
    except (AttributeError, RuntimeError):
        return False
    return True


if _has_op("fastcg"):
    register("fastcg")
