"""How the harness drives an artefact: one :class:`Runner` per method, block by block.

Each target wraps its artefact (a TorchScript module called as nn~ calls it, an ONNX
graph in onnxruntime with its state fed back, a NumPy plugin emulation) in runners; the
generic checks of :mod:`rave_deploy.check.harness` only see runners and the eager
reference, so every target is judged the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch

from rave_core.models.rave import RAVE

from ..model import DeployModel


class Runner:
    """One method of an artefact, processed block by block with state carried over.

    Subclasses implement :meth:`reset` and :meth:`process`. ``process`` takes float32
    ``(batch, in_channels, n / in_ratio)`` and returns ``(batch, out_channels, n / out_ratio)``.
    """

    method: str = "forward"
    in_channels: int = 1
    in_ratio: int = 1
    out_channels: int = 1
    out_ratio: int = 1

    def reset(self, batch: int = 1) -> None:
        raise NotImplementedError

    def process(self, block: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run(self, signal: np.ndarray, block_size: int) -> np.ndarray:
        """Reset, then stream ``signal`` (``(batch, in_channels, T)``, T a multiple of
        ``block_size / in_ratio``) in host blocks of ``block_size`` audio samples."""
        self.reset(signal.shape[0])
        step = block_size // self.in_ratio
        outs = [self.process(np.ascontiguousarray(signal[..., i:i + step]))
                for i in range(0, signal.shape[-1], step)]
        return np.concatenate(outs, -1)


class TorchScriptRunner(Runner):
    """A method of a scripted module, called as nn~ calls it (inference mode)."""

    def __init__(self, module, method: str, params, reset_fn: Callable[[int], None]):
        self.module, self.method = module, method
        self.in_channels, self.in_ratio, self.out_channels, self.out_ratio = (int(p) for p in params)
        self._fn = getattr(module, method)
        self._reset = reset_fn

    def reset(self, batch: int = 1) -> None:
        self._reset(batch)

    def process(self, block: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self._fn(torch.from_numpy(block)).numpy()


@dataclass
class Delays:
    """Streaming delays of each method: audio samples (encode: latent frames x ratio)."""

    encode: int
    decode: int
    forward: int


class EagerReference:
    """The eager (offline, deterministic) model an artefact is compared against."""

    def __init__(self, model: RAVE, fidelity: float):
        self.core = DeployModel(model, fidelity=fidelity, deterministic=True, streaming=False)
        self.ratio = self.core.ratio
        self.sr = self.core.sr
        self.latent_size = self.core.latent_size
        self.n_channels = self.core.n_channels
        self.delays = Delays(self.core.encode_delay, self.core.decode_delay,
                             self.core.latency_samples)

    def __call__(self, method: str, signal: np.ndarray) -> np.ndarray:
        fn: Dict[str, Callable] = {"encode": self.core.encode, "decode": self.core.decode,
                                   "forward": self.core.forward}
        with torch.inference_mode():
            return fn[method](torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32))).numpy()

    @property
    def discrete(self) -> bool:
        """Whether the latent is code indices (a residual vector quantiser)."""
        return self.core.codebooks is not None

    def near_tie_outputs(self, method: str, signal: np.ndarray, context: int = 0
                         ) -> List[Tuple[int, np.ndarray]]:
        """For a :attr:`discrete` model, ``method``'s (``encode`` or ``forward``) eager
        output of ``signal`` ``(1, channels, time)`` around each near-tie of its encoding,
        with the other code there: ``(start, values)`` segments
        (:func:`rave_deploy.check.near_ties.tie_segments`; ``context``: the decoder's
        receptive field in frames)."""
        from .near_ties import tie_segments

        x = torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32))
        return tie_segments(self.core, x, method, context)

    def delay_of(self, method: str) -> int:
        """Delay in output samples of ``method`` (latent frames for encode)."""
        if method == "encode":
            return self.delays.encode // self.ratio
        return getattr(self.delays, method)
