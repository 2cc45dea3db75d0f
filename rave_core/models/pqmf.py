"""Pseudo-quadrature mirror filter bank (PQMF): audio <-> ``n_band`` critically sampled bands.

Analysis is one strided convolution (the polyphase form of filtering then decimating);
synthesis is one convolution over the bands followed by interleaving. Both are our
streaming :class:`~rave_core.nn.conv.Conv1d`, so the bank streams with explicit state.

RAVE flips the sign of odd bands on even samples (``reverse_half``). That flip depends on
the absolute sample index, so in streaming it must follow the delay of the signal it is
applied to. acids-rave's streaming exports apply it relative to each block, which flips
the odd bands of every model whose decoder delay is odd (v1, BRAVE): here the phase of the
flip is set from the delay (``configure_delay``), so streaming stays exact.
"""
from __future__ import annotations

import math

import gin
import numpy as np
import torch
import torch.nn as nn
from scipy.optimize import fmin
from scipy.signal import firwin, kaiserord

from ..nn.conv import Conv1d, get_padding


def kaiser_filter(wc: float, attenuation: float, n_taps: int | None = None) -> np.ndarray:
    """Kaiser-window low-pass FIR with cut-off ``wc`` (rad/sample) and ``attenuation`` dB."""
    n, beta = kaiserord(attenuation, wc / np.pi)
    n = 2 * (n // 2) + 1
    n = n_taps if n_taps is not None else n
    return firwin(n, wc, window=("kaiser", beta), scale=False, fs=2 * np.pi)


def _reconstruction_error(wc: float, attenuation: float, n_band: int) -> float:
    # Near-perfect reconstruction: the prototype's autocorrelation must vanish at
    # multiples of 2 * n_band (Lin & Vaidyanathan, 1998).
    h = kaiser_filter(wc, attenuation)
    g = np.convolve(h, h[::-1], "full")
    return float(np.max(np.abs(g[g.shape[-1] // 2::2 * n_band][1:])))


def prototype_filter(attenuation: float, n_band: int) -> np.ndarray:
    """The low-pass prototype of a ``n_band`` PQMF bank with ``attenuation`` dB rejection."""
    wc = fmin(lambda w: _reconstruction_error(float(np.ravel(w)[0]), attenuation, n_band),
              1 / n_band, disp=0)[0]
    return kaiser_filter(wc, attenuation)


def cosine_modulated_bank(h: torch.Tensor, n_band: int) -> torch.Tensor:
    """Modulate prototype ``h`` (taps,) into ``(n_band, taps)`` analysis filters."""
    k = torch.arange(n_band).reshape(-1, 1)
    n = h.shape[-1]
    t = torch.arange(-(n // 2), n // 2 + 1)
    phase = (-1)**k * math.pi / 4
    return 2 * h * torch.cos((2 * k + 1) * math.pi / (2 * n_band) * t + phase)


def _center_pad_to_pow2(x: torch.Tensor) -> torch.Tensor:
    target = 2**math.ceil(math.log2(x.shape[-1]))
    pad = target - x.shape[-1]
    return nn.functional.pad(x, (pad // 2, pad // 2 + pad % 2))


def _pad_to_odd(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.pad(x, (0, 1)) if x.shape[-1] % 2 == 0 else x


def odd_band_signs(n_band: int) -> torch.Tensor:
    """``(n_band, 2)`` signs of RAVE's flip: odd bands negated on even time steps."""
    sign = torch.ones(n_band, 2)
    sign[1::2, 0] = -1
    return sign


def flip_odd_bands(x: torch.Tensor, signs: torch.Tensor, parity: int) -> torch.Tensor:
    """Negate odd bands at time steps whose index has ``parity`` (0: even steps).

    ``x``: ``(batch, bands, time)``; ``signs``: :func:`odd_band_signs` (precomputed, as
    this runs at every streaming call).
    """
    pattern = signs if parity == 0 else signs.flip(1)
    b, m, t = x.shape[0], x.shape[1], x.shape[2]
    if t % 2 == 0:  # every streaming call at host block sizes: no pattern to build
        return (x.reshape(b, m, t // 2, 2) * pattern.unsqueeze(1)).reshape(b, m, t)
    reps = (t + 1) // 2
    return x * pattern.repeat(1, reps)[:, :t]


@gin.configurable(module="rave.pqmf")
class CachedPQMF(nn.Module):
    """PQMF analysis / synthesis with RAVE's layout.

    Args:
        attenuation: rejection of the prototype filter, in dB (40 for BRAVE, 100 for RAVE).
        n_band: number of bands, a power of two.
        polyphase: accepted for acids-rave's configs, unused (analysis and synthesis are
            always the polyphase convolutions).
        n_channels: accepted for acids-rave's configs and stored, otherwise unused: this
            module takes one audio channel; :class:`~rave_core.models.rave.RAVE` folds the
            channels into the batch before calling it.

    Buffers / parameters (acids-rave's keys): ``hk`` (bank, padded to a power of two),
    ``h`` (prototype), ``forward_conv.weight``, ``inverse_conv.weight``.

    Shapes: ``forward``: ``(batch, 1, time) -> (batch, n_band, time / n_band)`` (the input
    must have exactly one channel); ``inverse``: ``(batch, n_band, frames) ->
    (batch, 1, frames * n_band)``.
    """

    def __init__(self, attenuation: float, n_band: int, polyphase: bool = True,
                 n_channels: int = 1) -> None:
        super().__init__()
        if n_band & (n_band - 1):
            raise ValueError(f"PQMF n_band must be a power of two, got {n_band}")
        h = torch.from_numpy(prototype_filter(attenuation, n_band)).float()
        hk = _center_pad_to_pow2(cosine_modulated_bank(h, n_band))
        self.register_buffer("hk", hk)
        self.register_buffer("h", h)
        self.n_band = n_band
        self.n_channels = n_channels
        self.attenuation = attenuation

        analysis = _pad_to_odd(hk).unsqueeze(1)                       # (M, 1, K)
        synthesis = hk.flip(-1).reshape(n_band, -1, n_band).permute(2, 0, 1)
        synthesis = _pad_to_odd(synthesis)                            # (M, M, K / M)
        self.forward_conv = Conv1d(1, n_band, analysis.shape[-1], stride=n_band,
                                   padding=get_padding(analysis.shape[-1]), bias=False)
        self.forward_conv.weight.data.copy_(analysis)
        self.inverse_conv = Conv1d(n_band, n_band, synthesis.shape[-1],
                                   padding=get_padding(synthesis.shape[-1]), bias=False)
        self.inverse_conv.weight.data.copy_(synthesis)
        self.register_buffer("band_signs", odd_band_signs(n_band), persistent=False)
        # Phase of the odd-band flip at the output of analysis / input of synthesis.
        self.analysis_parity = 0
        self.synthesis_parity = 0

    def configure_delay(self, input_delay: int) -> int:
        """Delay bookkeeping of the analysis path (audio samples -> band samples)."""
        d = self.forward_conv.configure_delay(input_delay)
        self.analysis_parity = d % 2
        return d

    def configure_inverse_delay(self, input_delay: int) -> int:
        """Delay bookkeeping of the synthesis path (band samples -> audio samples)."""
        self.synthesis_parity = input_delay % 2
        return self.inverse_conv.configure_delay(input_delay) * self.n_band

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.n_band == 1:
            return x
        # Offline, sample 0 is index 0; in streaming the flip follows the signal's delay.
        parity = self.analysis_parity if self.forward_conv.streaming else 0
        return flip_odd_bands(self.forward_conv(x), self.band_signs, parity)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        if self.n_band == 1:
            return x
        m = self.n_band
        parity = self.synthesis_parity if self.inverse_conv.streaming else 0
        x = self.inverse_conv(flip_odd_bands(x, self.band_signs, parity)) * m
        # (batch, M phases, frames) -> (batch, 1, frames * M), phase M-1 first.
        x = x.flip(1).permute(0, 2, 1)
        return x.reshape(x.shape[0], 1, -1)
