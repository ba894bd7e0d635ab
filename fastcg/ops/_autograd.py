"""Autograd registration of the forward ops, unless the compiled library already has it.

csrc/autograd.cpp registers C++ autograd kernels for the forward ops of ``fastcg`` (so that a
process that only loads the library, e.g. LAMMPS running a TorchScript model, gets forces);
their backward calls the ``*_backward`` ops, whose autograd stays registered here in Python
(double backward). A library built before csrc/autograd.cpp, and the ``fastcg_triton`` ops, get
the Python autograd.
"""

from collections.abc import Callable

import torch


def has_cpp_autograd(qualname: str) -> bool:
    """Whether the op ``ns::name`` already has an autograd kernel (csrc/autograd.cpp)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "Autograd")


def register_forward_autograd(
    qualname: str, backward: Callable, *, setup_context: Callable | None = None
) -> None:
    """``torch.library.register_autograd`` for a forward op without a C++ autograd kernel."""
    if not has_cpp_autograd(qualname):
        torch.library.register_autograd(qualname, backward, setup_context=setup_context)
