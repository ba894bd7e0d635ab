"""Fused equivariant convolution: gather, tensor product and scatter in one op."""

from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor

from ..ops import conv, conv_radial, conv_tabulated, spline_weights
from .fc import FullyConnectedNet
from .tensor_product import TensorProduct


class TensorProductConv(TensorProduct):
    """``zeros(num_nodes, ·).index_add_(0, dst, TensorProduct(...)(x[src], edge_attr, weights))``.

    Takes ``e3nn.o3.TensorProduct``'s arguments (weights default to per edge and external, as in
    NequIP / MACE interaction blocks) and never materialises the per-edge messages. Edges point
    from ``src`` (sender) to ``dst`` (receiver). ``from_e3nn(tp)`` builds one from an e3nn
    ``TensorProduct`` used that way.

    >>> conv = TensorProductConv("4x0e", "1x0e+1x1o", "4x0e+4x1o",
    ...                          [(0, 0, 0, "uvu", True), (0, 1, 1, "uvu", True)])
    >>> x, y, w = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, conv.weight_numel)
    >>> src, dst = torch.tensor([0, 1, 2, 0, 1]), torch.tensor([1, 2, 0, 2, 0])
    >>> conv(x, y, w, src, dst, 3).shape
    torch.Size([3, 16])
    """

    def __init__(
        self,
        irreps_in1: Any,
        irreps_in2: Any,
        irreps_out: Any,
        instructions: list[tuple],
        shared_weights: bool = False,
        internal_weights: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            irreps_in1, irreps_in2, irreps_out, instructions, shared_weights=shared_weights,
            internal_weights=internal_weights, **kwargs,
        )  # fmt: skip

    def forward(  # type: ignore[override]
        self, x: Tensor, edge_attr: Tensor, weight: Tensor | None, src: Tensor, dst: Tensor,
        num_nodes: int,
    ) -> Tensor:  # fmt: skip
        """Messages ``TP(x[src], edge_attr, weight)`` summed into their ``dst`` nodes."""
        return self._forward(x, edge_attr, weight, src, dst, num_nodes)

    def _forward(
        self, x: Tensor, edge_attr: Tensor, weight: Tensor | None, src: Tensor, dst: Tensor,
        num_nodes: int,
    ) -> Tensor:  # fmt: skip
        # forward's body, for subclasses with other forward signatures (TorchScript: no super())
        w = self._get_weights(weight)
        if w is not None and not self.shared_weights and w.dim() != 2:
            raise ValueError(f"weight must have shape [num_edges, {self.weight_numel}]")
        return conv(x, edge_attr, w, src, dst, num_nodes, self.tables())

    def forward_radial(
        self, x: Tensor, edge_attr: Tensor, radial: Tensor, radial_weight: Tensor, src: Tensor,
        dst: Tensor, num_nodes: int,
    ) -> Tensor:  # fmt: skip
        """``forward(x, edge_attr, radial @ radial_weight, src, dst, num_nodes)`` without forming
        the per-edge weights (:func:`fastcg.ops.conv_radial`): ``radial`` is the last hidden
        layer of the radial MLP ``[E, K]``, ``radial_weight`` its last linear layer ``[K, ·]``."""
        if self.shared_weights or self.internal_weights:
            raise ValueError("forward_radial needs per-edge, external weights")
        return conv_radial(x, edge_attr, radial, radial_weight, src, dst, num_nodes, self.tables())


