"""``e3nn.nn.Gate`` with plain elementwise torch ops (scriptable, compilable, exportable).

The activations are normalised to unit second moment exactly as e3nn does (``normalize2mom``: the
constant is taken from e3nn itself), and the parities of the outputs follow e3nn's rules.
"""

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..descriptors import InvalidSpecification
from ..irreps import irreps as to_irreps
from ..irreps import o3
from .tensor_product import ElementwiseTensorProduct, load_twin

# Activations TorchScript can call by name; anything else is called back in Python.
_NAMED: dict[Any, str] = {
    torch.tanh: "tanh", torch.sigmoid: "sigmoid", torch.relu: "relu", F.relu: "relu",
    F.silu: "silu", torch.abs: "abs", F.gelu: "gelu", F.softplus: "softplus", torch.sin: "sin",
    torch.cos: "cos", torch.exp: "exp", F.elu: "elu", F.tanh: "tanh", F.sigmoid: "sigmoid",
}  # fmt: skip


class _Act(torch.nn.Module):
    """``cst * f(x)``, with e3nn's normalisation constant ``cst`` (1 when e3nn skips it)."""

    cst: float
    is_id: bool

    def __init__(self, f: Callable[[Tensor], Tensor], cst: float, is_id: bool) -> None:
        super().__init__()
        self.f, self.cst, self.is_id = f, float(cst), bool(is_id)

    def scale(self, y: Tensor) -> Tensor:
        return y if self.is_id else y * self.cst


class _NamedAct(_Act):
    name: str

    def __init__(self, f: Callable[[Tensor], Tensor], cst: float, is_id: bool) -> None:
        super().__init__(f, cst, is_id)
        self.name = _NAMED[f]

    def forward(self, x: Tensor) -> Tensor:
        n = self.name
        if n == "tanh":
            y = torch.tanh(x)
        elif n == "sigmoid":
            y = torch.sigmoid(x)
        elif n == "relu":
            y = torch.relu(x)
        elif n == "silu":
            y = F.silu(x)
        elif n == "abs":
            y = torch.abs(x)
        elif n == "gelu":
            y = F.gelu(x)
        elif n == "softplus":
            y = F.softplus(x)
        elif n == "sin":
            y = torch.sin(x)
        elif n == "cos":
            y = torch.cos(x)
        elif n == "exp":
            y = torch.exp(x)
        else:
            y = F.elu(x)
        return self.scale(y)


class _ModuleAct(_Act):
    def forward(self, x: Tensor) -> Tensor:
        return self.scale(self.f(x))


