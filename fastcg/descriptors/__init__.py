"""Descriptors: the math of an op as data (plain Python, cached), packed once into the tables
its kernels read, one TorchScript-friendly NamedTuple per descriptor (``descriptor.tables()``).

``tensor_product``: e3nn's TensorProduct (also what every descriptor shares: the specification
errors, connection modes, per-device tables); ``linear``: e3nn's Linear;
``symmetric_contraction``: MACE's product basis.
"""

from .linear import (
    LINEAR_COLUMNS,
    LinCol,
    LinearDescriptor,
    LinearTables,
    linear_descriptor,
    linear_from_e3nn,
)
from .symmetric_contraction import (
    SC_ENTRY_COLUMNS,
    SC_MONO_COLUMNS,
    SC_PAIR_COLUMNS,
    ScEntryCol,
    ScMonoCol,
    ScPairCol,
    SymmetricContractionDescriptor,
    SymmetricContractionTables,
    coupling_tensors,
    descriptor_from_coupling,
    symmetric_contraction_descriptor,
)
from .tensor_product import (
    E3NN_MODES,
    MODE_RULES,
    MODES,
    PATH_COLUMNS,
    InvalidIndex,
    InvalidSpecification,
    ModeRule,
    Path,
    PathCol,
    TPDescriptor,
    TPTables,
    UnknownMode,
    from_e3nn,
    mode_errors,
    tables_on,
    tensor_product_descriptor,
    weight_shape,
)

__all__ = [
    "E3NN_MODES",
    "LINEAR_COLUMNS",
    "MODES",
    "MODE_RULES",
    "PATH_COLUMNS",
    "SC_ENTRY_COLUMNS",
    "SC_MONO_COLUMNS",
    "SC_PAIR_COLUMNS",
    "InvalidIndex",
    "InvalidSpecification",
    "LinCol",
    "LinearDescriptor",
    "LinearTables",
    "ModeRule",
    "Path",
    "PathCol",
    "ScEntryCol",
    "ScMonoCol",
    "ScPairCol",
    "SymmetricContractionDescriptor",
    "SymmetricContractionTables",
    "TPDescriptor",
    "TPTables",
    "UnknownMode",
    "coupling_tensors",
    "descriptor_from_coupling",
    "from_e3nn",
    "linear_descriptor",
    "linear_from_e3nn",
    "mode_errors",
    "symmetric_contraction_descriptor",
    "tables_on",
    "tensor_product_descriptor",
    "weight_shape",
]
