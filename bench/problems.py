"""Canonical problem sizes shared by the benchmarks and tests (as OpenEquivariance's problems.py).

MACE / NequIP interaction: node features x spherical harmonics of the edge vectors -> every
uvu path with l_out <= lmax_out, each path its own output block (as MACE and NequIP build
irreps_out before their linear), per-edge weights from the radial network. The linear and
scatter problems are the same models' other hot spots: the node linears before and after the
conv, and the per-edge message sum of an unfused conv.

    p = CONV["conv-64x3"]
    inputs = make_inputs(p, torch.float32, "cpu", seed=0, scale=0.1)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from fastcg.irreps import o3


def _sh_irreps(lmax: int) -> str:
    return "+".join(f"1x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(lmax + 1))


@dataclass(frozen=True)
class ConvProblem:
    """x[N, irreps_in1] (x) SH(edge vectors)[E, irreps_in2] -> uvu paths, summed into N nodes."""

    name: str
    irreps_in: str
    lmax_sh: int
    lmax_out: int
    num_nodes: int
    num_edges: int

    @property
    def irreps_in1(self) -> str:
        return self.irreps_in

    @property
    def irreps_in2(self) -> str:
        return _sh_irreps(self.lmax_sh)

    def irreps_sh(self) -> str:
        return self.irreps_in2

    @property
    def lmax(self) -> int:
        return self.lmax_sh

    def _paths(self) -> list[tuple[int, int, str]]:
        ir1, ir2 = o3().Irreps(self.irreps_in1), o3().Irreps(self.irreps_in2)
        return [
            (i, j, f"{mul}x{c}")
            for i, (mul, a) in enumerate(ir1)
            for j, (_, b) in enumerate(ir2)
            for c in a * b
            if c.l <= self.lmax_out
        ]

    @property
    def irreps_out(self) -> str:
        """One output block per path, in instruction order (MACE's / NequIP's irreps_mid)."""
        return "+".join(out for _, _, out in self._paths())

    def instructions(self) -> list[tuple]:
        """e3nn instructions: every uvu path with l_out <= lmax_out, each to its own block."""
        return [(i, j, k, "uvu", True) for k, (i, j, _) in enumerate(self._paths())]

    @property
    def descriptor(self):
        """The conv's TPDescriptor (what tools/triton_aot.py and bench/gpu.py read)."""
        from fastcg import tensor_product_descriptor

        return tensor_product_descriptor(
            self.irreps_in1, self.irreps_in2, self.irreps_out, self.instructions()
        )

    def scaled(self, scale: float) -> ConvProblem:
        n, e = max(2, int(self.num_nodes * scale)), max(4, int(self.num_edges * scale))
        return replace(self, num_nodes=n, num_edges=e)


@dataclass(frozen=True)
class SHProblem:
    """Spherical harmonics l = 0..lmax of num_vectors edge vectors."""

    name: str
    lmax: int
    num_vectors: int

    def scaled(self, scale: float) -> SHProblem:
        return replace(self, num_vectors=max(8, int(self.num_vectors * scale)))


@dataclass(frozen=True)
class LinearProblem:
    """e3nn.o3.Linear(irreps_in, irreps_out) on num_rows nodes, shared weights."""

    name: str
    irreps_in: str
    irreps_out: str
    num_rows: int

    def scaled(self, scale: float) -> LinearProblem:
        return replace(self, num_rows=max(2, int(self.num_rows * scale)))


@dataclass(frozen=True)
class ScatterProblem:
    """scatter_sum of num_edges rows of num_features into num_nodes rows."""

    name: str
    num_edges: int
    num_features: int
    num_nodes: int

    def scaled(self, scale: float) -> ScatterProblem:
        n, e = max(2, int(self.num_nodes * scale)), max(4, int(self.num_edges * scale))
        return replace(self, num_nodes=n, num_edges=e)


