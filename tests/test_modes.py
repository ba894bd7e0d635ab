"""fastcg.descriptors.MODE_RULES: every kernel mode's rules derived from its letters, pinned to
the tables that were written out by hand in five places before (descriptor, reference, testing,
the Triton launcher), so a change to the derivation that alters any of them fails here."""

from __future__ import annotations

import itertools

import pytest

from fastcg.descriptors import MODE_RULES, MODES, mode_errors, weight_shape
from fastcg.reference import _EINSUM
from fastcg.testing import mode_allowed

MULS = list(itertools.product((1, 2, 3), repeat=3))


def _shape(mode, m1, m2, mo):
    return {"uvw": (m1, m2, mo), "uvu": (m1, m2), "uvv": (m1, m2), "uuw": (m1, mo),
            "uuu": (m1,)}[mode]  # fmt: skip


def _summed(mode, m1, m2):
    return {"uvw": m1 * m2, "uvu": m2, "uvv": m1, "uuw": m1, "uuu": 1}[mode]


def _strides(mode, m1, m2, mo):
    return {"uvw": (m2 * mo, mo, 1), "uvu": (m2, 1, 0), "uuu": (1, 0, 0), "uvv": (m2, 1, 0),
            "uuw": (mo, 0, 1)}[mode]  # fmt: skip


def _allowed(mode, m1, m2, mo, w):
    if mode in ("uvu", "uuu") and mo != m1:
        return False
    if mode == "uvv" and mo != m2:
        return False
    if mode in ("uuu", "uuw") and m1 != m2:
        return False
    if mode == "uuw" and not w and mo != 1:
        return False
    return w or mode != "uvw"


EINSUM = {
    "uvw": "zui,zvj,ijk,zuvw->zwk", "uvu": "zui,zvj,ijk,zuv->zuk", "uvv": "zui,zvj,ijk,zuv->zvk",
    "uuw": "zui,zuj,ijk,zuw->zwk", "uuu": "zui,zuj,ijk,zu->zuk",
}  # fmt: skip
EQUAL = {"uvw": (False, False, False), "uvu": (False, True, False), "uuu": (True, True, True),
         "uvv": (False, False, True), "uuw": (True, False, False)}  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
def test_rules_match_the_written_tables(mode):
    rule = MODE_RULES[mode]
    assert rule.einsum == EINSUM[mode] == _EINSUM[mode]
    assert rule.equal == EQUAL[mode]
    for (m1, m2, mo), w in itertools.product(MULS, (True, False)):
        assert (
            rule.weight_shape(m1, m2, mo)
            == weight_shape(mode, m1, m2, mo)
            == _shape(mode, m1, m2, mo)
        )
        assert rule.summed(m1, m2) == _summed(mode, m1, m2)
        assert rule.weight_strides(m1, m2, mo) == _strides(mode, m1, m2, mo)
        assert mode_allowed(mode, m1, m2, mo, w) == _allowed(mode, m1, m2, mo, w)


def test_error_messages():
    assert mode_errors("uvu", True, 2, 3, 4) == ["mul_out == mul1"]
    assert mode_errors("uvv", True, 2, 3, 4) == ["mul_out == mul2"]
    assert mode_errors("uuu", True, 2, 2, 3) == ["mul1 == mul2 == mul_out"]
    assert mode_errors("uuw", False, 2, 3, 4) == ["mul1 == mul2", "mul_out == 1 unweighted"]
    assert mode_errors("uvw", False, 2, 3, 4) == ["weights"]
    assert mode_errors("uvuv", True, 2, 3, 5) == ["mul_out == mul1 * mul2"]


def _old_transpose(mode, perm):
    """The Triton launcher's former derivation, from the (x1==x2, x1==out, x2==out) table."""
    of_eq = {v: k for k, v in EQUAL.items()}
    e = EQUAL[mode]
    same = {(0, 1): e[0], (0, 2): e[1], (1, 2): e[2]}

    def s(i, j):
        return i == j or same[(min(i, j), max(i, j))]

    a, b, c = perm
    return of_eq[(s(a, b), s(a, c), s(b, c))]


@pytest.mark.parametrize("mode", MODES)
def test_transposes(mode):
    rule = MODE_RULES[mode]
    for perm in itertools.permutations(range(3)):
        assert rule.transpose(perm).name == _old_transpose(mode, perm)
    assert rule.transpose((0, 1, 2)) is rule
    # the backward's two products: grad x1 = (grad out, x2) -> x1, grad x2 = (x1, grad out) -> x2
    assert MODE_RULES["uvu"].transpose((2, 1, 0)).name == "uvu"
    assert MODE_RULES["uvu"].transpose((0, 2, 1)).name == "uuw"
