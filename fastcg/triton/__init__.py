"""Triton kernels behind the ``fastcg_triton`` op namespace (same schemas as ``fastcg``).

Importing this module imports triton (an ImportError means "no Triton backend") and registers
the launchers as the kernels of the ``fastcg_triton`` ops for CUDA tensors (and for CPU tensors,
which only Triton's interpreter can run: ``TRITON_INTERPRET=1`` set before this import). The
schemas of ``fastcg_triton`` and the forward ops' autograd come with the compiled library
(csrc/fastcg.cpp, csrc/autograd.cpp); ``fastcg.ops`` then adds the fake kernels and the backward
ops' autograd. The launchers are plain custom-op kernels, not ``triton_op``: those fail opcheck /
compile / export under the interpreter.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable

import torch
import triton  # noqa: F401  (ImportError here: fastcg.backend treats Triton as unavailable)

from .. import _C  # noqa: F401  (defines the fastcg_triton schemas: csrc/fastcg.cpp)
from . import conv, linear, scatter, spherical_harmonics, symmetric_contraction, tensor_product

NAMESPACE = "fastcg_triton"

KERNELS: dict[str, Callable] = {
    "spherical_harmonics": spherical_harmonics.spherical_harmonics,
    "spherical_harmonics_backward": spherical_harmonics.spherical_harmonics_backward,
    "spherical_harmonics_double_backward": spherical_harmonics.spherical_harmonics_double_backward,
    "tensor_product": tensor_product.tensor_product,
    "tensor_product_backward": tensor_product.tensor_product_backward,
    "conv": conv.conv,
    "conv_backward": conv.conv_backward,
    "scatter_sum": scatter.scatter_sum,
    "linear": linear.linear,
    "linear_backward": linear.linear_backward,
    "symmetric_contraction": symmetric_contraction.symmetric_contraction,
    "symmetric_contraction_backward": symmetric_contraction.symmetric_contraction_backward,
    "symmetric_contraction_double_backward": (
        symmetric_contraction.symmetric_contraction_double_backward
    ),
}


def _on_cpu(name: str, fn: Callable) -> Callable:
    """CPU tensors reach Triton only under the interpreter; say so instead of crashing."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise RuntimeError(
                f"fastcg_triton::{name} got CPU tensors: Triton runs them only with "
                "TRITON_INTERPRET=1 set before fastcg.triton is imported; use the 'cpu' backend"
            )
        return fn(*args, **kwargs)

    return run


_lib = torch.library.Library(NAMESPACE, "IMPL")
for _name, _fn in KERNELS.items():
    _lib.impl(_name, _fn, "CUDA")
    _lib.impl(_name, _on_cpu(_name, _fn), "CPU")

# fastcg.ops re-exports functions under the module names, hence import_module
_STEMS = ("tensor_product", "conv", "scatter", "linear", "spherical_harmonics",
          "symmetric_contraction")  # fmt: skip
for _stem in _STEMS:
    importlib.import_module(f"fastcg.ops.{_stem}").register(NAMESPACE)

__all__ = ["KERNELS", "NAMESPACE"]
