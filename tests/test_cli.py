"""`fastcg check` (what `make demo` runs) passes, covers every op, and can fail."""

import pytest
import torch

from fastcg import cli

OPS = ("spherical_harmonics", "tensor_product", "conv", "scatter_sum", "linear")


def test_check_passes_and_covers_every_op(capsys):
    assert cli.main(["check", "--quick"]) == 0
    table = capsys.readouterr().out
    for op in OPS:
        assert op in table
    for needle in ("float64", "float32", "reference", "cpu", "grad2", "species", "MACE-like"):
        assert needle in table
    assert "FAIL" not in table


def test_check_fails_when_an_op_is_wrong(monkeypatch, capsys):
    # the check must be able to fail: perturb one op and expect exit code 1
    real = cli.fastcg.scatter_sum
    monkeypatch.setattr(cli.fastcg, "scatter_sum", lambda s, i, n: real(s, i, n) * (1 + 1e-6))
    assert cli.main(["check", "--quick", "--dtype", "float64", "--backend", "cpu"]) == 1
    out = capsys.readouterr().out
    assert any("scatter_sum" in line and "FAIL" in line for line in out.splitlines())


def test_check_fails_without_double_backward(monkeypatch, capsys):
    # right values and first derivatives, but a backward autograd cannot differentiate:
    # only the grad2 column can see it
    real = cli.fastcg.linear

    class FirstOrderOnly(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, desc, species):
            ctx.save_for_backward(x, w)
            ctx.args = (desc, species)
            return real(x, w, desc, species)

        @staticmethod
        def backward(ctx, g):
            x, w = (t.detach().requires_grad_() for t in ctx.saved_tensors)
            with torch.enable_grad():
                gx, gw = torch.autograd.grad(real(x, w, *ctx.args), (x, w), g)
            return gx.detach(), gw.detach(), None, None

    def linear(x, w, desc, species=None):
        return FirstOrderOnly.apply(x, w, desc, species)

    monkeypatch.setattr(cli.fastcg, "linear", linear)
    assert cli.main(["check", "--quick", "--dtype", "float64", "--backend", "cpu"]) == 1
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    failed = [r for r in rows if r and r[0] == "linear" and r[-1] == "FAIL"]
    assert failed
    # columns from the end: ... fwd grad grad2 tol result
    for r in failed:
        assert float(r[-5]) < 1e-10 and float(r[-4]) < 1e-10 and float(r[-3]) > 1e-10


def test_md_is_wired_to_the_md_job(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["md", "--help"])
    assert exit_info.value.code == 0
    assert "--steps" in capsys.readouterr().out


def test_bench_passes_options_through(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0
    assert "--problems" in capsys.readouterr().out


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])
