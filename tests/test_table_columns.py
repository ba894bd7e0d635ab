"""The column names of the int64 descriptor tables: fastcg/descriptors' tuples against the
C++ enums that mirror them (csrc/core/common.h, csrc/core/symmetric_contraction.h).

The C++ name of a Python column is its prefix plus the upper-cased name, except for the few
abbreviations listed in ``TABLES``; the enum ends with its column count. Any column added,
removed, renamed or reordered on one side only makes ``_mismatches`` report it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from fastcg import descriptors as d

CORE = Path(__file__).resolve().parent.parent / "csrc" / "core"
ENUM = re.compile(r"\benum\s+(\w+)\s*:\s*\w+\s*\{([^}]*)\}")

# C++ enum -> (header, Python tuple, IntEnum or None, prefix, exceptions, count member or None)
TABLES = {
    "Mode": ("common.h", d.MODES, None, "", {}, None),
    "PathCol": ("common.h", d.PATH_COLUMNS, d.PathCol, "P_",
                {"mul_out": "P_MULO", "off_out": "P_OFFO", "w_off": "P_WOFF"}, "P_NCOLS"),
    "LinCol": ("common.h", d.LINEAR_COLUMNS, d.LinCol, "L_", {"w_off": "L_WOFF"}, "L_NCOLS"),
    "ScMonoCol": ("symmetric_contraction.h", d.SC_MONO_COLUMNS, d.ScMonoCol, "SC_", {},
                  "SC_MONO_NCOLS"),
    "ScPairCol": ("symmetric_contraction.h", d.SC_PAIR_COLUMNS, d.ScPairCol, "SC_", {},
                  "SC_PAIR_NCOLS"),
    "ScEntryCol": ("symmetric_contraction.h", d.SC_ENTRY_COLUMNS, d.ScEntryCol, "SC_", {},
                   "SC_ENTRY_NCOLS"),
}  # fmt: skip


def parse_enums(text: str) -> dict[str, list[tuple[str, int]]]:
    """Every ``enum Name : type { ... }`` of C++ text: its members and their values, in order."""
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)  # comments may hold braces
    enums = {}
    for name, body in ENUM.findall(text):
        members, value = [], 0
        for item in filter(None, (s.strip() for s in body.split(","))):
            member, _, explicit = (s.strip() for s in item.partition("="))
            value = int(explicit, 0) if explicit else value
            members.append((member, value))
            value += 1
        enums[name] = members
    return enums


def _mismatches(
    members: list[tuple[str, int]], columns: tuple[str, ...], prefix: str,
    exceptions: dict[str, str], count: str | None,
) -> list[str]:  # fmt: skip
    """What differs between a C++ enum and the Python column names (empty when they agree)."""
    problems = [f"unused exception {k!r}" for k in exceptions if k not in columns]
    expected = [exceptions.get(c, prefix + c.upper()) for c in columns]
    expected += [count] if count else []
    names = [m for m, _ in members]
    if names != expected:
        problems.append(f"C++ members {names} != {expected} (from Python {columns})")
    values = [v for _, v in members]
    if values != list(range(len(members))):
        problems.append(f"C++ values {values} are not 0, 1, ...")
    return problems


@pytest.fixture(scope="module")
def enums() -> dict[str, list[tuple[str, int]]]:
    found: dict[str, list[tuple[str, int]]] = {}
    for header in sorted({t[0] for t in TABLES.values()}):
        found.update(parse_enums((CORE / header).read_text()))
    return found


@pytest.mark.parametrize("name", TABLES)
def test_columns_match_cpp(enums, name):
    _, columns, _, prefix, exceptions, count = TABLES[name]
    assert name in enums, f"enum {name} not found in csrc/core"
    assert _mismatches(enums[name], columns, prefix, exceptions, count) == []
    if count:  # the count member is the tuple's length: the table width on both sides
        assert dict(enums[name])[count] == len(columns)


@pytest.mark.parametrize("name", [n for n, t in TABLES.items() if t[2] is not None])
def test_int_enums_follow_tuples(name):
    _, columns, col, *_ = TABLES[name]
    assert [(m.name, int(m)) for m in col] == [(c, i) for i, c in enumerate(columns)]


def test_tables_have_their_widths():
    ins = [(0, 0, 0, "uvw", True), (1, 1, 0, "uvw", True), (1, 0, 1, "uvu", False)]
    tp = d.tensor_product_descriptor("2x0e+1x1o", "1x0e+1x1o", "2x0e+1x1o", ins)
    paths = tp.tensors()[0]
    assert paths.shape[1] == len(d.PATH_COLUMNS)
    assert paths[:, d.PathCol.mode].tolist() == [d.MODES.index(p.mode) for p in tp.paths]
    assert paths[:, d.PathCol.w_off].tolist() == [p.w_off for p in tp.paths]
    lin = d.linear_descriptor("2x0e+1x1o", "3x0e+1x1o")
    paths, _ = lin.tensors()
    assert paths.shape[1] == len(d.LINEAR_COLUMNS)
    w_off = d.linear.LINEAR_PATH_FIELDS.index("w_off")
    assert paths[:, d.LinCol.w_off].tolist() == [p[w_off] for p in lin.paths]


def test_parser_on_sample():
    text = """
    // enum Fake : int { NOT_THIS };
    enum A : int64_t { X = 0, Y, /* a } brace */ Z, A_NCOLS };
    enum B : int { P = 2, Q };
    """
    assert parse_enums(text) == {"A": [("X", 0), ("Y", 1), ("Z", 2), ("A_NCOLS", 3)],
                                 "B": [("P", 2), ("Q", 3)]}  # fmt: skip


PATH = list(d.PATH_COLUMNS)


@pytest.mark.parametrize(
    "columns",
    [
        PATH + ["extra"],  # added in Python only
        PATH[:-1],  # removed in Python only
        ["modes"] + PATH[1:],  # renamed in Python only
        [PATH[1], PATH[0]] + PATH[2:],  # reordered in Python only
    ],
)
def test_one_sided_changes_are_caught(enums, columns):
    _, _, _, prefix, exceptions, count = TABLES["PathCol"]
    assert _mismatches(enums["PathCol"], tuple(columns), prefix, exceptions, count)
    # the same change made on the C++ side only
    names = [exceptions.get(c, prefix + c.upper()) for c in columns] + [count]
    cpp = parse_enums(f"enum PathCol : int64_t {{ {', '.join(names)} }};")["PathCol"]
    assert _mismatches(cpp, d.PATH_COLUMNS, prefix, exceptions, count)


def test_gaps_and_stale_exceptions_are_caught(enums):
    _, _, _, prefix, exceptions, count = TABLES["PathCol"]
    # a C++ value skipped (P_L1 = 2) or an exception no column uses
    skipped = [(m, v + (v > 0)) for m, v in enums["PathCol"]]
    assert _mismatches(skipped, d.PATH_COLUMNS, prefix, exceptions, count)
    assert _mismatches(enums["PathCol"], d.PATH_COLUMNS, prefix, {**exceptions, "x": "P_X"}, count)


def test_tables_on_a_device_are_copied_once():
    """descriptor.tensors(device): one copy per device, the same tensors on every later call
    (the Triton plan caches key on their identity), the originals for the tables' own device."""
    import fastcg
    from fastcg.descriptors import linear_descriptor
    from fastcg.descriptors.symmetric_contraction import symmetric_contraction_descriptor

    tp = fastcg.tensor_product_descriptor("1x1o", "1x1o", "1x0e", [(0, 0, 0, "uuu", False)])
    lin = linear_descriptor("2x0e + 1x1o", "3x0e + 1x1o")
    sc = symmetric_contraction_descriptor("1x0e + 1x1o", "1x0e", 2)
    for desc in (tp, lin, sc):
        cpu = desc.tensors()
        assert desc.tensors("cpu") is cpu
        meta = desc.tensors("meta")
        assert all(t.device.type == "meta" for t in meta)
        assert [t.shape for t in meta] == [t.shape for t in cpu]
        again = desc.tensors(torch.device("meta"))
        assert all(a is b for a, b in zip(again, meta))
        assert desc.tensors() is cpu


