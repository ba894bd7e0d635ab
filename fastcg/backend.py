"""Backend selection: which implementation runs behind the registered ops.

``reference`` is the pure-PyTorch oracle; ``cpu`` the C++ kernels; ``triton`` and ``cuda`` are
reserved for the GPU kernels. ``None`` (the default) picks the fastest available for the device.
"""

import contextlib
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


@torch.jit.unused  # scripted models always run the compiled kernels
def use_reference(is_cuda: bool) -> bool:
    """Whether an op on a tensor of this device should run the pure-PyTorch reference."""
    name = get_backend()
    if name is None:
        return is_cuda  # no GPU kernels are registered yet: CUDA tensors take the reference
    if name in ("triton", "cuda"):
        raise NotImplementedError(f"the fastcg {name!r} backend is not implemented yet")
    return name == "reference"
