"""A TorchScript model built from fastcg.nn runs where only the compiled library is loaded."""

import subprocess
import sys
import warnings

import torch

import fastcg
import fastcg.nn as fnn


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tp = fnn.FullyConnectedTensorProduct("4x0e+2x1o", "1x0e+1x1o", "3x0e+2x1o")
        self.lin = fnn.Linear("3x0e+2x1o", "2x0e")

    def forward(self, a, b):
        return self.lin(self.tp(a, b))


def test_scripted_model_runs_without_python_package(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated in favour of export
        scripted = torch.jit.script(_Model())
    scripted.save(str(tmp_path / "model.pt"))
    a, b = torch.randn(5, 10), torch.randn(5, 4)
    torch.save((a, b, scripted(a, b)), tmp_path / "io.pt")
    code = f"""
import sys, torch
torch.ops.load_library({fastcg.library_path()!r})
m = torch.jit.load({str(tmp_path / "model.pt")!r})
a, b, ref = torch.load({str(tmp_path / "io.pt")!r})
assert "fastcg" not in sys.modules and "e3nn" not in sys.modules
print(float((m(a, b) - ref).abs().max()))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert float(run.stdout.strip().splitlines()[-1]) == 0.0
