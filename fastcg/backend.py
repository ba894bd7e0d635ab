"""Backend selection: which implementation runs behind an op call.

``reference`` is the pure-PyTorch oracle; ``cpu`` the C++ kernels; ``triton`` the Triton kernels
(on CPU tensors only under ``TRITON_INTERPRET=1``); ``cuda`` the CUDA C++ kernels. ``None`` (the
default) picks C++ for CPU tensors and, per op, Triton, then CUDA C++, then the reference for
CUDA tensors (an op lacking a kernel in one backend falls through to the next).

The choice made by ``use_backend`` is per thread: a ``with`` block in one thread never changes
what another thread runs, and a new thread starts with the automatic choice (or
``FASTCG_BACKEND``), like a fresh process.
"""

import contextlib
import functools
import importlib
import os
import threading
from collections.abc import Iterator

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")


class _Forced(threading.local):
    """This thread's stack of ``use_backend`` contexts (threading.local: one per thread).

    torch.compile traces and guards on it like a module global: a compiled function recompiles
    when the backend it was traced under changes.
    """

    def __init__(self) -> None:
        self.stack: list[str] = []


_forced = _Forced()


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown fastcg backend {name!r}; choose one of {BACKENDS}")
    return name


def get_backend() -> str | None:
    """The backend forced in this thread by ``use_backend``, else by ``FASTCG_BACKEND``; None
    means automatic.

    >>> with use_backend("reference"):
    ...     get_backend()
    'reference'
    """
    stack = _forced.stack
    if stack:
        return stack[-1]
    env = os.environ.get("FASTCG_BACKEND")
    return _check(env) if env else None


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force a backend inside a ``with`` block, in the calling thread only.

    >>> with use_backend("reference"):
    ...     pass
    """
    stack = _forced.stack  # this thread's, even if the body hands work to other threads
    stack.append(_check(name))
    try:
        yield
    finally:
        stack.pop()


@functools.cache
def _triton_namespace() -> str | None:
    """Import fastcg.triton (it registers the kernels of the ``fastcg_triton`` ops, whose schemas
    the compiled library defines) when it is available."""
    try:
        importlib.import_module("fastcg.triton")
    except ImportError:
        return None
    return "fastcg_triton" if _triton_has("fastcg_triton", "tensor_product") else None


def _has_cuda_kernels(op: str = "tensor_product") -> bool:
    """Whether fastcg was built with a CUDA C++ kernel for ``fastcg::{op}``."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastcg::{op}", "CUDA")


def _triton_has(ns: str | None, op: str) -> bool:
    """Whether the Triton backend has a kernel for ``op`` (the schema alone is not enough)."""
    return ns is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"{ns}::{op}", "CUDA")


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
