"""Species-indexed equivariant linear: MACE's skip ``FullyConnectedTensorProduct(h, one_hot)``."""

from typing import Any

import torch
from torch import Tensor

from ..cg import wigner_3j
from ..descriptors import LinearTables, linear_descriptor
from ..irreps import irreps as to_irreps
from ..ops import linear
from .symmetric_contraction import one_hot_species
from .tensor_product import Float64Tables, copy_persistent_buffers, without_e3nn_codegen


class SpeciesLinear(Float64Tables):
    """``e3nn.o3.Linear(irreps_in, irreps_out)`` with one weight set per species.

    ``forward(x, species)``: x ``[N, irreps_in.dim]``, species ``[N]`` integers or one-hot
    ``[N, num_species]`` (MACE's node attributes; the species is the argmax). Weights
    ``[num_species, weight_numel]``; each output path is scaled by ``coeff_scale`` / sqrt(fan-in)
    (``from_skip_tp`` sets coeff_scale = 1/sqrt(num_species), the tensor product's fan-in).

    >>> lin = SpeciesLinear("4x0e+2x1o", "3x0e+1x1o", num_species=5)
    >>> lin(torch.randn(7, 10), torch.randint(0, 5, (7,))).shape
    torch.Size([7, 6])
    """

    _float64_tables = ("_path_coeff",)
    __e3nn_compile_mode__ = "script"
    weight_numel: int
    _dim_in: int
    _dim_out: int

    def __init__(
        self, irreps_in: Any, irreps_out: Any, num_species: int,
        instructions: list[tuple[int, int]] | None = None, coeff_scale: float = 1.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.irreps_in, self.irreps_out = to_irreps(irreps_in), to_irreps(irreps_out)
        if num_species < 1:
            raise ValueError(f"num_species must be positive, got {num_species}")
        desc = linear_descriptor(self.irreps_in, self.irreps_out, instructions)
        self.descriptor, self.num_species = desc, int(num_species)
        self.weight_numel = desc.weight_numel
        self._dim_in, self._dim_out = desc.dim_in, desc.dim_out
        self.weight = torch.nn.Parameter(torch.randn(self.num_species, desc.weight_numel))
        paths, coeff = desc.tensors()
        self.register_buffer("_paths", paths, persistent=False)
        self.register_buffer("_path_coeff", coeff * coeff_scale, persistent=False)
        self.register_buffer("_weight_index", torch.zeros(0, dtype=torch.long), persistent=False)

    @classmethod
    def from_skip_tp(cls, fctp: torch.nn.Module) -> "SpeciesLinear":
        """Twin of an e3nn ``FullyConnectedTensorProduct(x_irreps, "Sx0e", out_irreps)`` called
        with one-hot species attributes (mace-torch's ``skip_tp``): same outputs; ``weight`` is
        a copy of the tensor product's flat parameter (same name and shape), rearranged
        ``[u, s, w] -> [s, (u, w)]`` by a gather at each call."""
        ir1, ir2, ir_out = fctp.irreps_in1, fctp.irreps_in2, fctp.irreps_out
        if len(ir2) != 1 or ir2[0].ir.l != 0 or ir2[0].ir.p != 1:
            raise ValueError(f"the second input must be one block of 0e (species), got {ir2}")
        if not fctp.internal_weights or not fctp.shared_weights:
            raise NotImplementedError("only tensor products with internal, shared weights")
        s = ir2[0].mul
        ins = fctp.instructions
        if any(i.connection_mode != "uvw" or not i.has_weight or i.i_in2 != 0 for i in ins):
            raise NotImplementedError("only weighted uvw paths of a fully connected product")
        pairs = [(i.i_in1, i.i_out) for i in ins]
        twin = cls(ir1, ir_out, s, instructions=pairs)
        # e3nn: out = path_weight * w3j(l, 0, l) * sum_uv w[u, v, w] x[u] y[v]; w3j(l, 0, l) is
        # the identity over sqrt(2l + 1), so each linear path's coefficient is replaced.
        coeff = [i.path_weight * float(wigner_3j(ir1[i.i_in1].ir.l, 0, ir1[i.i_in1].ir.l)[0, 0, 0])
                 for i in ins if ir1[i.i_in1].mul * ir_out[i.i_out].mul > 0]  # fmt: skip
        twin._path_coeff = torch.tensor(coeff, dtype=torch.float64)
        # The tensor product's own flat weight [(u, s, w) per path] stays the parameter (same
        # name, shape and state_dict); forward gathers it into [s, (u, w) per path].
        blocks, off = [], 0
        for i in ins:
            mi, mo = ir1[i.i_in1].mul, ir_out[i.i_out].mul
            idx = torch.arange(off, off + mi * s * mo).reshape(mi, s, mo)
            blocks.append(idx.permute(1, 0, 2).reshape(s, mi * mo))
            off += mi * s * mo
        index = torch.cat(blocks, dim=1) if blocks else torch.zeros(s, 0, dtype=torch.long)
        twin._weight_index = index.reshape(-1)
        twin.weight = torch.nn.Parameter(fctp.weight.detach().clone(),
                                         requires_grad=fctp.weight.requires_grad)  # fmt: skip
        copy_persistent_buffers(twin, fctp)  # e3nn's output_mask
        ref = fctp.weight
        return twin.to(device=ref.device, dtype=ref.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a skip tensor product's state_dict: e3nn's generated-code buffers are not needed here
        super()._load_from_state_dict(without_e3nn_codegen(state_dict, prefix), prefix, *args,
                                      **kwargs)  # fmt: skip

    def species_weights(self) -> Tensor:
        """``[num_species, weight_numel]`` (gathered from a tensor product's flat weight)."""
        if self._weight_index.numel() == 0:
            return self.weight
        w = self.weight.index_select(0, self._weight_index)
        return w.view(self.num_species, self.weight_numel)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.irreps_in} -> {self.irreps_out} | "
                f"{self.num_species} species x {self.weight_numel} weights)")  # fmt: skip

    def forward(self, x: Tensor, species: Tensor) -> Tensor:
        """x ``[N, irreps_in.dim]``; species ``[N]`` or one-hot ``[N, num_species]``."""
        species = one_hot_species(species)
        if self.weight_numel == 0:
            return x.new_zeros(list(x.shape[:-1]) + [self._dim_out])
        tables = LinearTables(self._paths, self._path_coeff, self._dim_in, self._dim_out,
                              self.weight_numel)  # fmt: skip
        return linear(x, self.species_weights(), tables, species)
