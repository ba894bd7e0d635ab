"""One registered boundary per op: typed wrappers, input checks, fake kernels, autograd."""

from .conv import conv, conv_tables, sort_edges
from .linear import linear, linear_tables
from .scatter import scatter_sum
from .spherical_harmonics import spherical_harmonics
from .tensor_product import tensor_product, tensor_product_tables

__all__ = [
    "conv",
    "conv_tables",
    "linear",
    "linear_tables",
    "scatter_sum",
    "sort_edges",
    "spherical_harmonics",
    "tensor_product",
    "tensor_product_tables",
]
