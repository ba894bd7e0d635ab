"""fastcg against e3nn 0.4.4 (what mace-torch 0.3.16 pins), on torch >= 2.6."""

import os
import subprocess
import sys

import pytest
import torch

import fastcg
import fastcg.nn as fnn
from fastcg.irreps import o3

pytest.importorskip("mace")


def test_environment_is_e3nn_044():
    import e3nn

    assert e3nn.__version__ == "0.4.4"


def test_users_need_no_flag():
    # a fresh process without TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD: importing e3nn through fastcg works
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    code = "import fastcg.nn as f; print(f.Linear('2x0e', '1x0e').weight.shape)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in run.stderr


def test_spherical_harmonics_match():
    v = torch.randn(20, 3, dtype=torch.float64)
    for norm in ("component", "norm", "integral"):
        ref = o3().spherical_harmonics(list(range(5)), v, True, norm)
        torch.testing.assert_close(fastcg.spherical_harmonics(v, 4, True, norm), ref,
                                   rtol=0, atol=1e-10)  # fmt: skip


def test_modules_match_and_load_state_dicts():
    torch.set_default_dtype(torch.float64)
    try:
        tp = o3().FullyConnectedTensorProduct("3x0e+2x1o+1x2e", "1x0e+1x1o+1x2e", "2x0e+3x1o+1x2e")
        lin = o3().Linear("3x0e+2x1o", "4x0e+1x1o", biases=True)
        sh = o3().SphericalHarmonics([0, 1, 2], True, "component")
        x1, x2 = torch.randn(6, tp.irreps_in1.dim), torch.randn(6, tp.irreps_in2.dim)
        mine = fnn.FullyConnectedTensorProduct.from_e3nn(tp)
        torch.testing.assert_close(mine(x1, x2), tp(x1, x2), rtol=0, atol=1e-10)
        twin = fnn.Linear("3x0e+2x1o", "4x0e+1x1o", biases=True)
        twin.load_state_dict(lin.state_dict())  # e3nn 0.4.4 state_dict, strict
        x = torch.randn(6, lin.irreps_in.dim)
        torch.testing.assert_close(twin(x), lin(x), rtol=0, atol=1e-10)
        v = torch.randn(6, 3)
        torch.testing.assert_close(fnn.SphericalHarmonics.from_e3nn(sh)(v), sh(v),
                                   rtol=0, atol=1e-10)  # fmt: skip
    finally:
        torch.set_default_dtype(torch.float32)
