"""Autograd of trilinear ops out = T(a, b, c) (tensor product and conv).

The backward op returns the three transposes (T_a(g, b, c), T_b(a, g, c), T_c(a, b, g)), each
linear in its arguments, so the double backward is again forward and backward calls with
swapped arguments (as in OpenEquivariance): every derivative order runs on the same kernels.

Paths without weights make the op T_w(a, b, c) + T_u(a, b), which is not linear in c: terms
where the weight cotangent stands in for c must run the weighted paths only, hence the
``weighted`` flag of ``fwd`` / ``bwd``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ..descriptors import PathCol

Fwd = Callable[[Tensor, Tensor, Tensor, bool], Tensor]
Bwd = Callable[[Tensor, Tensor, Tensor, list[bool], bool], tuple[Tensor, Tensor, Tensor]]
_W_OFF = int(PathCol.w_off)  # a plain int, not an enum member, for code torch.compile traces


def _add(acc: Tensor | None, t: Tensor) -> Tensor:
    return t if acc is None else acc + t


def double_backward(
    a: Tensor, b: Tensor, c: Tensor, gg: tuple[Tensor | None, ...], needs: tuple[bool, ...],
    fwd: Fwd, bwd: Bwd,
) -> tuple[Tensor | None, ...]:  # fmt: skip
    """Gradients w.r.t. (g, a, b, c) of <gg, backward(g, a, b, c)>.

    ``gg`` holds the cotangents of the backward's three outputs (None where absent); ``needs``
    says which of (g, a, b, c) need a gradient; ``fwd(a, b, c, weighted)`` and
    ``bwd(a, b, c, mask, weighted)`` are the ops with the saved g bound, restricted to the
    weighted paths when ``weighted`` is true.
    """
    n_g, n_a, n_b, n_c = needs
    d_g = d_a = d_b = d_c = None
    gga, ggb, ggc = gg
    if gga is not None:
        if n_g:
            d_g = _add(d_g, fwd(gga, b, c, False))
        if n_b or n_c:
            _, tb, tc = bwd(gga, b, c, [False, n_b, n_c], False)
            d_b = _add(d_b, tb) if n_b else d_b
            d_c = _add(d_c, tc) if n_c else d_c
    if ggb is not None:
        if n_g:
            d_g = _add(d_g, fwd(a, ggb, c, False))
        if n_a or n_c:
            ta, _, tc = bwd(a, ggb, c, [n_a, False, n_c], False)
            d_a = _add(d_a, ta) if n_a else d_a
            d_c = _add(d_c, tc) if n_c else d_c
    if ggc is not None:
        if n_g:
            d_g = _add(d_g, fwd(a, b, ggc, True))
        if n_a or n_b:
            ta, tb, _ = bwd(a, b, ggc, [n_a, n_b, False], True)
            d_a = _add(d_a, ta) if n_a else d_a
            d_b = _add(d_b, tb) if n_b else d_b
    return d_g, d_a, d_b, d_c


def weighted_paths(paths: Tensor) -> Tensor:
    """Rows of a path table that carry a weight (w_off >= 0)."""
    return paths[paths[:, _W_OFF] >= 0].contiguous()


def present(grads: tuple[Tensor | None, ...], mask: list[bool]) -> tuple[Tensor | None, ...]:
    """Cotangents of the backward's outputs, None for outputs the mask left empty."""
    return tuple(g.contiguous() if (g is not None and m) else None for g, m in zip(grads, mask))
