"""e3nn-compatible modules on fastcg ops: same constructor arguments, weights and state_dict keys.

An e3nn state_dict loads into the fastcg module unchanged, every module has
``from_e3nn(module)`` to build the twin of an existing e3nn module, and ``twin(module)`` picks the
right class (:func:`fastcg.convert` uses it to swap the e3nn modules inside a model).
"""

import torch

from .conv import RadialFusedConv, RadialTable, TensorProductConv, radial_table
from .fc import FullyConnectedNet
from .gate import Activation, Gate
from .linear import Linear
from .species_linear import SpeciesLinear
from .spherical_harmonics import SphericalHarmonics, spherical_harmonics
from .symmetric_contraction import SymmetricContraction
from .tensor_product import ElementwiseTensorProduct, FullyConnectedTensorProduct, TensorProduct

__all__ = [
    "Activation",
    "ElementwiseTensorProduct",
    "FullyConnectedNet",
    "FullyConnectedTensorProduct",
    "Gate",
    "Linear",
    "RadialFusedConv",
    "RadialTable",
    "SpeciesLinear",
    "SphericalHarmonics",
    "SymmetricContraction",
    "TensorProduct",
    "TensorProductConv",
    "radial_table",
    "spherical_harmonics",
    "twin",
]


def twin(module: torch.nn.Module) -> torch.nn.Module | None:
    """The fastcg twin of an e3nn module, or None when there is none (or it is unsupported)."""
    if not type(module).__module__.startswith("e3nn."):
        return None
    from e3nn import nn as e3nn_nn  # e3nn is already imported: ``module`` is one of its modules
    from e3nn import o3

    # exact subclasses first; other TensorProduct subclasses become plain TensorProducts
    pairs = [
        (o3.FullyConnectedTensorProduct, FullyConnectedTensorProduct),
        (o3.ElementwiseTensorProduct, ElementwiseTensorProduct),
        (o3.TensorProduct, TensorProduct),
        (o3.Linear, Linear),
        (o3.SphericalHarmonics, SphericalHarmonics),
        (e3nn_nn.Gate, Gate),
        (e3nn_nn.Activation, Activation),
        (e3nn_nn.FullyConnectedNet, FullyConnectedNet),
    ]
    for e3nn_cls, cls in pairs:
        if isinstance(module, e3nn_cls):
            try:
                return cls.from_e3nn(module)
            except NotImplementedError:  # e.g. uvuv paths, Linear with f_in, custom activations
                return None
    return None