class _PythonAct(_Act):
    """Any other callable: fine eagerly and under torch.compile; TorchScript calls back Python."""

    @torch.jit.ignore
    def call(self, x: Tensor) -> Tensor:
        return self.f(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale(self.call(x))


class _Identity(torch.nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


def _make_act(act: Any) -> torch.nn.Module:
    """Our module for one e3nn ``normalize2mom`` activation (or None for the identity)."""
    if act is None:
        return _Identity()
    f, cst, is_id = act.f, act.cst, act._is_id
    if isinstance(f, torch.nn.Module):
        return _ModuleAct(f, cst, is_id)
    try:
        named = f in _NAMED
    except TypeError:  # unhashable callable
        named = False
    return _NamedAct(f, cst, is_id) if named else _PythonAct(f, cst, is_id)


class Activation(torch.nn.Module):
    """``e3nn.nn.Activation``: one activation (or None) per block of scalars.

    >>> Activation("256x0o", [torch.abs]).irreps_out
    256x0e
    """

    __e3nn_compile_mode__ = "script"  # e3nn.util.jit.compile scripts us

    def __init__(self, irreps_in: Any, acts: list[Callable | None]) -> None:
        super().__init__()
        irreps_in = to_irreps(irreps_in)  # imports e3nn with the flag e3nn 0.4.4 needs
        from e3nn.nn import Activation as E3nnActivation

        ref = E3nnActivation(irreps_in, acts)  # parities and constants exactly as e3nn
        self.irreps_in, self.irreps_out = ref.irreps_in, ref.irreps_out
        self.acts = torch.nn.ModuleList([_make_act(a) for a in ref.acts])
        self._sizes = [mul * ir.dim for mul, ir in self.irreps_in]

    @classmethod
    def from_e3nn(cls, module: torch.nn.Module) -> "Activation":
        """The fastcg twin of an ``e3nn.nn.Activation``."""
        return load_twin(cls(module.irreps_in, _functions(module)), module)

    def forward(self, features: Tensor) -> Tensor:
        """Apply each block's activation along the last dimension."""
        out: list[Tensor] = []
        start = 0
        for i, act in enumerate(self.acts):
            size = self._sizes[i]
            out.append(act(features.narrow(-1, start, size)))
            start += size
        if len(out) == 0:
            return torch.zeros_like(features)
        return torch.cat(out, dim=-1) if len(out) > 1 else out[0]


class Gate(torch.nn.Module):
    r"""Gate activation, ``e3nn.nn.Gate`` with the same arguments and state_dict.

    :math:`(\bigoplus_i \phi_i(x_i)) \oplus (\bigoplus_j \phi_j(g_j) y_j)`; the input is
    ``irreps_in`` (scalars, gates and gated sorted together, as in e3nn).

    >>> g = Gate("16x0o", [torch.tanh], "32x0o", [torch.tanh], "16x1e+16x1o")
    >>> g.irreps_out
    16x0o+16x1o+16x1e
    """

    _has_gates: bool
    __e3nn_compile_mode__ = "script"  # e3nn.util.jit.compile scripts us

    def __init__(
        self, irreps_scalars: Any, act_scalars: list, irreps_gates: Any, act_gates: list,
        irreps_gated: Any,
    ) -> None:  # fmt: skip
        super().__init__()
        o3()  # imports e3nn with the flag e3nn 0.4.4 needs
        irreps_scalars, irreps_gates = to_irreps(irreps_scalars), to_irreps(irreps_gates)
        irreps_gated = to_irreps(irreps_gated)
        # e3nn tests ``irreps.lmax > 0``, which fails on blocks of multiplicity 0 ("0x0e")
        if any(ir.l > 0 for _, ir in irreps_gates):
            raise InvalidSpecification(
                f"Gate scalars must be scalars, instead got irreps_gates = {irreps_gates}"
            )
        if any(ir.l > 0 for _, ir in irreps_scalars):
            raise InvalidSpecification(
                f"Scalars must be scalars, instead got irreps_scalars = {irreps_scalars}"
            )
        if irreps_gates.num_irreps != irreps_gated.num_irreps:
            raise InvalidSpecification(
                f"There are {irreps_gated.num_irreps} irreps in irreps_gated but "
                f"{irreps_gates.num_irreps} gate scalars in irreps_gates"
            )
        self._sortcut(irreps_scalars, irreps_gates, irreps_gated)
        self.act_scalars = Activation(irreps_scalars, act_scalars)
        self.act_gates = Activation(irreps_gates, act_gates)
        # e3nn pairs the gates with irreps_gated as given (not simplified): same irreps_out
        self.mul = ElementwiseTensorProduct(irreps_gated, self.act_gates.irreps_out)
        self._irreps_out = self.act_scalars.irreps_out + self.mul.irreps_out
        self._has_gates = self.irreps_gates.dim > 0
        # gated component c is multiplied by gate scalar gate_of[c]
        gate_of = [
            k for k, (mul, ir) in enumerate(_copies(self.irreps_gated)) for _ in range(ir.dim)
        ]
        self.register_buffer("_gate_of", torch.tensor(gate_of, dtype=torch.long), persistent=False)

    def _sortcut(self, *parts: Any) -> None:
        """e3nn's ``_Sortcut``: the input is the sorted concatenation of the three parts."""
        self.irreps_scalars, self.irreps_gates, self.irreps_gated = (p.simplify() for p in parts)
        blocks = [b for p in parts for b in p.simplify()]
        cat = o3().Irreps(blocks)
        sorted_in, perm, _ = cat.sort()
        starts = [sorted_in[: perm[i]].dim for i in range(len(blocks))]
        index = [s + k for s, (mul, ir) in zip(starts, blocks) for k in range(mul * ir.dim)]
        self._irreps_in = sorted_in.simplify()
        self.register_buffer("_index", torch.tensor(index, dtype=torch.long), persistent=False)
        dims = [p.dim for p in (self.irreps_scalars, self.irreps_gates, self.irreps_gated)]
        self._split = dims

    @property
    def irreps_in(self) -> Any:
        """Input representations."""
        return self._irreps_in

    @property
    def irreps_out(self) -> Any:
        """Output representations."""
        return self._irreps_out

    def __repr__(self) -> str:
        return f"{self.__class__.__name__} ({self.irreps_in} -> {self.irreps_out})"

    @classmethod
    def from_e3nn(cls, module: torch.nn.Module) -> "Gate":
        """The fastcg twin of an ``e3nn.nn.Gate`` (same irreps and activations)."""
        scalars, gates = module.act_scalars, module.act_gates
        twin = cls(scalars.irreps_in, _functions(scalars), gates.irreps_in, _functions(gates),
                   module.irreps_gated)  # fmt: skip
        return load_twin(twin, module)

    def forward(self, features: Tensor) -> Tensor:
        """``features[..., irreps_in.dim] -> [..., irreps_out.dim]``."""
        x = features.index_select(-1, self._index)
        n_s, n_g, n_y = self._split[0], self._split[1], self._split[2]
        scalars = self.act_scalars(x.narrow(-1, 0, n_s))
        if not self._has_gates:
            return scalars
        gates = self.act_gates(x.narrow(-1, n_s, n_g))
        gated = x.narrow(-1, n_s + n_g, n_y) * gates.index_select(-1, self._gate_of)
        return torch.cat([scalars, gated], dim=-1)


def _functions(activation: torch.nn.Module) -> list:
    """The user's functions inside an e3nn ``Activation`` (e3nn wraps each in normalize2mom)."""
    return [None if a is None else a.f for a in activation.acts]


def _copies(irreps: Any) -> list:
    """Each irrep of ``irreps`` once per multiplicity, in order."""
    return [(1, ir) for mul, ir in irreps for _ in range(mul)]
