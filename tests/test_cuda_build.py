"""The CUDA C++ kernels are built and registered whenever torch and nvcc allow, even with no GPU."""

import pytest
import torch
from torch.utils import cpp_extension

import fastcg  # noqa: F401  (loads the library)

CUDA_BUILD = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
CUDA_OPS = [  # ops with CUDA C++ kernels so far; the others run through Triton on GPUs
    "spherical_harmonics",
    "spherical_harmonics_backward",
    "spherical_harmonics_double_backward",
]


@pytest.mark.skipif(not CUDA_BUILD, reason="CPU-only torch or no nvcc: no CUDA sources built")
@pytest.mark.parametrize("op", CUDA_OPS)
def test_cuda_kernel_registered(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastcg::{op}", "CUDA")


def test_library_imports_and_runs_on_cpu_without_a_gpu():
    assert fastcg.spherical_harmonics(torch.zeros(2, 3), 2).shape == (2, 9)