class RadialFusedConv(TensorProductConv):
    """A :class:`TensorProductConv` that can take over a radial MLP's last linear layer.

    The base of the frameworks' conv modules (mace-torch's, SevenNet's): after
    :meth:`fuse_radial`, the weights they pass are the MLP's last hidden layer and
    :meth:`_forward_fused` applies the last layer inside the conv (:func:`fastcg.ops.conv_radial`).
    """

    # class defaults: from_e3nn builds instances without __init__
    _radial_weight: Optional[Tensor] = None  # noqa: UP045 (TorchScript reads this annotation)
    _radial_scale: float = 1.0
    _radial_table: Optional[Tensor]  # noqa: UP045 (no class default: a buffer once tabulated)
    _table_step: float = 0.0

    def _setup(self, *args: Any, **kwargs: Any) -> None:
        super()._setup(*args, **kwargs)
        # instance attributes, typed by the class annotations: TorchScript sees only those
        self._radial_scale, self._table_step = 1.0, 0.0
        object.__setattr__(self, "_radial_weight", None)
        object.__setattr__(self, "_radial_table", None)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        # modules pickled before tables existed: no attribute at all
        if "_radial_table" not in self._buffers:
            self.__dict__.setdefault("_radial_table", None)

    def fuse_radial(self, net: FullyConnectedNet) -> None:
        """Take over ``net``'s last layer (``net`` then returns its last hidden layer)."""
        layer = net.defer_last()
        # The same Parameter object, held as a plain attribute rather than registered: it keeps
        # its one name in the net (the framework's state_dicts load unchanged), .to() / .double()
        # / optimizers update it in place, deepcopy and pickling keep the sharing, and
        # TorchScript sees a Tensor attribute.
        object.__setattr__(self, "_radial_weight", layer.weight)
        self._radial_scale = layer.scale

    def try_fuse_radial(self, net: Any) -> bool:
        """:meth:`fuse_radial` where it applies (``net`` a fastcg ``FullyConnectedNet`` ending in a
        linear layer, per-edge weights, not fused yet); whether it did."""
        if not isinstance(net, FullyConnectedNet) or self.shared_weights:
            return False
        if self._radial_weight is not None:
            return False
        try:
            self.fuse_radial(net)
        except ValueError:  # an activated last layer: the weights stay whole
            return False
        return True

    def tabulate(self, table: "RadialTable") -> None:
        """From now on read the weights from ``table`` (:func:`radial_table`): the weights
        argument of :meth:`_forward_fused` is then the edge lengths ``[E]`` or ``[E, 1]``. An
        approximation for MD (first derivatives only), opted into by the caller."""
        if table.values.shape[-1] != self.weight_numel:
            raise ValueError(
                f"the table has {table.values.shape[-1]} weights per edge, the conv "
                f"{self.weight_numel}"
            )
        # a buffer (moves with .to() / .float()) in place of _setup's plain None
        self.__dict__.pop("_radial_table", None)
        self.register_buffer("_radial_table", table.values, persistent=False)
        self._table_step = table.step

    def _forward_fused(
        self, x: Tensor, edge_attr: Tensor, weight: Tensor, src: Tensor, dst: Tensor,
        num_nodes: int,
    ) -> Tensor:  # fmt: skip
        # the conv on tabulated weights once tabulate ran (weight: the edge lengths), with the
        # fused last layer once fuse_radial ran, else with whole weights
        table = self._radial_table
        if table is not None:
            return conv_tabulated(
                x, edge_attr, weight.reshape(-1), table, self._table_step, src, dst, num_nodes,
                self.tables(),
            )  # fmt: skip
        w = self._radial_weight
        if w is not None:
            return self.forward_radial(
                x, edge_attr, weight, w * self._radial_scale, src, dst, num_nodes
            )
        return self._forward(x, edge_attr, weight, src, dst, num_nodes)


class RadialTable(NamedTuple):
    """A tabulated radial function (:func:`radial_table`): ``values [G + 1, 2, numel]`` (values
    and step-scaled derivatives at ``r = i step``), and the largest error measured at the
    midpoints between knots, absolute and relative to the largest ``|w|``."""

    values: Tensor
    step: float
    max_error: float
    max_rel_error: float


def radial_table(
    fn: Callable[[Tensor], Tensor], r_max: float, step: float = 0.01,
    dtype: torch.dtype = torch.float32,
) -> RadialTable:  # fmt: skip
    """Tabulate ``fn: r [n] -> weights [n, numel]`` (evaluated in float64) on ``[0, r_max]`` for
    :func:`fastcg.conv_tabulated`: cubic Hermite knots every ``step`` with ``fn``'s exact
    derivatives (autograd), so the error is O(step^4) (O(step^3) for the derivatives); it is
    measured at the midpoints and returned with the table."""
    if not (r_max > 0 and step > 0):
        raise ValueError(f"r_max and step must be positive, got {r_max}, {step}")
    g = max(1, round(r_max / step))
    step = r_max / g
    # r = 0 is a removable singularity of the usual radial bases (sin(x) / x): knot 0 sits at
    # 1e-6 step, where that derivative has lost only ~1e-10 to cancellation and a smooth even
    # function has moved by ~1e-12 step^2
    r = (torch.arange(g + 1, dtype=torch.float64) * step).clamp(min=1e-6 * step)
    values, derivs = _value_and_derivative(fn, r)
    table = torch.stack([values, derivs * step], 1)
    with torch.no_grad():
        mid = (torch.arange(g, dtype=torch.float64) + 0.5) * step
        err = (spline_weights(mid, table, step) - fn(mid)).abs().max().item()
        scale = values.abs().max().item()
    return RadialTable(table.to(dtype), step, err, err / scale if scale > 0 else 0.0)


def _value_and_derivative(fn: Callable[[Tensor], Tensor], r: Tensor) -> tuple[Tensor, Tensor]:
    """``fn(r)`` and ``d fn(r) / dr`` row by row, by two reverse passes (a forward-mode tangent
    as the derivative of a vector-Jacobian product: the fastcg modules' autograd.Functions have
    double backward but no jvp)."""
    with torch.enable_grad():
        r = r.detach().requires_grad_()
        w = fn(r)
        u = torch.zeros_like(w, requires_grad=True)
        (vjp,) = torch.autograd.grad(w, r, u, create_graph=True)
        (d,) = torch.autograd.grad(vjp, u, torch.ones_like(vjp))
    return w.detach(), d.detach()
