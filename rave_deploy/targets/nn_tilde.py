"""nn~ (Max/MSP, PureData): the TorchScript file, checked against every shared TorchScript
host contract (:mod:`rave_deploy.targets._torchscript`), including an emulation of nn~'s
own buffering (:mod:`rave_deploy.nn_tilde_emulation`).
"""
from __future__ import annotations

from ._torchscript import TorchScriptTarget
from .base import register


@register
class NnTildeTarget(TorchScriptTarget):
    """nn~ 1.6 in Max/MSP and PureData (libtorch 2.5.1)."""

    name = "nn_tilde"
    description = "TorchScript for nn~ (Max/MSP, PureData): streaming encode/decode/forward"
    host = "nn~"
    style_learning = None  # learn_target / learn_source messages
