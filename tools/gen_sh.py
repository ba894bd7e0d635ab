"""Generate csrc/core/sh.h and fastcg/triton/_sh_generated.py: spherical harmonics, l <= LMAX.

Real spherical harmonics in e3nn's basis, with their derivatives.

The harmonics are homogeneous polynomials built by the recursion
    Y_{l+1}[m] = s_l * sum_{i,j} C[i, j, m] * Y_l[i] * r_j,   C = e3nn.o3.wigner_3j(l, 1, l + 1),
with s_l = (2l + 3) / sqrt(l + 1), which reproduces e3nn's "component" normalisation exactly
(checked against e3nn below). Because Y_{l+1} is harmonic and homogeneous, its gradient needs no
product rule (e3nn's docstring states it):
    d Y_{l+1}[m] / d r_k = (l + 1) * s_l * sum_i C[i, k, m] * Y_l[i],
so every derivative is one sparse term list applied to a lower level: the gradient to Y_l, the
hessian to dY_l. The emitted functions are straight-line code over that list:

    sh_poly             Y (and dY, H for D >= 1, 2) of W vectors, lane-major arrays
    sh_vjp              v += sum_m G[m] dY_m/dr            (backward, no [3, dim] array)
    sh_jvp              out[m] = sum_k dY_m/dr_k d_k        (double backward: grad of grad_sh)
    sh_jvp_transpose    Wc[i] such that sum_m G[m] H_m d = sh_vjp(Wc)  (double backward)

The same term lists are emitted a second time as Triton helpers (fastcg/triton/_sh_generated.py),
one level per function, on per-lane tensors (a block of vectors is one Triton tensor, so no lane
arrays): ``_poly{l}`` is the bilinear form B_l(Y_l, a)[m] = sum c Y_l[i] a_j, which gives
Y_{l+1} = B_l(Y_l, r) and the jvp dY_{l+1}/dr . d = (l + 1) B_l(Y_l, d); ``_vjp{l}`` is the level's
part of sh_vjp. The double backward needs no jvp_transpose there: sh_vjp is linear in Y, so its
derivative along d, sum_m G[m] H_m d, is sh_vjp with Y replaced by the jvp P (see
fastcg/triton/spherical_harmonics.py). Coefficients are built with ``tl.full(.., dtype)``, exact in
float64, where a bare float literal would be typed float32.

    python tools/gen_sh.py          # writes csrc/core/sh.h and fastcg/triton/_sh_generated.py
    python tools/gen_sh.py --check  # exits 1 if either committed file differs (CI)
"""

import argparse
import math
import sys
from fractions import Fraction
from functools import cache
from pathlib import Path

import torch

LMAX = 8
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "csrc" / "core" / "sh.h"
OUT_TRITON = ROOT / "fastcg" / "triton" / "_sh_generated.py"
XYZ = "xyz"
PAIRS = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]  # hessian storage order

Term = tuple[int, int, int, float]  # (i in Y_l, j in xyz, m in Y_{l+1}, coefficient)


def o3():
    sys.path.insert(0, str(ROOT))
    from fastcg.irreps import o3 as load

    return load()


@cache
def recursion_terms(l: int) -> tuple[Term, ...]:
    """The (i, j, m, coefficient) terms of Y_{l+1}[m] = sum c * Y_l[i] * r_j, sorted by m."""
    c = o3().wigner_3j(l, 1, l + 1, dtype=torch.float64)
    s = (2 * l + 3) / math.sqrt(l + 1)
    nz = (c.abs() > 1e-12).nonzero().tolist()
    return tuple(sorted((i, j, m, exact(s * float(c[i, j, m]))) for i, j, m in nz))


def by_m(l: int) -> list[list[Term]]:
    out: list[list[Term]] = [[] for _ in range(2 * l + 3)]
    for term in sorted(recursion_terms(l), key=lambda t: (t[2], t[0], t[1])):
        out[term[2]].append(term)
    return out


