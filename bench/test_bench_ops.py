"""pytest-benchmark rows of every CPU op at a small scale: `pytest bench --benchmark-only`.

Not collected by the test command (which runs `pytest tests`). fastcg and its baseline (e3nn;
torch's index_add for scatter_sum; sphericart for spherical harmonics) in the same run, forward
and forward+backward, on bench/problems.py's problems shrunk by SCALE; `--benchmark-group-by=
group` puts each op's libraries side by side. bench/ops.py prints the full table.
"""

import pytest
import torch

pytest.importorskip("pytest_benchmark")

import ops  # noqa: E402  (bench/ is on sys.path: bench/conftest.py)
import problems  # noqa: E402

SCALE = 0.05
CASES = [  # (problem, op)
    ("conv-64x3", "conv"),
    ("conv-64x3", "tensor_product"),
    ("nequip-32", "conv"),
    ("sh-l3", "spherical_harmonics"),
    ("sh-l6", "spherical_harmonics"),
    ("conv-64x3-linear-up", "linear"),
    ("conv-64x3-linear-out", "linear"),
    ("conv-64x3-scatter", "scatter_sum"),
]


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def inputs():
    cache = {}

    def get(name):
        if name not in cache:
            t = problems.make_inputs(problems.ALL[name], torch.float32, "cpu", 0, SCALE)
            if "src" in t and "x" in t:
                t["x1"] = t["x"][t["src"]]
            cache[name] = t
        return cache[name]

    return get


def _libraries(op: str) -> list[str]:
    return [lib for lib in ops.LIBRARIES[op] if lib != "cuequivariance"]


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize(
    ("name", "op", "lib"), [(n, op, lib) for n, op in CASES for lib in _libraries(op)]
)
def test_op(benchmark, inputs, name, op, lib, backward):
    t = inputs(name)
    if lib == "sphericart":
        pytest.importorskip("sphericart.torch")
    benchmark.group = f"{name} {op} {'fwd+bwd' if backward else 'fwd'}"
    if backward:
        t, diff = ops._with_grad(op, t)
    f = ops.build(lib, op, t["problem"], t, torch.float32)
    if backward:
        g = torch.randn_like(f().detach())
        benchmark(lambda: torch.autograd.grad(f(), diff, g))
    else:
        benchmark(f)
