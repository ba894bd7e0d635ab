"""conv: fused gather + tensor product + scatter over edges, with its autograd."""

import torch
from torch import Tensor

from .. import reference
from ..backend import namespace
from ..descriptors import TPDescriptor, TPTables
from ._checks import (
    check_dims,
    check_float,
    check_index,
    check_index_values,
    check_last_dim,
    check_same,
    check_weights,
    fake_dtype,
    fake_same_device,
)
from ._trilinear import _add, double_backward, present, weighted_paths


def _check_graph(
    x: Tensor, edge_attr: Tensor, src: Tensor, dst: Tensor, num_nodes: int, tables: TPTables
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The checks every conv flavour shares: features, edge attributes, indices."""
    check_float(x, "x")
    check_same(edge_attr, x, "edge_attr", "x")
    check_dims(x, 2, "x")
    check_dims(edge_attr, 2, "edge_attr")
    check_last_dim(x, tables.dim1, "x")
    check_last_dim(edge_attr, tables.dim2, "edge_attr")
    if num_nodes < 0:
        raise ValueError(f"num_nodes must be >= 0, got {num_nodes}")
    num_edges = edge_attr.shape[0]
    for t, name in ((src, "src"), (dst, "dst")):
        if t.dim() != 1 or t.shape[0] != num_edges:
            raise ValueError(f"{name} must have shape [{num_edges}] (edges), got {list(t.shape)}")
    src = check_index(src, "src", x)
    dst = check_index(dst, "dst", x)
    return x.contiguous(), edge_attr.contiguous(), src, dst


def _tables_of(tables: TPTables, x: Tensor) -> TPTables:
    """``tables``, or in eager Python a TPDescriptor's tables on x's device."""
    if not torch.jit.is_scripting():
        if isinstance(tables, TPDescriptor):
            return tables.tables(x.device)
    return tables


def conv(
    x: Tensor, edge_attr: Tensor, weights: Tensor | None, src: Tensor, dst: Tensor,
    num_nodes: int, tables: TPTables,
) -> Tensor:  # fmt: skip
    """``zeros(num_nodes, dim_out).index_add_(0, dst, TP(x[src], edge_attr, weights))``, fused.

    Edges point from ``src`` (sender) to ``dst`` (receiver). Per-edge messages are never
    materialised; the result does not depend on the thread count. ``tables`` is a
    :class:`~fastcg.descriptors.TPTables` (``descriptor.tables(device)``; what TorchScript
    takes) or, in eager Python, the :class:`~fastcg.descriptors.TPDescriptor` itself.

    >>> d = fastcg.tensor_product_descriptor("1x0e", "1x0e", "1x0e", [(0, 0, 0, "uvu", False)])
    >>> src, dst = torch.tensor([0, 1, 1]), torch.tensor([1, 0, 1])
    >>> fastcg.conv(torch.ones(2, 1), torch.ones(3, 1), None, src, dst, 2, d.tables())
    tensor([[1.],
            [2.]])
    """
    tables = _tables_of(tables, x)
    x, edge_attr, src, dst = _check_graph(x, edge_attr, src, dst, num_nodes, tables)
    num_edges = edge_attr.shape[0]
    numel = tables.weight_numel
    w = check_weights(weights, numel, x, "weights")
    if w.dim() > 1 and (w.dim() != 2 or w.shape[0] != num_edges):
        raise ValueError(f"weights must be [{numel}] or [{num_edges}, {numel}]")
    w = w.contiguous()
    if not torch.jit.is_scripting():
        ns = namespace(x.is_cuda, "conv")
        if ns != "fastcg":
            return _other(ns, x, edge_attr, w, src, dst, num_nodes, tables)
    cg_value = tables.cg_value.to(torch.float64)
    return torch.ops.fastcg.conv(
        x, edge_attr, w, src, dst, num_nodes, tables.paths, tables.cg_index, cg_value,
        tables.dim_out,
    )  # fmt: skip


def conv_radial(
    x: Tensor, edge_attr: Tensor, radial: Tensor, radial_weight: Tensor, src: Tensor,
    dst: Tensor, num_nodes: int, tables: TPTables,
) -> Tensor:  # fmt: skip
    """``conv(x, edge_attr, radial @ radial_weight, src, dst, num_nodes, tables)``, without
    ever holding the ``[num_edges, weight_numel]`` weights (or their gradient) whole.

    ``radial`` is ``[num_edges, K]`` (the last hidden layer of a radial MLP), ``radial_weight``
    ``[K, weight_numel]`` (its last, linear layer). The fastcg kernels run the product in chunks
    of destination nodes; the reference and Triton backends form the weights whole. ``tables``
    as in :func:`conv`.
    """
    tables = _tables_of(tables, x)
    x, edge_attr, src, dst = _check_graph(x, edge_attr, src, dst, num_nodes, tables)
    num_edges = edge_attr.shape[0]
    for t, name in ((radial, "radial"), (radial_weight, "radial_weight")):
        check_float(t, name)
        check_same(t, x, name, "x")
        check_dims(t, 2, name)
    if radial.shape[0] != num_edges:
        raise ValueError(f"radial must have {num_edges} rows (edges), got {list(radial.shape)}")
    numel = tables.weight_numel
    if numel == 0 or radial_weight.shape != (radial.shape[1], numel):
        raise ValueError(
            f"radial_weight must have shape [{radial.shape[1]}, {numel}] "
            f"(radial.shape[1], weight_numel > 0), got {list(radial_weight.shape)}"
        )
    radial, radial_weight = radial.contiguous(), radial_weight.contiguous()
    if not torch.jit.is_scripting():
        ns = namespace(x.is_cuda, "conv")
        if ns != "fastcg":  # these backends take the weights whole
            w = radial @ radial_weight
            return _other(ns, x, edge_attr, w, src, dst, num_nodes, tables)
    cg_value = tables.cg_value.to(torch.float64)
    return torch.ops.fastcg.conv_radial(
        x, edge_attr, radial, radial_weight, src, dst, num_nodes, tables.paths, tables.cg_index,
        cg_value, tables.dim_out,
    )  # fmt: skip


def conv_tabulated(
    x: Tensor, edge_attr: Tensor, r: Tensor, table: Tensor, step: float, src: Tensor,
    dst: Tensor, num_nodes: int, tables: TPTables,
) -> Tensor:  # fmt: skip
    """``conv(x, edge_attr, w(r), src, dst, num_nodes, tables)`` with the per-edge weights
    ``w(r)`` read from a cubic Hermite table at the edge lengths ``r [E]``.

    ``table [G + 1, 2, weight_numel]`` holds the values and the ``step``-scaled derivatives of
    ``w`` at ``r = 0, step, ..., G step`` (:func:`fastcg.nn.radial_table` builds it). First
    derivatives only (in ``x``, ``edge_attr`` and ``r``): an approximation for MD, never for
    training. Lengths outside ``[0, G step]`` are an error (NaN rows on a GPU). ``tables`` as
    in :func:`conv`.
    """
    tables = _tables_of(tables, x)
    x, edge_attr, src, dst = _check_graph(x, edge_attr, src, dst, num_nodes, tables)
    for t, name in ((r, "r"), (table, "table")):
        check_float(t, name)
        check_same(t, x, name, "x")
    check_dims(r, 1, "r")
    if r.shape[0] != edge_attr.shape[0]:
        raise ValueError(f"r must have {edge_attr.shape[0]} entries (edges), got {list(r.shape)}")
    numel = tables.weight_numel
    if table.dim() != 3 or table.shape[0] < 2 or table.shape[1:] != (2, numel):
        raise ValueError(
            f"table must have shape [G + 1, 2, {numel}] with G >= 1, got {list(table.shape)}"
        )
    if not step > 0:
        raise ValueError(f"step must be positive, got {step}")
    r, table = r.contiguous(), table.contiguous()
    if not torch.jit.is_scripting():
        if x.is_cuda or namespace(False, "conv") != "fastcg":
            # the C++ kernel is CPU-only: elsewhere the weights are formed whole
            w = spline_weights(r, table, step)
            return conv(x, edge_attr, w, src, dst, num_nodes, tables)
    cg_value = tables.cg_value.to(torch.float64)
    return torch.ops.fastcg.conv_tabulated(
        x, edge_attr, r, table, step, src, dst, num_nodes, tables.paths, tables.cg_index,
        cg_value, tables.dim_out,
    )  # fmt: skip


@torch.jit.unused
def spline_weights(r: Tensor, table: Tensor, step: float) -> Tensor:
    """``[E, numel]`` weights of edge lengths ``r`` from a :func:`conv_tabulated` table (the
    kernels' formula in torch, differentiable; lengths outside the table give NaN rows on a GPU,
    where checking them would synchronise, and an error elsewhere)."""
    top = (table.shape[0] - 1) * step
    inside = (r >= 0) & (r <= top * (1 + 1e-5))
    if not r.is_cuda and not bool(inside.all()):
        bad = int((~inside).nonzero()[0, 0])
        raise ValueError(f"edge {bad} has length {float(r[bad])} outside the table's [0, {top}]")
    u = r / step
    i = u.detach().floor().clamp(0, table.shape[0] - 2).long()
    t = (u - i)[:, None]
    t2, t3 = t * t, t * t * t
    f0, d0, f1, d1 = table[i, 0], table[i, 1], table[i + 1, 0], table[i + 1, 1]
    w = (2 * t3 - 3 * t2 + 1) * f0 + (t3 - 2 * t2 + t) * d0 + (3 * t2 - 2 * t3) * f1
    w = w + (t3 - t2) * d1
    return torch.where(inside[:, None], w, torch.full_like(w, float("nan")))


@torch.jit.unused
def _other(
    ns: str, x: Tensor, edge_attr: Tensor, w: Tensor, src: Tensor, dst: Tensor, num_nodes: int,
    tables: TPTables,
) -> Tensor:  # fmt: skip
    if ns == "reference":  # the only backend whose index values Python checks
        check_index_values(src, "src", x.shape[0], "x.shape[0]")
        check_index_values(dst, "dst", num_nodes, "num_nodes")
        return reference.conv(x, edge_attr, w, src, dst, num_nodes, tables)
    t = tables
    cg_value = t.cg_value.to(torch.float64)
    op = getattr(torch.ops, ns).conv
    return op(x, edge_attr, w, src, dst, num_nodes, t.paths, t.cg_index, cg_value, t.dim_out)


def sort_edges(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Stable sort of edges by destination: ``(src[perm], dst[perm], perm)``.

    Permute per-edge tensors (edge_attr, weights) with ``perm`` too.
    """
    perm = torch.sort(dst, stable=True).indices
    return src[perm], dst[perm], perm


def _fwd_bwd(
    ops, g: Tensor, src: Tensor, dst: Tensor, paths: Tensor, cg_index: Tensor, cg_value: Tensor
) -> tuple:
    """The conv and its backward with the saved grad_out g bound, as ``double_backward`` takes
    them (``weighted``: the weighted paths only)."""

    def fwd(a, b, c, weighted):
        p = weighted_paths(paths) if weighted else paths
        return ops.conv(a, b, c, src, dst, g.shape[0], p, cg_index, cg_value, g.shape[1])

    def bwd(a, b, c, mask, weighted):
        p = weighted_paths(paths) if weighted else paths
        return ops.conv_backward(g, a, b, c, src, dst, p, cg_index, cg_value, mask)

    return fwd, bwd


def fake_conv_args(
    op: str, x: Tensor, edge_attr: Tensor, weights: Tensor | None, src: Tensor, dst: Tensor,
    paths: Tensor, cg_index: Tensor, cg_value: Tensor, **features: Tensor,
) -> None:  # fmt: skip
    """The fake kernels' checks of a conv flavour (metadata only): one device, x's dtype for the
    float operands (``weights`` and ``features``), int64 indices and tables, float64 cg_value."""
    fake_same_device(op, x=x, edge_attr=edge_attr, weights=weights, **features, src=src, dst=dst,
                     paths=paths, cg_index=cg_index, cg_value=cg_value)  # fmt: skip
    fake_dtype(op, x.dtype, edge_attr=edge_attr, weights=weights, **features)
    fake_dtype(op, torch.int64, src=src, dst=dst, paths=paths, cg_index=cg_index)
    fake_dtype(op, torch.float64, cg_value=cg_value)


def register(ns: str) -> None:
    """Fake kernels and autograd for ``{ns}::conv`` and its backward."""
    ops = getattr(torch.ops, ns)

    @torch.library.register_fake(f"{ns}::conv")
    def _(x, edge_attr, weights, src, dst, num_nodes, paths, cg_index, cg_value, dim_out):
        fake_conv_args(f"{ns}::conv", x, edge_attr, weights, src, dst, paths, cg_index, cg_value)
        # num_nodes stays symbolic (SymInt): one graph for every number of atoms
        return x.new_empty(num_nodes, dim_out)

    @torch.library.register_fake(f"{ns}::conv_backward")
    def _(grad_out, x, edge_attr, weights, src, dst, paths, cg_index, cg_value, output_mask):
        fake_conv_args(f"{ns}::conv_backward", x, edge_attr, weights, src, dst, paths, cg_index,
                       cg_value, grad_out=grad_out)  # fmt: skip
        inputs = (x, edge_attr, weights)
        return tuple(t.new_empty(list(t.shape) if m else [0]) for m, t in zip(output_mask, inputs))

    def setup_backward(ctx, inputs, output):
        g, x, y, w, src, dst, paths, cg_index, cg_value, ctx.mask = inputs
        ctx.save_for_backward(g, x, y, w, src, dst, paths, cg_index, cg_value)

    def backward_backward(ctx, ggx, ggy, ggw):
        g, x, y, w, src, dst, *tables = ctx.saved_tensors
        fwd, bwd = _fwd_bwd(ops, g, src, dst, *tables)
        gg = present((ggx, ggy, ggw), ctx.mask)
        grads = double_backward(x, y, w, gg, tuple(ctx.needs_input_grad[:4]), fwd, bwd)
        return *grads, *([None] * 6)

    torch.library.register_autograd(
        f"{ns}::conv_backward", backward_backward, setup_context=setup_backward
    )


def register_radial(ns: str) -> None:
    """Fake kernels and autograd for ``{ns}::conv_radial`` and its backward.

    On the CPU, a backward whose own graph is not wanted (training on forces) runs the one-pass
    ``conv_radial_double_backward``; otherwise the first-order ops compose it, as follows.

    The backward's own derivative (training on forces) runs on ``conv_radial`` and
    ``conv_radial_backward`` again, so the per-edge weights ``w = radial @ W`` and their gradient
    exist one chunk at a time here too. With ``gw = T_c(x, y, g)`` the weight gradient the
    backward contracts (radial's is ``gw W^T``, W's ``radial^T gw``), the cotangents of those
    two outputs meet the weights as ``ggw = gg_radial W + radial gg_W = [gg_radial | radial]
    [W ; gg_W]``: one more radial product, with twice the hidden width.
    """
    ops = getattr(torch.ops, ns)
    fused = hasattr(ops, "conv_radial_double_backward")

    @torch.library.register_fake(f"{ns}::conv_radial")
    def _(x, edge_attr, radial, radial_weight, src, dst, num_nodes, paths, cgi, cgv, dim_out):
        fake_conv_args(f"{ns}::conv_radial", x, edge_attr, None, src, dst, paths, cgi, cgv,
                       radial=radial, radial_weight=radial_weight)  # fmt: skip
        return x.new_empty(num_nodes, dim_out)

    @torch.library.register_fake(f"{ns}::conv_radial_backward")
    def _(grad_out, x, edge_attr, radial, radial_weight, src, dst, paths, cgi, cgv, mask):
        op = f"{ns}::conv_radial_backward"
        fake_conv_args(op, x, edge_attr, None, src, dst, paths, cgi, cgv, radial=radial,
                       radial_weight=radial_weight, grad_out=grad_out)  # fmt: skip
        inputs = (x, edge_attr, radial, radial_weight)
        return tuple(t.new_empty(list(t.shape) if m else [0]) for m, t in zip(mask, inputs))

    def setup_backward(ctx, inputs, output):
        g, x, y, h, W, src, dst, paths, cg_index, cg_value, ctx.mask = inputs
        ctx.save_for_backward(g, x, y, h, W, src, dst, paths, cg_index, cg_value)

    def backward_backward(ctx, ggx, ggy, ggh, ggW):
        g, x, y, h, W, src, dst, paths, cg_index, cg_value = ctx.saved_tensors
        n_g, n_x, n_y, n_h, n_W = ctx.needs_input_grad[:5]
        ggx, ggy, ggh, ggW = present((ggx, ggy, ggh, ggW), ctx.mask)

        def fwd(a, b, r, rw, p):
            return ops.conv_radial(a, b, r, rw, src, dst, g.shape[0], p, cg_index, cg_value,
                                   g.shape[1])  # fmt: skip

        def bwd(a, b, r, rw, mask, p):
            return ops.conv_radial_backward(g, a, b, r, rw, src, dst, p, cg_index, cg_value, mask)

        d_g = d_x = d_y = d_h = d_W = None
        if fused and not torch.is_grad_enabled() and g.device.type == "cpu":
            # one pass making each block's weights once for all terms (no third derivative)
            needs = [n_g, n_x, n_y, n_h, n_W]
            out = ops.conv_radial_double_backward(g, x, y, h, W, ggx, ggy, ggh, ggW, src, dst,
                                                  paths, cg_index, cg_value, needs)  # fmt: skip
            return *(t if n else None for t, n in zip(out, needs)), *([None] * 6)
        # <ggx, T_a(g, y, w)> = <g, T(ggx, y, w)>, and likewise for ggy: trilinear terms
        terms = [(ggx, y, False, n_y)] if ggx is not None else []
        terms += [(x, ggy, n_x, False)] if ggy is not None else []
        for a, b, n_a, n_b in terms:
            if n_g:
                d_g = _add(d_g, fwd(a, b, h, W, paths))
            if n_a or n_b or n_h or n_W:
                ta, tb, th, tW = bwd(a, b, h, W, [n_a, n_b, n_h, n_W], paths)
                d_x = _add(d_x, ta) if n_a else d_x
                d_y = _add(d_y, tb) if n_b else d_y
                d_h = _add(d_h, th) if n_h else d_h
                d_W = _add(d_W, tW) if n_W else d_W
        if ggh is not None or ggW is not None:
            # <gw, ggw>: the weighted paths with weights ggw (not linear in w elsewhere). Through
            # gw itself it also gives d radial = gw ggW^T and d W = ggh^T gw: the same backward
            # call's radial and W gradients (its radial is [ggh | h], its weight [W ; ggW]).
            wp, k = weighted_paths(paths), h.shape[1]
            m_h, m_W = bool(n_h and ggW is not None), bool(n_W and ggh is not None)
            r, rw = (ggh, W) if ggW is None else (h, ggW) if ggh is None else (
                torch.cat([ggh, h], 1), torch.cat([W, ggW], 0))  # fmt: skip
            if n_g:
                d_g = _add(d_g, fwd(x, y, r, rw, wp))
            if n_x or n_y or m_h or m_W:
                tx, ty, th, tW = bwd(x, y, r, rw, [n_x, n_y, m_h, m_W], wp)
                d_x = _add(d_x, tx) if n_x else d_x
                d_y = _add(d_y, ty) if n_y else d_y
                d_h = _add(d_h, th[:, -k:]) if m_h else d_h  # the ggW columns
                d_W = _add(d_W, tW[:k]) if m_W else d_W  # the ggh rows
        return d_g, d_x, d_y, d_h, d_W, *([None] * 6)

    torch.library.register_autograd(
        f"{ns}::conv_radial_backward", backward_backward, setup_context=setup_backward
    )

    if fused:

        @torch.library.register_fake(f"{ns}::conv_radial_double_backward")
        def _(g, x, edge_attr, radial, radial_weight, ggx, ggy, ggh, ggW, src, dst, paths, cgi,
              cgv, mask):  # fmt: skip
            op = f"{ns}::conv_radial_double_backward"
            fake_conv_args(op, x, edge_attr, None, src, dst, paths, cgi, cgv, radial=radial,
                           radial_weight=radial_weight, grad_out=g, grad_grad_x=ggx,
                           grad_grad_edge_attr=ggy, grad_grad_radial=ggh,
                           grad_grad_radial_weight=ggW)  # fmt: skip
            inputs = (g, x, edge_attr, radial, radial_weight)
            return tuple(t.new_empty(list(t.shape) if m else [0]) for m, t in zip(mask, inputs))


def register_tabulated(ns: str) -> None:
    """Fake kernels of ``{ns}::conv_tabulated`` and its backward (the autograd is C++'s)."""

    @torch.library.register_fake(f"{ns}::conv_tabulated")
    def _(x, edge_attr, r, table, step, src, dst, num_nodes, paths, cgi, cgv, dim_out):
        fake_conv_args(f"{ns}::conv_tabulated", x, edge_attr, None, src, dst, paths, cgi, cgv,
                       r=r, table=table)  # fmt: skip
        return x.new_empty(num_nodes, dim_out)

    @torch.library.register_fake(f"{ns}::conv_tabulated_backward")
    def _(grad_out, x, edge_attr, r, table, step, src, dst, paths, cgi, cgv, mask):
        fake_conv_args(f"{ns}::conv_tabulated_backward", x, edge_attr, None, src, dst, paths, cgi,
                       cgv, r=r, table=table, grad_out=grad_out)  # fmt: skip
        inputs = (x, edge_attr, r)
        return tuple(t.new_empty(list(t.shape) if m else [0]) for m, t in zip(mask, inputs))


register("fastcg")
register_radial("fastcg")
register_tabulated("fastcg")
