"""Generate fastcg/triton/_sh_generated.py: e3nn's spherical harmonics as Triton helpers.

e3nn's ``_spherical_harmonics`` is read with ``ast`` and evaluated with sympy symbols, giving the
component-normalised polynomials P_lm(x, y, z) (homogeneous of degree l). For each l the
generator emits three ``@triton.jit`` helpers, common subexpressions eliminated by sympy:

- ``_fwd{l}``: store P_lm * scale_lm;
- ``_bwd{l}``: sum_m g_lm (P_lm, dP_lm) for the vector gradient;
- ``_dbl{l}``: the double backward, from P, dP and the Hessian HP.

The kernels evaluate them at the unit vector n and apply the homogeneous chain rule for
Y(v) = P(v / |v|) (see fastcg/triton/spherical_harmonics.py). Numeric constants are loaded from
a table (``CONSTANTS``) instead of written as literals because Triton types float literals as
float32, which would cost float64 its precision.

Run: ``python tools/gen_sh_triton.py`` (``--check`` fails when the committed file differs).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import subprocess
import sys
import types
from pathlib import Path

import sympy
from e3nn.o3 import _spherical_harmonics as e3nn_sh
from sympy.printing.str import StrPrinter

LMAX = 8
OUT = Path(__file__).resolve().parents[1] / "fastcg" / "triton" / "_sh_generated.py"
X, Y, Z = sympy.symbols("x y z", real=True)
XYZ = (X, Y, Z)
PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))  # Hessian entries stored


class _Pow(ast.NodeTransformer):
    """``t.pow(n)`` -> ``t ** n`` so the torch code runs on sympy symbols."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == "pow":
            return ast.BinOp(left=f.value, op=ast.Pow(), right=node.args[0])
        return node


def e3nn_polynomials() -> dict[int, list[sympy.Expr]]:
    """P_lm for l <= LMAX from e3nn's own generated code (component normalisation)."""
    fn = ast.parse(inspect.getsource(e3nn_sh._spherical_harmonics)).body[0]
    body = [s for s in fn.body if isinstance(s, ast.Assign)]
    module = ast.fix_missing_locations(_Pow().visit(ast.Module(body=body, type_ignores=[])))
    env = {
        "x": X, "y": Y, "z": Z,
        "math": types.SimpleNamespace(sqrt=sympy.sqrt),
        "torch": types.SimpleNamespace(ones_like=lambda t: sympy.Integer(1)),
    }  # fmt: skip
    exec(compile(module, "<e3nn sh>", "exec"), env)
    return {
        deg: [sympy.expand(env[f"sh_{deg}_{m}"]) for m in range(2 * deg + 1)]
        for deg in range(LMAX + 1)
    }


class _Printer(StrPrinter):
    """Triton expressions: integer powers as products, constants from the table."""

    def __init__(self, consts: dict[float, int]):
        super().__init__()
        self.consts = consts

    def _print_Pow(self, e):
        base, exp = e.args
        if exp.is_Integer and exp > 0:
            return "(" + " * ".join([self.parenthesize(base, 100)] * int(exp)) + ")"
        raise ValueError(f"unexpected power {e}")

    def _number(self, v: float) -> str:
        if float(v).is_integer() and abs(v) < 2**24:
            return repr(float(v))
        key = float(v)
        if key not in self.consts:
            self.consts[key] = len(self.consts)
        return f"tl.load(kp + {self.consts[key]})"

    def _print_Float(self, e):
        return self._number(float(e))

    def _print_Rational(self, e):
        return self._number(float(e))

    def _print_Integer(self, e):
        return repr(float(int(e)))

    def _print_Mul(self, e):
        c, rest = e.as_coeff_Mul()
        if c == -1:
            return "-" + self.parenthesize(rest, 50)
        if c != 1 and c.is_Number:
            return self._number(float(c)) + " * " + self.parenthesize(rest, 50)
        return super()._print_Mul(e)


def _numeric(e: sympy.Expr) -> sympy.Expr:
    return sympy.N(e, 30)


def _emit(name: str, args: str, exprs: list[sympy.Expr], consts: dict, tail: list[str]) -> str:
    """One @triton.jit helper: cse'd assignments of ``exprs`` as e0.., then ``tail`` lines."""
    pr = _Printer(consts)
    subs, reduced = sympy.cse([_numeric(e) for e in exprs], symbols=sympy.numbered_symbols("t"))
    lines = ["@triton.jit", f"def {name}({args}):  # fmt: skip"]
    for sym, val in subs:
        lines.append(f"    {sym} = {pr.doprint(val)}")
    for i, val in enumerate(reduced):
        lines.append(f"    e{i} = {pr.doprint(val) if val != 0 else '0.0 * x'}")
    lines += ["    " + t for t in tail]
    return "\n".join(lines)


