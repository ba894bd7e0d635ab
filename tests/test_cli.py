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


# `fastcg md` checks every option before any work: a bad one exits with status 2 and a message
# naming it. The job's work is replaced by a tripwire, so a check that let a bad value through
# fails here at once instead of building models (--max-ell 9 once built 22 GB) or running MD.
@pytest.fixture
def md_tripwire(monkeypatch):
    from fastcg import md

    def tripwire(*args, **kwargs):
        raise AssertionError("fastcg md started work before rejecting its options")

    for name in ("build_models", "run_nve", "plot"):
        monkeypatch.setattr(md, name, tripwire)
    monkeypatch.delenv("FASTCG_BACKEND", raising=False)
    return md


def _md_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(["md", *argv])
    assert exc.value.code == 2
    return capsys.readouterr().err


BAD_MD_OPTIONS = [
    ("--steps", ["--steps", "-5"]),
    ("--steps", ["--steps", "0"]),
    ("--steps", ["--steps", "2.5"]),
    ("--reference-steps", ["--reference-steps", "-1"]),
    ("--channels", ["--channels", "0"]),
    ("--channels", ["--channels", "-8"]),
    ("--max-ell", ["--max-ell", "9"]),
    ("--max-ell", ["--max-ell", "-1"]),
    ("--max-ell", ["--model", "mace", "--max-ell", "5"]),
    ("--max-ell", ["--model", "nequip", "--max-ell", "9"]),
    ("--max-ell", ["--model", "schnet", "--max-ell", "100000"]),
    ("--max-ell", ["--small", "--max-ell", "9"]),  # --small's values do not hide a bad one
    ("--timestep", ["--timestep", "0"]),
    ("--timestep", ["--timestep", "-1"]),
    ("--timestep", ["--timestep", "nan"]),
    ("--temperature", ["--temperature", "-1"]),
    ("--temperature", ["--temperature", "inf"]),
    ("--threads", ["--threads", "0"]),
    ("--seed", ["--seed", "-1"]),
    ("--seed", ["--seed", str(2**32)]),
    ("--dtype", ["--dtype", "float16"]),
    ("--model", ["--model", "gpt"]),
    ("--radial", ["--model", "mace", "--radial", "tabulated"]),  # mace-torch only
    ("--radial", ["--radial", "spline"]),
    ("--backend", ["--backend", "tpu"]),
    ("--backend", ["--backend", "cuda"]),  # the MD runs on CPU tensors
    ("--structure", ["--structure", "no-such-file.xyz"]),
    ("--plot", ["--plot", "no-such-folder/md.png"]),
    ("--plot", ["--plot", "md.no-such-format"]),
]


@pytest.mark.parametrize(
    "option, argv", BAD_MD_OPTIONS, ids=[" ".join(a) for _, a in BAD_MD_OPTIONS]
)
def test_md_rejects_bad_options_before_any_work(option, argv, md_tripwire, capsys, tmp_path,
                                                monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    err = _md_error(argv, capsys)
    assert f"argument {option}:" in err, err


def test_md_max_ell_message_gives_the_bound(md_tripwire, capsys):
    err = _md_error(["--model", "mace", "--max-ell", "9"], capsys)
    assert "[0, 4]" in err and "got 9" in err


def test_md_rejects_a_bad_fastcg_backend_variable(md_tripwire, capsys, monkeypatch):
    monkeypatch.setenv("FASTCG_BACKEND", "tpu")
    assert "argument FASTCG_BACKEND:" in _md_error([], capsys)


def test_md_rejects_mace_torch_when_missing(md_tripwire, capsys):
    import importlib.util

    if importlib.util.find_spec("mace") is not None:
        pytest.skip("mace-torch is installed")
    assert "argument --model:" in _md_error(["--model", "mace-torch"], capsys)


BAD_STRUCTURES = {
    "empty": "",
    "no-atoms": "0\n\n",
    "garbage": "this is not a structure\n",
    "dummy-atom": "1\n\nX 0 0 0\n",
    "nan-position": "2\n\nH 0 0 0\nH nan 0 0\n",
}


@pytest.mark.parametrize("content", BAD_STRUCTURES.values(), ids=BAD_STRUCTURES.keys())
def test_md_rejects_a_bad_structure_file(content, md_tripwire, capsys, tmp_path):
    pytest.importorskip("ase")
    path = tmp_path / "bad.xyz"
    path.write_text(content)
    err = _md_error(["--structure", str(path), "--plot", ""], capsys)
    assert "argument --structure:" in err, err


def test_build_models_checks_sizes_before_building(monkeypatch):
    from fastcg import md
    from fastcg.models import MACE

    def tripwire(*args, **kwargs):
        raise AssertionError("built a model before checking its size")

    monkeypatch.setattr(MACE, "__init__", tripwire)
    with pytest.raises(ValueError, match="max_ell"):
        md.build_models("mace", [29], 8, 9, 0)
    with pytest.raises(ValueError, match="channels"):
        md.build_models("mace", [29], 0, 2, 0)
