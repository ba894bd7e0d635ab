"""Fused equivariant convolution: gather, tensor product and scatter in one op."""

from typing import Any, Optional

from torch import Tensor

from ..ops import conv_radial_tables, conv_tables
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
        return conv_tables(
            x, edge_attr, w, src, dst, num_nodes, self._paths, self._cg_index, self._cg_value,
            self._in1_dim, self._in2_dim, self._out_dim, self.weight_numel,
        )  # fmt: skip

    def forward_radial(
        self, x: Tensor, edge_attr: Tensor, radial: Tensor, radial_weight: Tensor, src: Tensor,
        dst: Tensor, num_nodes: int,
    ) -> Tensor:  # fmt: skip
        """``forward(x, edge_attr, radial @ radial_weight, src, dst, num_nodes)`` without forming
        the per-edge weights (:func:`fastcg.ops.conv_radial`): ``radial`` is the last hidden
        layer of the radial MLP ``[E, K]``, ``radial_weight`` its last linear layer ``[K, ·]``."""
        if self.shared_weights or self.internal_weights:
            raise ValueError("forward_radial needs per-edge, external weights")
        return conv_radial_tables(
            x, edge_attr, radial, radial_weight, src, dst, num_nodes, self._paths,
            self._cg_index, self._cg_value, self._in1_dim, self._in2_dim, self._out_dim,
            self.weight_numel,
        )  # fmt: skip


class RadialFusedConv(TensorProductConv):
    """A :class:`TensorProductConv` that can take over a radial MLP's last linear layer.

    The base of the frameworks' conv modules (mace-torch's, SevenNet's): after
    :meth:`fuse_radial`, the weights they pass are the MLP's last hidden layer and
    :meth:`_forward_fused` applies the last layer inside the conv (:func:`fastcg.ops.conv_radial`).
    """

    # class defaults: from_e3nn builds instances without __init__
    _radial_weight: Optional[Tensor] = None  # noqa: UP045 (TorchScript reads this annotation)
    _radial_scale: float = 1.0

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

    def _forward_fused(
        self, x: Tensor, edge_attr: Tensor, weight: Tensor, src: Tensor, dst: Tensor,
        num_nodes: int,
    ) -> Tensor:  # fmt: skip
        # the conv with the fused last layer once fuse_radial ran, else with whole weights
        w = self._radial_weight
        if w is not None:
            return self.forward_radial(
                x, edge_attr, weight, w * self._radial_scale, src, dst, num_nodes
            )
        return self._forward(x, edge_attr, weight, src, dst, num_nodes)
