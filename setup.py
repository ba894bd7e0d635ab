"""Builds fastcg._C: C++ CPU kernels always, CUDA kernels when torch has CUDA and nvcc exists."""

import glob
import importlib.util
import os

import torch
from setuptools import setup
from torch.utils import cpp_extension

# torch picks the C++ standard (C++20 for 2.14). -fno-math-errno -fno-trapping-math, as PyTorch's
# own build: without them gcc keeps every sqrt scalar (errno, and a guarded division must not
# trap); the values are the same IEEE results either way.
CXX_FLAGS = ["-O3", "-g0", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
# No GPU at build time: without a list torch would compile for every architecture it knows.
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")


def want_cuda() -> bool:
    if os.environ.get("FASTCG_NO_CUDA", "0") == "1" or torch.version.cuda is None:
        return False
    return cpp_extension.CUDA_HOME is not None and bool(glob.glob("csrc/cuda/*.cu"))


def cuda_includes() -> list[str]:
    """CUDA library headers (cusparse.h, ...) that ATen/cuda includes: pip wheels ship them."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec else []
    return [p for r in roots for p in glob.glob(os.path.join(r, "cu*", "include"))]


def extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    kwargs = dict(
        name="fastcg._C",
        include_dirs=[os.path.abspath("csrc")],
        extra_link_args=["-fopenmp"],
    )
    if want_cuda():
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        kwargs["include_dirs"] += cuda_includes()
        flags = {"cxx": CXX_FLAGS + ["-DFASTCG_WITH_CUDA"], "nvcc": NVCC_FLAGS}
        return cpp_extension.CUDAExtension(sources=sources, extra_compile_args=flags, **kwargs)
    flags = {"cxx": CXX_FLAGS}
    return cpp_extension.CppExtension(sources=sources, extra_compile_args=flags, **kwargs)


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