def test_tables_are_the_tensors_with_the_sizes():
    """descriptor.tables(device): a NamedTuple of the same tensor objects as tensors(device) and
    the op's sizes, one per descriptor, each a type TorchScript takes."""
    import fastcg
    from fastcg.descriptors import linear_descriptor, symmetric_contraction_descriptor

    tp = fastcg.tensor_product_descriptor("1x1o", "1x1o", "1x0e", [(0, 0, 0, "uuu", False)])
    lin = linear_descriptor("2x0e + 1x1o", "3x0e + 1x1o")
    sc = symmetric_contraction_descriptor("1x0e + 1x1o", "1x0e", 2)
    sizes = {
        tp: ("dim1", "dim2", "dim_out", "weight_numel"),
        lin: ("dim_in", "dim_out", "weight_numel"),
        sc: ("dim_in", "weight_numel"),
    }
    for desc, names in sizes.items():
        for device in (None, "meta"):
            tables, tensors = desc.tables(device), desc.tensors(device)
            assert all(a is b for a, b in zip(tables, tensors))
            assert tables[len(tensors) :] == tuple(getattr(desc, n) for n in names)
            assert type(tables)._fields[len(tensors) :] == names

    scripted = [torch.jit.script(f) for f in (_tp_paths, _linear_paths, _sc_monomials)]
    for f, desc in zip(scripted, sizes):
        assert f(desc.tables()) is desc.tensors()[0]


# TorchScript compiles functions of each NamedTuple (what fastcg.nn modules' forward builds)
def _tp_paths(t: d.TPTables) -> torch.Tensor:
    return t.paths


def _linear_paths(t: d.LinearTables) -> torch.Tensor:
    return t.paths


def _sc_monomials(t: d.SymmetricContractionTables) -> torch.Tensor:
    return t.monomials


def test_mode_letters_match_cpp():
    """The C++ kernels derive a mode's weight count and multiplicity rule from its letters
    (csrc/core/common.h), as MODE_RULES does in Python: the same letters, in Mode's order."""
    text = (CORE / "common.h").read_text()
    (letters,) = re.findall(r'#define FASTCG_MODE_LETTERS "(\w+)"', text)
    assert [letters[i : i + 3] for i in range(0, len(letters), 3)] == list(d.MODES)
    assert all(d.MODE_RULES[m].name == m for m in d.MODES)
