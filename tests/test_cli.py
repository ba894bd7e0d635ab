"""`fastcg check` (what `make demo` runs) passes and covers every op."""

import pytest

from fastcg import cli


def test_check_passes_and_covers_every_op(capsys):
    assert cli.main(["check", "--quick"]) == 0
    table = capsys.readouterr().out
    for op in ("spherical_harmonics", "tensor_product", "conv", "scatter_sum", "linear"):
        assert op in table
    assert "FAIL" not in table


def test_check_fails_when_an_op_is_wrong(monkeypatch, capsys):
    # the check must be able to fail: perturb one op and expect exit code 1
    real = cli.fastcg.scatter_sum
    monkeypatch.setattr(cli.fastcg, "scatter_sum", lambda s, i, n: real(s, i, n) * (1 + 1e-6))
    assert cli.main(["check", "--quick", "--dtype", "float64", "--backend", "cpu"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_unknown_command_exits_with_usage():
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])