def _helpers(
    l: int,  # noqa: E741  (the degree, as in the math)
    polys: list[sympy.Expr],
    consts: dict,
) -> list[str]:
    n, base = len(polys), l * l
    grads = [[sympy.diff(p, s) for s in XYZ] for p in polys]
    hess = [[sympy.diff(p, XYZ[a], XYZ[b]) for a, b in PAIRS] for p in polys]
    fwd_tail = [
        f"tl.store(out + {base + m}, e{m} * tl.load(scale + {base + m}), mask=mask)"
        for m in range(n)
    ]
    fwd = _emit(f"_fwd{l}", "x, y, z, kp, out, scale, mask", polys, consts, fwd_tail)
    # bwd: returns (sum_m gs_m dP_m / dx, .. / dy, .. / dz, sum_m gs_m P_m)
    bwd_tail = []
    for m in range(n):
        bwd_tail.append(f"g{m} = tl.load(g + {base + m}, mask=mask, other=0.0).to(x.dtype)")
        bwd_tail.append(f"g{m} = g{m} * tl.load(scale + {base + m})")
    for k, what in enumerate(("ax", "ay", "az")):
        terms = " + ".join(f"g{m} * e{n + 3 * m + k}" for m in range(n))
        bwd_tail.append(f"{what} = {terms}")
    bwd_tail.append("b = " + " + ".join(f"g{m} * e{m}" for m in range(n)))
    bwd_tail.append("return ax, ay, az, b")
    exprs = polys + [d for g in grads for d in g]
    bwd = _emit(f"_bwd{l}", "x, y, z, kp, g, scale, mask", exprs, consts, bwd_tail)
    # dbl: stores d grad_sh, returns d vectors (see spherical_harmonics.py for the algebra)
    dbl_tail = ["dx = 0.0 * x", "dy = 0.0 * x", "dz = 0.0 * x"]
    for m in range(n):
        p = f"e{m}"
        d = [f"e{n + 3 * m + k}" for k in range(3)]
        h = {pr: f"e{4 * n + 6 * m + i}" for i, pr in enumerate(PAIRS)}

        def hh(a: int, b: int, h=h) -> str:
            return h[(min(a, b), max(a, b))]

        dbl_tail += [
            f"sc = tl.load(scale + {base + m})",
            f"jv = ux * {d[0]} + uy * {d[1]} + uz * {d[2]}",
            "if NORMALIZE:",
            f"    dg = sc * inv_r * (jv - {l}.0 * {p} * nu)",
            "else:",
            "    dg = sc * jv",
            f"tl.store(dgs + {base + m}, dg, mask=mask)",
            f"gs = tl.load(g + {base + m}, mask=mask, other=0.0).to(x.dtype) * sc",
        ]
        axes = (("dx", "x", "ux"), ("dy", "y", "uy"), ("dz", "z", "uz"))
        for k, (acc, nk, uk) in enumerate(axes):
            hu = f"(ux * {hh(0, k)} + uy * {hh(1, k)} + uz * {hh(2, k)})"
            dbl_tail += [
                "if NORMALIZE:",
                f"    {acc} += gs * inv_r * inv_r * ({hu} - {l}.0 * jv * {nk}"
                f" - {l}.0 * nu * {d[k]} - {l}.0 * {p} * {uk} + {l * (l + 2)}.0 * {p} * nu * {nk})",
                "else:",
                f"    {acc} += gs * {hu}",
            ]
    dbl_tail.append("return dx, dy, dz")
    exprs = polys + [d for g in grads for d in g] + [e for hs in hess for e in hs]
    args = "x, y, z, kp, g, dgs, scale, mask, ux, uy, uz, nu, inv_r, NORMALIZE: tl.constexpr"
    dbl = _emit(f"_dbl{l}", args, exprs, consts, dbl_tail)
    return [fwd, bwd, dbl]


def generate() -> str:
    polys = e3nn_polynomials()
    consts: dict[float, int] = {}
    funcs = []
    for deg in range(LMAX + 1):
        funcs += _helpers(deg, polys[deg], consts)
    table = sorted(consts, key=consts.get)
    head = [
        "# Generated by tools/gen_sh_triton.py from e3nn's spherical harmonics. Do not edit.",
        "# ruff: noqa",
        "import triton",
        "import triton.language as tl",
        "",
        f"LMAX = {LMAX}",
        "CONSTANTS = (",
        *[f"    {v!r}," for v in table],
        ")",
    ]
    dispatch = ["FWD = (" + ", ".join(f"_fwd{k}" for k in range(LMAX + 1)) + ")"]
    return "\n".join(head) + "\n\n\n" + "\n\n\n".join(funcs) + "\n\n\n" + "\n".join(dispatch) + "\n"


def _format(text: str) -> str:
    """ruff-format the generated code (the repository's formatter), when ruff is installed."""
    try:
        from ruff.__main__ import find_ruff_bin
    except ImportError:
        return text
    res = subprocess.run(
        [find_ruff_bin(), "format", "--stdin-filename", str(OUT), "-"],
        input=text, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return res.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the committed file differs")
    args = ap.parse_args()
    text = _format(generate())
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python tools/gen_sh_triton.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
