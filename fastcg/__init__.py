"""fastcg: fused spherical-harmonics, Clebsch-Gordan tensor-product and scatter kernels.

Drop-in for e3nn's hot paths: same numbers, registered as ``torch.ops.fastcg.*`` custom ops with
forward, backward and double backward.
"""

from pathlib import Path

import torch

from . import _C  # noqa: F401  (registers the op schemas and C++ kernels)
from .backend import get_backend, use_backend
from .convert import convert
from .descriptors import (
    InvalidSpecification,
    LinearDescriptor,
    LinearTables,
    TPDescriptor,
    TPTables,
    linear_descriptor,
    tensor_product_descriptor,
)
from .ops import (
    conv,
    conv_radial,
    conv_tabulated,
    linear,
    scatter_sum,
    sort_edges,
    spherical_harmonics,
    tensor_product,
)

__version__ = "0.1.0"


def library_path() -> str:
    """Path of the compiled library, for ``torch.ops.load_library`` in a process without fastcg."""
    return str(Path(_C.__file__))


__all__ = [
    "InvalidSpecification",
    "LinearDescriptor",
    "LinearTables",
    "TPDescriptor",
    "TPTables",
    "conv",
    "conv_radial",
    "conv_tabulated",
    "convert",
    "get_backend",
    "library_path",
    "linear",
    "linear_descriptor",
    "scatter_sum",
    "sort_edges",
    "spherical_harmonics",
    "tensor_product",
    "tensor_product_descriptor",
    "use_backend",
]

del torch
