"""Builds fastcg._C: C++ CPU kernels always; CUDA kernels where a GPU is visible or
``FASTCG_BUILD_CUDA=1`` asks (``make test`` does), when torch has CUDA and nvcc exists.
``FASTCG_NO_CUDA=1`` leaves them out in any case."""

import glob
import importlib.util
import os
import sys

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
# One compile per core: ninja's default (cores + 2) makes the long files share a core.
os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))


def env_flag(name: str) -> bool:
    """An on/off environment variable: unset, "0" or "1"."""
    value = os.environ.get(name, "0")
    if value not in ("", "0", "1"):
        raise SystemExit(f"setup.py: {name} must be 0 or 1, got {value!r}")
    return value == "1"


def want_cuda() -> bool:
    """Whether to compile csrc/cuda (see the module docstring)."""
    # Compiling the CUDA kernels was most of the 18 minutes a fresh `make demo` took on 2 cores,
    # and a CPU-only user cannot run them: built only where they can run or are asked for. CI
    # asks, so that they still compile, register and pass the resource check.
    if env_flag("FASTCG_NO_CUDA"):
        return False
    asked = env_flag("FASTCG_BUILD_CUDA")
    if not (asked or torch.cuda.is_available()):
        return False
    can = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if asked and not can:
        msg = "FASTCG_BUILD_CUDA=1, but torch has no CUDA or nvcc is missing: CPU kernels only"
        print(f"setup.py: {msg}", file=sys.stderr)
    return can and bool(glob.glob("csrc/cuda/*.cu"))


def cuda_includes() -> list[str]:
    """CUDA library headers (cusparse.h, ...) that ATen/cuda includes: pip wheels ship them."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec else []
    return [p for r in roots for p in glob.glob(os.path.join(r, "cu*", "include"))]


# The slowest files to compile, started first: ninja takes edges in this order, and on a 2-core
# machine the last long file to start sets the build's end (the high-lmax harmonics take ~3 min).
SLOW_FIRST = ("csrc/cpu/spherical_harmonics_high.cpp", "csrc/cpu/spherical_harmonics.cpp")


def extension():
    found = glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp")
    sources = [s for s in SLOW_FIRST if s in found] + sorted(set(found) - set(SLOW_FIRST))
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


# FASTCG_NO_EXTENSION=1: metadata and entry points only, no compiling (for a second environment
# that uses the library already built in place by the first: `make setup-fw`).
setup(
    ext_modules=[] if env_flag("FASTCG_NO_EXTENSION") else [extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
