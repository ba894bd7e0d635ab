"""Canonical problem sizes shared by the benchmarks (and usable by tests).

MACE / NequIP interaction: node features x spherical harmonics of the edge vectors -> every
uvu path with l_out <= lmax_out, each path its own output block (as MACE and NequIP build
irreps_out before their linear), per-edge weights from the radial network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastcg.irreps import o3


@dataclass(frozen=True)
class ConvProblem:
    name: str
    irreps_in: str
    lmax_sh: int
    lmax_out: int
    num_nodes: int
    num_edges: int

    def irreps_sh(self) -> str:
        return "+".join(f"1x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(self.lmax_sh + 1))

    def instructions(self) -> tuple[str, list[tuple]]:
        """(irreps_out, uvu instructions) with one output block per path."""
        ir1, ir2 = o3().Irreps(self.irreps_in), o3().Irreps(self.irreps_sh())
        outs, ins = [], []
        for i, (mul, a) in enumerate(ir1):
            for j, (_, b) in enumerate(ir2):
                for c in a * b:
                    if c.l <= self.lmax_out:
                        ins.append((i, j, len(outs), "uvu", True))
                        outs.append(f"{mul}x{c}")
        return "+".join(outs), ins

    @property
    def lmax(self) -> int:
        return self.lmax_sh

    @property
    def descriptor(self):
        """The conv's TPDescriptor (what tools/triton_aot.py and bench/gpu.py read)."""
        from fastcg import tensor_product_descriptor

        irreps_out, ins = self.instructions()
        return tensor_product_descriptor(self.irreps_in, self.irreps_sh(), irreps_out, ins)

    def scaled(self, scale: float) -> ConvProblem:
        n, e = max(2, int(self.num_nodes * scale)), max(4, int(self.num_edges * scale))
        return ConvProblem(self.name, self.irreps_in, self.lmax_sh, self.lmax_out, n, e)


@dataclass(frozen=True)
class SHProblem:
    name: str
    lmax: int
    num_vectors: int

    def scaled(self, scale: float) -> SHProblem:
        return SHProblem(self.name, self.lmax, max(8, int(self.num_vectors * scale)))


CONV = {
    # the CPU target: 2,000 nodes, 50,000 edges, 24 paths
    "conv-64x3": ConvProblem("conv-64x3", "64x0e+64x1o+64x2e", 3, 3, 2000, 50000),
    # NequIP-like small channels
    "nequip-32": ConvProblem("nequip-32", "32x0e+32x1o+32x1e+32x2e", 2, 2, 1000, 20000),
    # MACE-like (GPU-sized; on CPU run with --scale)
    "mace-128": ConvProblem("mace-128", "128x0e+128x1o+128x2e", 3, 3, 4000, 158000),
}
PROBLEMS = list(CONV.values())  # the conv problems, for tools/triton_aot.py and bench/gpu.py
SH = {
    "sh-l3": SHProblem("sh-l3", 3, 100000),
    "sh-l6": SHProblem("sh-l6", 6, 100000),
}


def conv_inputs(p: ConvProblem, dtype=torch.float32, seed: int = 0) -> dict:
    """Random node features, edge vectors, weights and edges for a conv problem."""
    gen = torch.Generator().manual_seed(seed)
    irreps_out, ins = p.instructions()
    desc = p.descriptor
    return {
        "descriptor": desc,
        "instructions": ins,
        "irreps_out": irreps_out,
        "x": torch.randn(p.num_nodes, desc.dim1, generator=gen, dtype=dtype),
        "vectors": torch.randn(p.num_edges, 3, generator=gen, dtype=dtype),
        "weights": torch.randn(p.num_edges, desc.weight_numel, generator=gen, dtype=dtype),
        "src": torch.randint(0, p.num_nodes, (p.num_edges,), generator=gen),
        "dst": torch.randint(0, p.num_nodes, (p.num_edges,), generator=gen),
    }
