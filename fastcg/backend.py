"""Backend selection: which implementation runs behind an op call.

``reference`` is the pure-PyTorch oracle; ``cpu`` the C++ kernels; ``triton`` the Triton kernels
(on CPU tensors only under ``TRITON_INTERPRET=1``); ``cuda`` the CUDA C++ kernels. ``None`` (the
default) picks C++ for CPU tensors and, per op, Triton, then CUDA C++, then the reference for
CUDA tensors (an op lacking a kernel in one backend falls through to the next).
"""

import contextlib
import functools
import importlib
import os
from collections.abc import Iterator

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")
_forced: list[str] = []  # stack of use_backend() contexts


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown fastcg backend {name!r}; choose one of {BACKENDS}")
    return name


def get_backend() -> str | None:
    """The backend forced by ``use_backend`` or ``FASTCG_BACKEND``; None means automatic."""
    if _forced:
        return _forced[-1]
    env = os.environ.get("FASTCG_BACKEND")
    return _check(env) if env else None


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force a backend inside a ``with`` block.

    >>> with use_backend("reference"):
    ...     pass
    """
    _forced.append(_check(name))
    try:
        yield
    finally:
        _forced.pop()


@functools.cache
def _triton_namespace() -> str | None:
    """Import fastcg.triton (it registers the ``fastcg_triton`` ops) when it is available."""
    try:
        importlib.import_module("fastcg.triton")
    except ImportError:
        return None
    return "fastcg_triton" if hasattr(torch.ops.fastcg_triton, "tensor_product") else None


def _has_cuda_kernels(op: str = "tensor_product") -> bool:
    """Whether fastcg was built with a CUDA C++ kernel for ``fastcg::{op}``."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastcg::{op}", "CUDA")


def _triton_has(ns: str | None, op: str) -> bool:
    return ns is not None and hasattr(getattr(torch.ops, ns), op)


@torch.jit.unused  # scripted models always call the compiled torch.ops.fastcg kernels
def namespace(is_cuda: bool, op: str = "tensor_product") -> str:
    """Namespace to call ``op`` in for tensors on this device: "reference", "fastcg" or
    "fastcg_triton"."""
    name = get_backend()
    if name == "reference":
        return "reference"
    if name == "cpu" and is_cuda:
        raise ValueError("the 'cpu' backend cannot run CUDA tensors")
    if name == "cuda" and not (is_cuda and _has_cuda_kernels(op)):
        raise ValueError(
            f"the 'cuda' backend needs CUDA tensors and fastcg built with a CUDA kernel for {op}"
        )
    if name == "triton":
        ns = _triton_namespace()
        if ns is None:
            raise NotImplementedError("the fastcg 'triton' backend is not available here")
        return ns
    if name is not None or not is_cuda:
        return "fastcg"
    # automatic on CUDA tensors, per op: Triton, then CUDA C++, then the reference
    ns = _triton_namespace()
    if _triton_has(ns, op):
        return ns
    return "fastcg" if _has_cuda_kernels(op) else "reference"
