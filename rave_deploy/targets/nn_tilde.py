"""nn~ (Max/MSP, PureData): the TorchScript file, checked against every shared TorchScript
host contract (:mod:`rave_deploy.targets._torchscript_contracts`), including an
emulation of nn~'s own buffering (:mod:`rave_deploy.nn_tilde_emulation`).
"""
from __future__ import annotations

from typing import Optional, Sequence

from ._torchscript import TorchScriptTarget, nn_tilde_adds
from .base import HostLatency, register


@register
class NnTildeTarget(TorchScriptTarget):
    """nn~ 1.6 in Max/MSP and PureData (libtorch 2.5.1)."""

    name = "nn_tilde"
    description = "TorchScript for nn~ (Max/MSP, PureData): streaming encode/decode/forward"
    host = "nn~"
    style_learning = None  # learn_target / learn_source messages

    def host_latency(self, ratio: int, blocks: Sequence[int]) -> Optional[HostLatency]:
        return HostLatency(
            self.host, "host contract 28, at Pd's 64-sample vector: threaded 2N − 64 (buffer "
            "argument N), unthreaded R − 64 (buffer argument 0, at the largest ratio R)",
            {"threaded": "threaded at block {block}",
             "unthreaded": "unthreaded (buffer argument 0)"},
            nn_tilde_adds(ratio, blocks), key="nn_tilde_adds")
