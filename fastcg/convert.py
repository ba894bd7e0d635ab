"""``convert(model)``: a copy of a model with its e3nn hot paths on fastcg kernels.

Every ``e3nn.o3.TensorProduct`` (and subclass), ``o3.Linear``, ``o3.SphericalHarmonics``,
``e3nn.nn.Gate`` / ``Activation`` / ``FullyConnectedNet`` becomes its ``fastcg.nn`` twin
(``from_e3nn``: same weights, same state_dict). Before that, each framework the process has
imported gets its say (:mod:`fastcg.integrations`): mace-torch's interactions become fused convs,
for example. This is fastcg's one public ``convert``.
"""

import copy
import warnings

import torch

from . import integrations
from .nn import twin


def convert(model: torch.nn.Module, radial: str = "exact", step: float = 0.01) -> torch.nn.Module:
    """A copy of ``model`` with every supported e3nn module (and framework conv) on fastcg.

    Same parameters (values, names, dtype, device); the original is left untouched. Modules
    fastcg has no twin for (e.g. e3nn's ``TensorSquare``) stay e3nn's.

    ``radial="tabulated"`` (opt-in, for MD): the convs read their per-edge weights from cubic
    Hermite tables of the model's radial functions (knots every ``step`` Angstrom, CPU kernel)
    instead of running the radial MLPs: not the same numbers, first derivatives only (forces,
    stress; no training). The tables hold the parameters of conversion time. The largest error
    of the tables, absolute and relative to the largest weight, measured between knots, is the
    copy's ``radial_table_error``. mace-torch models only.

    >>> from e3nn import o3
    >>> lin = o3.Linear("2x0e+1x1o", "1x0e")
    >>> type(convert(torch.nn.Sequential(lin))[0]).__module__
    'fastcg.nn.linear'
    """
    with warnings.catch_warnings():
        # e3nn 0.4.4 pickles its generated code through torch.jit (deprecation warnings)
        warnings.simplefilter("ignore")
        out = copy.deepcopy(model)
    integrations.convert_modules(out)
    out = _swap_e3nn(out)
    integrations.finish(out)
    if radial == "tabulated":
        tables = integrations.tabulate(out, step)
        if not tables:
            raise ValueError("radial='tabulated': no radial function fastcg can tabulate here")
        out.radial_table_error = (
            max(t.max_error for t in tables),
            max(t.max_rel_error for t in tables),
        )
    elif radial != "exact":
        raise ValueError(f"radial must be 'exact' or 'tabulated', got {radial!r}")
    return out


def _swap_e3nn(model: torch.nn.Module) -> torch.nn.Module:
    """Every supported e3nn module in ``model`` swapped for its twin, in place; returns ``model``
    (or its twin when ``model`` itself is an e3nn module)."""
    new = twin(model)
    if new is not None:
        return new
    for name, child in list(model.named_children()):
        new = _swap_e3nn(child)
        if new is not child:
            setattr(model, name, new)
    return model
