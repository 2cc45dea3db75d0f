"""Weight normalisation with acids-rave's parameter names (``weight_g``, ``weight_v``).

We use torch's hook-based ``weight_norm`` because its state-dict keys are the ones every
existing RAVE checkpoint carries; the newer parametrisation API would name them
``parametrizations.weight.original0/1``. Export folds it away (:func:`remove_weight_norm`),
so no host ever runs the hook.
"""
from __future__ import annotations

import warnings

import torch.nn as nn
from torch.nn.utils import remove_weight_norm as _remove
from torch.nn.utils import weight_norm as _weight_norm


def apply_weight_norm(module: nn.Module) -> nn.Module:
    """Reparametrise ``module.weight`` as ``weight_g * weight_v / |weight_v|`` (dim 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        return _weight_norm(module)


def remove_weight_norm(model: nn.Module) -> nn.Module:
    """Fold every weight norm below ``model`` into a plain ``weight`` parameter, in place."""
    for m in model.modules():
        if hasattr(m, "weight_g") and hasattr(m, "weight_v"):
            _remove(m)
    return model


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on weight-normed modules.

    torch's weight norm caches ``weight`` as a non-leaf tensor, which deepcopy refuses;
    recomputing it without autograd makes it a leaf (the next forward recomputes it).
    """
    import copy

    import torch
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "weight_g") and hasattr(m, "weight_v"):
                norm = m.weight_v.norm(2, dim=tuple(range(1, m.weight_v.dim())), keepdim=True)
                m.weight = m.weight_v * (m.weight_g / norm)
    return copy.deepcopy(model)
