"""One registered boundary per op: typed wrappers, input checks, fake kernels, autograd.

Each op has one entry point, taking its descriptor's NamedTuple of tables
(``descriptor.tables(device)``: what TorchScript and the ``fastcg.nn`` modules pass) or, in eager
Python, the descriptor itself.
"""

from .conv import conv, conv_radial, conv_tabulated, sort_edges, spline_weights
from .linear import linear
from .scatter import scatter_sum
from .spherical_harmonics import spherical_harmonics
from .symmetric_contraction import (
    SymmetricContractionDescriptor,
    symmetric_contraction,
    symmetric_contraction_descriptor,
)
from .tensor_product import tensor_product

__all__ = [
    "conv",
    "conv_radial",
    "conv_tabulated",
    "linear",
    "scatter_sum",
    "sort_edges",
    "spline_weights",
    "spherical_harmonics",
    "SymmetricContractionDescriptor",
    "symmetric_contraction",
    "symmetric_contraction_descriptor",
    "tensor_product",
]
