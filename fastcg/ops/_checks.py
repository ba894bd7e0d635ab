"""Input checks run once at the op boundary (TorchScript-compatible)."""

import torch
from torch import Tensor


def compiling() -> bool:
    """True while torch.compile or make_fx traces (nequip's AOTInductor export runs make_fx):
    value checks that need a host sync are skipped there."""
    if torch.jit.is_scripting():
        return False
    if torch.compiler.is_compiling():
        return True
    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.PROXY) is not None


def check_float(t: Tensor, name: str) -> None:
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def check_same(t: Tensor, ref: Tensor, name: str, ref_name: str) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def check_last_dim(t: Tensor, size: int, name: str) -> None:
    if t.dim() == 0 or t.shape[-1] != size:
        raise ValueError(f"{name} must have last dimension {size}, got shape {list(t.shape)}")


def check_dims(t: Tensor, dims: int, name: str) -> None:
    if t.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D, got shape {list(t.shape)}")


def check_index(index: Tensor, name: str, ref: Tensor) -> Tensor:
    """An index tensor's metadata (dtype, device, 1-D), returned as contiguous int64.

    Its values are checked by the kernels (C++: IndexError; CUDA C++ and Triton: a device-side
    assert, no host sync; the reference: :func:`check_index_values`), never here: that would
    cost a pass over the data, and on a GPU a host sync, per call.
    """
    if index.dtype != torch.int64 and index.dtype != torch.int32:
        raise TypeError(f"{name} must be an int64 or int32 tensor, got {index.dtype}")
    if index.device != ref.device:
        raise ValueError(f"{name} is on {index.device} but the features are on {ref.device}")
    if index.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {list(index.shape)}")
    return index.to(torch.int64).contiguous()


def check_index_values(index: Tensor, name: str, size: int, size_name: str) -> None:
    """Every entry of ``index`` in ``[0, size)`` (the reference backend's check: a host sync)."""
    if index.numel() > 0 and not compiling():
        lo = int(index.min())
        hi = int(index.max())
        if lo < 0:
            raise IndexError(f"{name} contains a negative index ({lo})")
        if hi >= size:
            raise IndexError(f"{name} contains index {hi}, out of range for {size_name}={size}")


def check_weights(w: Tensor | None, numel: int, like: Tensor, name: str) -> Tensor:
    """Weights as [numel] (shared) or [..., numel]; None only when the op has no weights."""
    if w is None:
        if numel != 0:
            raise ValueError(f"{name} is None but the descriptor needs {numel} weights")
        return like.new_empty(0)
    check_float(w, name)
    check_same(w, like, name, "the features")
    check_last_dim(w, numel, name)
    return w


# ------------------------------------------------------------------------------- fake kernels
# The fake (meta) kernels of the registered ops check what metadata alone can tell, as the C++
# kernels do: an operand on another device (say ``meta`` among CPU tensors, where the dispatcher
# picks the Meta kernel) is a RuntimeError naming it, never an uninitialised result. No value is
# read, so nothing syncs with the device.


def fake_same_device(op: str, **tensors: Tensor | None) -> None:
    """Every given tensor (None: an absent optional) on the first one's device; ``op`` is the
    qualified name the message starts with (``fastcg::conv``)."""
    ref_name, ref = "", None
    for name, t in tensors.items():
        if t is None:
            continue
        if ref is None:
            ref_name, ref = name, t
        elif t.device != ref.device:
            raise RuntimeError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")


def fake_dtype(op: str, dtype: torch.dtype, **tensors: Tensor | None) -> None:
    """Every given tensor (None: an absent optional) of this dtype."""
    for name, t in tensors.items():
        if t is not None and t.dtype != dtype:
            raise RuntimeError(f"{op}: {name} must be {dtype}, got {t.dtype}")