def exact(c: float) -> float:
    """c from its rational square: the literal is then the same whatever rounding e3nn's
    numerical wigner_3j had on this machine, so the drift check is reproducible."""
    square = Fraction(c * c).limit_denominator(10**7)
    value = math.copysign(math.sqrt(square.numerator / square.denominator), c)
    if abs(value - c) > 1e-12 * max(1.0, abs(c)):
        raise SystemExit(f"coefficient {c!r} has no small rational square")
    return value


def eval_terms(r: torch.Tensor) -> torch.Tensor:
    """The recursion in PyTorch (float64, differentiable): what the C++ computes."""
    y = [torch.ones(r.shape[0], 1, dtype=r.dtype)]
    for l in range(LMAX):
        cols = [sum(c * y[l][:, i] * r[:, j] for i, j, _, c in terms) for terms in by_m(l)]
        y.append(torch.stack(cols, dim=1))
    return torch.cat(y, dim=1)


def eval_vjp(r: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """sum_m g[:, m] dY_m/dr by the harmonic-gradient identity (what sh_vjp computes)."""
    y, v = eval_terms(r), torch.zeros_like(r)
    for l in range(LMAX):
        for i, j, m, c in recursion_terms(l):
            v[:, j] += (l + 1) * c * g[:, (l + 1) ** 2 + m] * y[:, l * l + i]
    return v


def check_against_e3nn() -> None:
    """The recursion and the gradient identity must equal e3nn; refuse to generate otherwise."""
    r = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    r.requires_grad_(True)
    ref = o3().spherical_harmonics(list(range(LMAX + 1)), r, False, "component")
    err = (eval_terms(r.detach()) - ref.detach()).abs().max().item()
    g = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(ref, r, g)
    gerr = (eval_vjp(r.detach(), g) - grad).abs().max().item() / grad.abs().max().item()
    if err > 1e-9 or gerr > 1e-12:
        raise SystemExit(f"recursion disagrees with e3nn: values {err}, gradient {gerr}")


def lit(c: float) -> str:
    return f"T({c!r})"


def at(arr: str, idx: int | str) -> str:
    return f"{arr}[{idx} * W + t]"


def lanes(lhs: str, rhs: str, indent: int = 4) -> str:
    return f"{' ' * indent}for (int t = 0; t < W; ++t) {lhs} = {rhs};"


def grad_terms(l: int, m: int, k: int) -> list[tuple[int, float]]:
    """dY_{l+1}[m]/dr_k = sum (coefficient * Y_l[i]) over the returned (i, coefficient)."""
    return [(i, (l + 1) * c) for i, j, _, c in by_m(l)[m] if j == k]


def emit_poly(l: int) -> list[str]:
    """Level l + 1 of Y, and of dY (D >= 1) and H (D >= 2) by the gradient identity."""
    base, nbase = l * l, (l + 1) * (l + 1)
    lines = [f"  if constexpr (L >= {l + 1}) {{"]
    for m, terms in enumerate(by_m(l)):
        rhs = " + ".join(f"{lit(c)} * {at('Y', base + i)} * {XYZ[j]}[t]" for i, j, _, c in terms)
        lines.append(lanes(at("Y", nbase + m), rhs))
    lines.append("    if constexpr (D >= 1) {")
    for m in range(2 * l + 3):
        for k in range(3):
            rhs = " + ".join(f"{lit(c)} * {at('Y', base + i)}" for i, c in grad_terms(l, m, k))
            lines.append(lanes(at("dY", 3 * (nbase + m) + k), rhs or "T(0)", 6))
    lines.append("    }")
    lines.append("    if constexpr (D >= 2) {")
    for m in range(2 * l + 3):
        for h, (k, q) in enumerate(PAIRS):
            gt = grad_terms(l, m, k)
            rhs = " + ".join(f"{lit(c)} * {at('dY', 3 * (base + i) + q)}" for i, c in gt)
            lines.append(lanes(at("H", 6 * (nbase + m) + h), rhs or "T(0)", 6))
    lines.append("    }")
    lines.append("  }")
    return lines


def emit_vjp(l: int) -> list[str]:
    """v[k] += sum_m G_{l+1}[m] dY_{l+1}[m]/dr_k."""
    base, nbase = l * l, (l + 1) * (l + 1)
    lines = [f"  if constexpr (L >= {l + 1}) {{"]
    for m in range(2 * l + 3):
        parts = []
        for k in range(3):
            s = " + ".join(f"{lit(c)} * {at('Y', base + i)}" for i, c in grad_terms(l, m, k))
            if s:
                parts.append(f"{at('v', k)} += g * ({s});")
        body = f"{{ const T g = {at('G', nbase + m)}; {' '.join(parts)} }}"
        lines.append(f"    for (int t = 0; t < W; ++t) {body}")
    lines.append("  }")
    return lines


def emit_jvp(l: int) -> list[str]:
    """out_{l+1}[m] = sum_k dY_{l+1}[m]/dr_k d_k."""
    base, nbase = l * l, (l + 1) * (l + 1)
    lines = [f"  if constexpr (L >= {l + 1}) {{"]
    for m, terms in enumerate(by_m(l)):
        rhs = " + ".join(
            f"{lit((l + 1) * c)} * {at('Y', base + i)} * {at('d', j)}" for i, j, _, c in terms
        )
        lines.append(lanes(at("out", nbase + m), rhs))
    lines.append("  }")
    return lines


def emit_jvp_transpose(l: int) -> list[str]:
    """Wc_l[i] = sum over terms of level l -> l + 1 of coefficient * G_{l+1}[m] d_j (l >= 1:
    the level-0 entry would multiply the zero gradient of Y_0)."""
    base, nbase = l * l, (l + 1) * (l + 1)
    per_i: list[list[Term]] = [[] for _ in range(2 * l + 1)]
    for term in recursion_terms(l):
        per_i[term[0]].append(term)
    lines = [f"  if constexpr (L >= {l + 1}) {{"]
    for i, terms in enumerate(per_i):
        rhs = " + ".join(
            f"{lit((l + 1) * c)} * {at('G', nbase + m)} * {at('d', j)}" for _, j, m, c in terms
        )
        lines.append(lanes(at("Wc", base + i), rhs))
    lines.append("  }")
    return lines


HEADER = """\
// GENERATED by tools/gen_sh.py -- do not edit; CI fails on drift.
// Real spherical harmonics in e3nn's basis and "component" normalisation, as homogeneous
// polynomials of (x, y, z), with their derivatives. Derivatives use the harmonic-gradient
// identity dY_{l+1}/dr_k = (l + 1) s_l sum_i C[i, k, m] Y_l[i] (see tools/gen_sh.py).
//
// All arrays hold W vectors (lanes) per entry, lane fastest: entry n of lane t is at [n * W + t],
// so each statement is a loop over lanes that vectorises on the CPU (W = 1 on a GPU thread).
#pragma once
#include "core/common.h"

namespace fastcg {

constexpr int SH_LMAX = %d;

// Y[(L+1)^2 * W]; dY[3 (L+1)^2 * W] (d/dx, d/dy, d/dz per entry); H[6 (L+1)^2 * W] (xx, xy, xz,
// yy, yz, zz per entry). dY / H may be null when D is smaller.
template <int L, int D, int W, typename T>
FASTCG_HD void sh_poly(const T* x, const T* y, const T* z, T* Y, T* dY, T* H) {
  for (int t = 0; t < W; ++t) {
    Y[t] = T(1);
    if constexpr (D >= 1) dY[t] = dY[W + t] = dY[2 * W + t] = T(0);
    if constexpr (D >= 2)
      for (int h = 0; h < 6; ++h) H[h * W + t] = T(0);
  }
%s
}

// v[k * W + t] += sum_m G[m] dY_m/dr_k, given Y from sh_poly and a cotangent G[(L+1)^2 * W]
// (entry 0, the constant, is never read).
template <int L, int W, typename T>
FASTCG_HD void sh_vjp(const T* Y, const T* G, T* v) {
%s
}

// out[m] = sum_k dY_m/dr_k d[k] for every entry (out[0] = 0), given Y from sh_poly.
template <int L, int W, typename T>
FASTCG_HD void sh_jvp(const T* Y, const T* d, T* out) {
  for (int t = 0; t < W; ++t) out[t] = T(0);
%s
}

// Wc[L^2 * W] with sh_vjp<L - 1>(Y, Wc, v) == sum_m G[m] H_m d (H_m the hessian of Y_m): the
// double backward's second-derivative term without any hessian. Entry 0 is not written.
template <int L, int W, typename T>
FASTCG_HD void sh_jvp_transpose(const T* G, const T* d, T* Wc) {
%s
}

}  // namespace fastcg
"""


def generate() -> str:
    check_against_e3nn()

    def body(emit, first: int = 0) -> str:
        return "\n".join(line for l in range(first, LMAX) for line in emit(l))

    return HEADER % (
        LMAX,
        body(emit_poly),
        body(emit_vjp),
        body(emit_jvp),
        body(emit_jvp_transpose, first=1),
    )


# ---------------------------------------------------------------------------------------------
# Triton emitter: the same term lists, one level per @triton.jit helper on per-lane tensors.

WIDTH = 100  # ruff's line length: the emitted code is already in ruff's format


def level_constants(l: int) -> dict[float, int]:
    """|coefficient| -> index in level l's constant tuple (signs are written in the code)."""
    out: dict[float, int] = {}
    for terms in by_m(l):
        for *_, c in terms:
            out.setdefault(abs(c), len(out))
    return out


Part = tuple[int, str]  # (sign, "K[a] * ..."): one group of a sum


def grouped(terms: list[tuple[float, str]], kidx: dict[float, int]) -> list[Part]:
    """sum c * product as groups sharing |c|: one multiply by the constant per group."""
    groups: dict[float, list[tuple[int, str]]] = {}
    for c, prod in terms:
        groups.setdefault(abs(c), []).append((1 if c > 0 else -1, prod))
    parts = []
    for a, members in groups.items():
        s0, inner = members[0]
        for s, prod in members[1:]:
            inner += (" + " if s == s0 else " - ") + prod
        k = f"K[{kidx[a]}]"
        parts.append((s0, f"{k} * {inner}" if len(members) == 1 else f"{k} * ({inner})"))
    return parts


def assign(name: str, parts: list[Part]) -> list[str]:
    """``name = sum of parts`` as statements within WIDTH (``+=`` / ``-=`` continue a sum)."""
    lines: list[str] = []
    chunk: list[Part] = []

    def text(chunk: list[Part]) -> str:
        flip = -1 if lines and chunk[0][0] < 0 else 1  # continue with -= on a negative group
        body = ""
        for n, (s, p) in enumerate(chunk):
            s *= flip
            body += (p if s > 0 else "-" + p) if n == 0 else (" + " if s > 0 else " - ") + p
        op = "=" if not lines else ("-=" if flip < 0 else "+=")
        return f"    {name} {op} {body}"

    for part in parts:
        if chunk and len(text([*chunk, part])) > WIDTH:
            lines.append(text(chunk))
            chunk = []
        chunk.append(part)
    lines.append(text(chunk))
    return lines


def triton_constants(l: int) -> list[str]:
    """``_k{l}(T)``: the level's |coefficients| as scalars of dtype T."""
    values = [f"tl.full((), {a!r}, T)" for a in level_constants(l)]
    body = (
        [f"    return ({values[0]},)"]
        if len(values) == 1
        else ["    return (", *[f"        {v}," for v in values], "    )"]
    )
    return [
        "@triton.jit",
        f"def _k{l}(T: tl.constexpr):",
        f'    """|coefficients| of level {l} -> {l + 1} in dtype T."""',
        *body,
    ]


def triton_poly(l: int) -> list[str]:
    """``_poly{l}``: n[m] = B_l(Y, (x, y, z))[m] = sum c Y[i] a_j (Y_{l+1}, or a jvp)."""
    kidx, lines = level_constants(l), []
    for m, terms in enumerate(by_m(l)):
        lines += assign(f"n{m}", grouped([(c, f"Y[{i}] * {XYZ[j]}") for i, j, _, c in terms], kidx))
    return [
        "@triton.jit",
        f"def _poly{l}(Y, x, y, z):",
        f'    """B_{l}(Y, (x, y, z)): Y_{l + 1} from Y = Y_{l}, or the jvp at {l + 1} d."""',
        f"    K = _k{l}(x.dtype)",
        *lines,
        "    return " + ", ".join(f"n{m}" for m in range(2 * l + 3)),
    ]


def triton_vjp(l: int) -> list[str]:
    """``_vjp{l}``: (vx, vy, vz) += sum_m G[m] dY_{l+1}[m]/dr = (l + 1) sum c G[m] Y_l[i] e_j."""
    kidx, lines = level_constants(l), []
    for j, axis in enumerate(XYZ):
        terms = [(c, f"G[{m}] * Y[{i}]") for i, jj, m, c in recursion_terms(l) if jj == j]
        lines += assign(f"a{axis}", grouped(terms, kidx))
    f = "" if l == 0 else f"{l + 1}.0 * "
    return [
        "@triton.jit",
        f"def _vjp{l}(Y, G, vx, vy, vz):",
        f'    """(vx, vy, vz) + sum_m G[m] dY_{l + 1}[m]/dr from Y = Y_{l} and G = G_{l + 1}."""',
        f"    K = _k{l}(Y[0].dtype)",
        *lines,
        f"    return vx + {f}ax, vy + {f}ay, vz + {f}az",
    ]


def triton_dispatch(name: str, args: str, doc: str) -> list[str]:
    """``name(.., L)`` calls ``name{L}``: one static branch per level, resolved when compiling."""
    lines = [
        "@triton.jit",
        f"def {name}({args}, L: tl.constexpr):",
        f'    """{doc}"""',
        f'    tl.static_assert(L < {LMAX}, "levels above LMAX are not generated")',
    ]
    for l in range(LMAX):
        lines += [
            f"    {'if' if l == 0 else 'elif'} L == {l}:",
            f"        return {name}{l}({args})",
        ]
    return lines


TRITON_HEADER = '''\
# GENERATED by tools/gen_sh.py -- do not edit; CI fails on drift.
"""Real spherical harmonics in e3nn's basis ("component"), one recursion level per helper.

The recursion of csrc/core/sh.h, Y_{l+1}[m] = sum c Y_l[i] r_j, on per-lane tensors (one block of
vectors): ``_poly(Y, x, y, z, l)`` is the bilinear form B_l(Y_l, (x, y, z)), which gives Y_{l+1}
and the jvp (l + 1) B_l(Y_l, d); ``_vjp(Y, G, vx, vy, vz, l)`` adds sum_m G_{l+1}[m] dY_{l+1}[m]/dr.
A level is a tuple of tensors. Coefficients come from ``_k{l}(dtype)``: ``tl.full`` is exact in
float64, where a bare float literal would be typed float32.
"""

import triton
import triton.language as tl

LMAX = %d
'''


def generate_triton() -> str:
    funcs = []
    for l in range(LMAX):
        funcs += [triton_constants(l), triton_poly(l), triton_vjp(l)]
    funcs.append(triton_dispatch("_poly", "Y, x, y, z", "Y_{L+1} = B_L(Y, (x, y, z)), Y = Y_L."))
    funcs.append(triton_dispatch("_vjp", "Y, G, vx, vy, vz", "(vx, vy, vz) + G . dY_{L+1}/dr."))
    return TRITON_HEADER % LMAX + "".join("\n\n" + "\n".join(f) + "\n" for f in funcs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    args = parser.parse_args()
    stale = 0
    for out, text in ((OUT, generate()), (OUT_TRITON, generate_triton())):
        if args.check:
            if not out.exists() or out.read_text() != text:
                print(f"{out} is out of date: run python tools/gen_sh.py", file=sys.stderr)
                stale = 1
            else:
                print(f"{out.name} is up to date")
        else:
            out.write_text(text)
            print(f"wrote {out} ({len(text.splitlines())} lines)")
    return stale


if __name__ == "__main__":
    sys.exit(main())