CONV = {
    # the CPU target: 2,000 nodes, 50,000 edges, 24 paths
    "conv-64x3": ConvProblem("conv-64x3", "64x0e+64x1o+64x2e", 3, 3, 2000, 50000),
    # NequIP-like small channels, both parities at l = 1
    "nequip-32": ConvProblem("nequip-32", "32x0e+32x1o+32x1e+32x2e", 2, 2, 1000, 20000),
    # MACE-like (GPU-sized: ~4,000 nodes, 158k edges; on a CPU run with --scale)
    "mace-128": ConvProblem("mace-128", "128x0e+128x1o+128x2e", 3, 3, 4000, 158000),
}
PROBLEMS = list(CONV.values())  # the conv problems, for tools/triton_aot.py and bench/gpu.py
SH = {
    "sh-l3": SHProblem("sh-l3", 3, 100000),
    "sh-l6": SHProblem("sh-l6", 6, 100000),
}
# Per model: the linear before the conv (irreps_in -> irreps_in), the one after it (the
# per-path blocks -> irreps_in), and the message scatter (E x dim_out -> N).
LINEAR = {
    **{f"{p.name}-linear-up": LinearProblem(f"{p.name}-linear-up", p.irreps_in, p.irreps_in,
                                            p.num_nodes) for p in PROBLEMS},
    **{f"{p.name}-linear-out": LinearProblem(f"{p.name}-linear-out", p.irreps_out, p.irreps_in,
                                             p.num_nodes) for p in PROBLEMS},
}  # fmt: skip
SCATTER = {
    f"{p.name}-scatter": ScatterProblem(
        f"{p.name}-scatter", p.num_edges, o3().Irreps(p.irreps_out).dim, p.num_nodes
    )
    for p in PROBLEMS
}
ALL = {**CONV, **SH, **LINEAR, **SCATTER}


def _random_edges(num_nodes: int, num_edges: int, gen: torch.Generator):
    """Random (src, dst) with no self-loops when num_nodes > 1 (so edge vectors are nonzero)."""
    src = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    shift = torch.randint(1, max(2, num_nodes), (num_edges,), generator=gen)
    dst = (src + shift) % num_nodes if num_nodes > 1 else src.clone()
    return src, dst


def make_inputs(problem, dtype=torch.float32, device="cpu", seed: int = 0, scale: float = 1.0):
    """Random inputs of ``problem`` (its sizes times ``scale``) as a dict of tensors.

    Conv: node positions -> random edges -> vectors r_ij = pos[src] - pos[dst] (docs/design.md's
    convention), their spherical harmonics "edge_attr" (e3nn's, component normalisation),
    node features "x", per-edge "weights", "src", "dst", "num_nodes" and the "descriptor".
    SH: "vectors". Linear: "x", shared "weights", "descriptor". Scatter: "src", "index",
    "dim_size".
    """
    p = problem.scaled(scale) if scale != 1.0 else problem
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype).to(device)

    if isinstance(p, SHProblem):
        return {"problem": p, "vectors": randn(p.num_vectors, 3)}
    if isinstance(p, LinearProblem):
        from fastcg import linear_descriptor

        desc = linear_descriptor(p.irreps_in, p.irreps_out)
        return {"problem": p, "descriptor": desc, "x": randn(p.num_rows, desc.dim_in),
                "weights": randn(desc.weight_numel)}  # fmt: skip
    if isinstance(p, ScatterProblem):
        index = torch.randint(0, p.num_nodes, (p.num_edges,), generator=gen).to(device)
        return {"problem": p, "src": randn(p.num_edges, p.num_features), "index": index,
                "dim_size": p.num_nodes}  # fmt: skip
    desc = p.descriptor
    pos = randn(p.num_nodes, 3) * 3.0
    src, dst = (t.to(device) for t in _random_edges(p.num_nodes, p.num_edges, gen))
    vectors = pos[src] - pos[dst]
    edge_attr = o3().spherical_harmonics(list(range(p.lmax_sh + 1)), vectors, True, "component")
    return {
        "problem": p,
        "descriptor": desc,
        "instructions": p.instructions(),
        "irreps_out": p.irreps_out,
        "num_nodes": p.num_nodes,
        "pos": pos,
        "vectors": vectors,
        "edge_attr": edge_attr,
        "x": randn(p.num_nodes, desc.dim1),
        "weights": randn(p.num_edges, desc.weight_numel),
        "src": src,
        "dst": dst,
    }


def conv_inputs(p: ConvProblem, dtype=torch.float32, seed: int = 0) -> dict:
    """make_inputs for a conv problem (kept for older callers)."""
    return make_inputs(p, dtype, "cpu", seed)
