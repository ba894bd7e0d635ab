"""Builds fastcg._C: C++ CPU kernels always, CUDA kernels when torch has CUDA and nvcc exists."""

import glob
import os

import torch
from setuptools import setup
from torch.utils import cpp_extension

CXX_FLAGS = ["-O3", "-g0", "-fopenmp"]  # torch picks the C++ standard (C++20 for 2.14)
NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr"]


def want_cuda() -> bool:
    if os.environ.get("FASTCG_NO_CUDA", "0") == "1" or torch.version.cuda is None:
        return False
    return cpp_extension.CUDA_HOME is not None and bool(glob.glob("csrc/cuda/*.cu"))


def extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    kwargs = dict(
        name="fastcg._C",
        include_dirs=[os.path.abspath("csrc")],
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    if want_cuda():
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        flags = {"cxx": CXX_FLAGS + ["-DFASTCG_WITH_CUDA"], "nvcc": NVCC_FLAGS}
        return cpp_extension.CUDAExtension(sources=sources, extra_compile_args=flags, **kwargs)
    flags = {"cxx": CXX_FLAGS}
    return cpp_extension.CppExtension(sources=sources, extra_compile_args=flags, **kwargs)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
