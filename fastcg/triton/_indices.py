"""The value check of the Triton ops' index tensors (the Python boundary checks only metadata)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_index(index: Tensor, bound: int, name: str) -> None:
    """Every entry of ``index`` in ``[0, bound)``.

    On CPU tensors (Triton's interpreter, which does not catch out-of-bounds reads) an
    IndexError naming the first bad entry, as the C++ kernels raise; on a GPU a device-side
    assert (``torch._assert_async``), so the check costs no host sync.
    """
    if index.numel() == 0:
        return
    if index.device.type == "cpu":
        bad = ((index < 0) | (index >= bound)).nonzero()
        if bad.numel() > 0:
            i = int(bad[0, 0])
            raise IndexError(f"{name}[{i}] = {int(index[i])} is out of range [0, {bound})")
        return
    torch._assert_async(((index >= 0) & (index < bound)).all(), f"{name} out of range [0, {bound})")
