"""fastcg.testing's helpers do what the tests that use them assume (each check can fail)."""

import pytest
import torch

from fastcg.irreps import o3
from fastcg.testing import (
    TOLERANCE,
    assert_close,
    default_dtype,
    full_instructions,
    random_rotation,
    scaled_error,
    wigner_D,
)


@pytest.mark.parametrize("parity", [False, True])
def test_random_rotation_is_a_rotation_and_wigner_D_represents_it(parity):
    g = torch.Generator().manual_seed(3)
    r = random_rotation(parity, generator=g)
    torch.testing.assert_close(r @ r.T, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-14)
    assert abs(float(torch.linalg.det(r)) - (-1 if parity else 1)) < 1e-12
    assert not torch.equal(r, random_rotation(parity, generator=g))  # a new draw each call
    v = torch.randn(7, 3, dtype=torch.float64, generator=g)
    sh = o3().spherical_harmonics([1, 2], v, True)  # 1o + 2e
    assert_close(o3().spherical_harmonics([1, 2], v @ r.T, True), sh @ wigner_D("1o+2e", r).T)
    wrong = wigner_D("1e+2e", r)  # the parity matters for an improper rotation only
    assert parity == (scaled_error(sh @ wrong.T, sh @ wigner_D("1o+2e", r).T) > 1e-3)


def test_default_dtype_restores_on_error():
    old = torch.get_default_dtype()
    with pytest.raises(RuntimeError), default_dtype(torch.float64):
        assert torch.get_default_dtype() == torch.float64
        raise RuntimeError
    assert torch.get_default_dtype() == old


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_assert_close_uses_the_table_and_scales(dtype):
    tol = TOLERANCE[dtype]
    big = torch.full((3,), 100.0, dtype=dtype)
    assert_close(big + 50 * tol, big)  # within tol * max |expected|
    with pytest.raises(AssertionError):
        assert_close(big + 300 * tol, big)
    with pytest.raises(AssertionError):
        assert_close(big[:2], big)
    assert scaled_error(torch.tensor([0.5]), torch.tensor([0.25])) == 0.25
    assert scaled_error(torch.tensor([10.0]), torch.tensor([8.0])) == 0.25


def test_full_instructions_follow_e3nn_mode_rules():
    assert full_instructions("2x0e", "3x1o", "2x1o+3x1o", ["uvu", "uvv"]) == [
        (0, 0, 0, "uvu", True),
        (0, 0, 1, "uvv", True),
    ]
    with pytest.raises(ValueError, match="no"):
        full_instructions("2x0e", "3x1o", "1x1o", ["uvu", "uvv", "uuu"])
