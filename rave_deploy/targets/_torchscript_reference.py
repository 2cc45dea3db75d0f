"""The reference a TorchScript file is checked against, in its host's units: not a target
(the leading underscore keeps it out of target discovery).

:class:`HostReference` is the eager model at the host's rate and channel count (the
file's resampler and mixing matrix applied offline); :class:`HostChannels` shows a runner
of the file with the model's channel count. :class:`~._torchscript.TorchScriptTarget`'s
generic checks (parity, causality, block sizes, latency, real-time factor) compare the
two.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from rave_core.models.rave import RAVE

from ..torchscript import StreamingResampler


class HostReference:
    """The eager reference of a scripted file with host options: duck-types
    :class:`~rave_deploy.check.runner.EagerReference` at the host's rate.

    ``__call__`` chains the offline resampler (if any), the eager deterministic model and,
    for fewer host channels than the model's, the file's mixing matrix (the mixed channels
    repeated up to the model's channel count, as :class:`HostChannels` repeats the
    file's). The delays are those the artefact reports (its sidecar), which the parity
    and latency checks then verify.
    """

    def __init__(self, model: RAVE, fidelity: float, factor: int, delays: Dict[str, int],
                 mix: Optional[np.ndarray] = None) -> None:
        from ..check.runner import EagerReference

        self.base = EagerReference(model, fidelity)
        self.factor = int(factor)
        self.resampler = StreamingResampler(self.factor).eval() if self.factor > 1 else None
        self.ratio = self.base.ratio * self.factor
        self.sr = self.base.sr * self.factor
        self.latent_size = self.base.latent_size
        self.n_channels = self.base.n_channels
        self.discrete = self.base.discrete
        self.delays = dict(delays)
        self.mix = None if mix is None else np.asarray(mix, np.float32)

    def __call__(self, method: str, signal: np.ndarray) -> np.ndarray:
        return self._to_host(method, self.base(method, self._from_host(method, signal)))

    def near_tie_outputs(self, method: str, signal: np.ndarray, context: int = 0
                         ) -> List[Tuple[int, np.ndarray]]:
        """The base reference's near-tie segments (a discrete model), as the host sees
        them; none through the resampler (a segment cannot be resampled alone)."""
        if self.resampler is not None:
            return []
        return [(start, self._to_host(method, values[None])[0]) for start, values in
                self.base.near_tie_outputs(method, signal, context)]

    def _from_host(self, method: str, signal: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(signal, dtype=np.float32)
        if self.resampler is not None and method in ("encode", "forward"):
            with torch.inference_mode():
                x = self.resampler.down(torch.from_numpy(x)).numpy()
        return x

    def _to_host(self, method: str, y: np.ndarray) -> np.ndarray:
        if self.resampler is not None and method in ("decode", "forward"):
            with torch.inference_mode():
                y = self.resampler.up(torch.from_numpy(y)).numpy()
        if self.mix is not None and method in ("decode", "forward"):
            y = np.einsum("oc,bct->bot", self.mix, y)
            y = y[:, [i % y.shape[1] for i in range(self.n_channels)]]
        return np.ascontiguousarray(y, dtype=np.float32)

    def delay_of(self, method: str) -> int:
        if method == "encode":
            return self.delays["encode"] // self.ratio
        return self.delays[method]


class HostChannels:
    """A runner seen with the model's channel count: extra host channels (replicated
    decodes) are cut, fewer (mixed down) are repeated cyclically."""

    def __init__(self, inner, channels: int) -> None:
        self.inner, self.method = inner, inner.method
        self.in_channels, self.in_ratio = inner.in_channels, inner.in_ratio
        self.out_channels, self.out_ratio = channels, inner.out_ratio
        self._index = [i % inner.out_channels for i in range(channels)]

    def reset(self, batch: int = 1) -> None:
        self.inner.reset(batch)

    def process(self, block: np.ndarray) -> np.ndarray:
        return self.inner.process(block)[:, self._index]

    def run(self, signal: np.ndarray, block_size: int) -> np.ndarray:
        return self.inner.run(signal, block_size)[:, self._index]
