"""One registered boundary per op: typed wrappers, input checks, fake kernels, autograd."""

from .conv import (
    conv,
    conv_radial,
    conv_radial_tables,
    conv_tables,
    conv_tabulated,
    conv_tabulated_tables,
    sort_edges,
    spline_weights,
)
from .linear import linear, linear_tables
from .scatter import scatter_sum
from .spherical_harmonics import spherical_harmonics
from .symmetric_contraction import (
    SymmetricContractionDescriptor,
    symmetric_contraction,
    symmetric_contraction_descriptor,
    symmetric_contraction_tables,
)
from .tensor_product import tensor_product, tensor_product_tables

__all__ = [
    "conv",
    "conv_radial",
    "conv_radial_tables",
    "conv_tables",
    "conv_tabulated",
    "conv_tabulated_tables",
    "linear",
    "linear_tables",
    "scatter_sum",
    "sort_edges",
    "spline_weights",
    "spherical_harmonics",
    "SymmetricContractionDescriptor",
    "symmetric_contraction",
    "symmetric_contraction_descriptor",
    "symmetric_contraction_tables",
    "tensor_product",
    "tensor_product_tables",
]
