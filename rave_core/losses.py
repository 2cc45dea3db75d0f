"""Training losses: multi-scale spectral distances, GAN objectives, feature matching.

Gin names are acids-rave's (``rave.core.*``) so that its configs bind to these objects:
``core.MultiScaleSTFT``, ``core.AudioDistanceV1``, ``core.mean_difference``,
``core.hinge_gan`` / ``core.ls_gan`` / ``core.nonsaturating_gan`` and
``core.get_augmented_latent_size``. State-dict keys are acids-rave's too: a
:class:`MultiScaleSTFT` holds one Hann window per scale (``stfts.<i>.window``).

The STFT is ``torch.stft`` with the semantics of ``torchaudio.transforms.Spectrogram``
(``power=None``: complex output), so torchaudio is not needed.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import gin
import numpy as np
import torch
import torch.nn as nn

Features = List[List[torch.Tensor]]


# ---------------------------------------------------------------------------- spectra
class Spectrogram(nn.Module):
    """Complex short-time Fourier transform with a periodic Hann window (buffer ``window``).

    ``(..., time) -> (..., n_fft // 2 + 1, frames)`` (complex). Matches
    ``torchaudio.transforms.Spectrogram(n_fft, win_length, hop_length, power=None, ...)``:
    with ``center`` the signal is padded by ``n_fft // 2`` on both sides (``pad_mode``);
    ``normalized=True`` divides by the window's L2 norm, ``sqrt(sum(window ** 2))``.
    """

    def __init__(self, n_fft: int, win_length: Optional[int] = None,
                 hop_length: Optional[int] = None, normalized: bool = False,
                 center: bool = True, pad_mode: Optional[str] = "reflect") -> None:
        super().__init__()
        self.n_fft = int(n_fft)
        self.win_length = int(win_length) if win_length is not None else self.n_fft
        self.hop_length = int(hop_length) if hop_length is not None else self.win_length // 2
        self.normalized = bool(normalized)
        self.center = bool(center)
        self.pad_mode = pad_mode or "reflect"
        self.register_buffer("window", torch.hann_window(self.win_length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leading = x.shape[:-1]
        flat = x.reshape(-1, x.shape[-1])
        spec = torch.stft(flat, n_fft=self.n_fft, hop_length=self.hop_length,
                          win_length=self.win_length, window=self.window.to(flat.dtype),
                          center=self.center, pad_mode=self.pad_mode, normalized=False,
                          onesided=True, return_complex=True)
        if self.normalized:
            spec = spec / self.window.pow(2).sum().sqrt()
        return spec.reshape(leading + spec.shape[-2:])


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (librosa's default)."""
    freq = np.asarray(freq, dtype=np.float64)
    linear = freq * 3.0 / 200.0
    log_step = math.log(6.4) / 27.0
    above = 15.0 + np.log(np.maximum(freq, 1e-10) / 1000.0) / log_step
    return np.where(freq >= 1000.0, above, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * 200.0 / 3.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Slaney-normalised triangular mel filters ``(n_mels, n_fft // 2 + 1)``, 0 Hz to Nyquist."""
    bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2.0), n_mels + 2))
    widths = np.diff(edges)
    rising = (bins[None, :] - edges[:-2, None]) / widths[:-1, None]
    falling = (edges[2:, None] - bins[None, :]) / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return filters.astype(np.float32)


class MelScale(nn.Module):
    """Project ``(batch, n_fft // 2 + 1, frames)`` spectra onto ``(batch, n_mels, frames)``."""

    def __init__(self, sample_rate: int, n_fft: int, n_mels: int) -> None:
        super().__init__()
        self.register_buffer("mel", torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bft,mf->bmt", x, self.mel.to(x.dtype))


@gin.configurable(module="rave.core")
class MultiScaleSTFT(nn.Module):
    """STFTs of a signal at several window sizes (hop = window / 4).

    ``(batch, channels, time)`` -> list with one ``(batch * channels, bins, frames)`` tensor
    per scale: magnitudes if ``magnitude``, else real/imag stacked on a last axis of 2.
    ``num_mels`` projects each spectrum onto that many mel bands (before the magnitude).
    """

    def __init__(self, scales: Sequence[int], sample_rate: int, magnitude: bool = True,
                 normalized: bool = False, num_mels: Optional[int] = None) -> None:
        super().__init__()
        self.scales = list(scales)
        self.magnitude = magnitude
        self.num_mels = num_mels
        self.stfts = nn.ModuleList([
            Spectrogram(n, win_length=n, hop_length=n // 4, normalized=normalized)
            for n in self.scales
        ])
        self.mel_scales = nn.ModuleList([
            MelScale(sample_rate, n, num_mels) if num_mels is not None else None
            for n in self.scales
        ])

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        flat = x.reshape(-1, x.shape[-1])
        out = []
        for stft, mel in zip(self.stfts, self.mel_scales):
            spec = stft(flat)
            if mel is not None:
                spec = mel(spec)
            out.append(spec.abs() if self.magnitude else torch.view_as_real(spec))
        return out


# ---------------------------------------------------------------------------- distances
def _mean_difference(target: torch.Tensor, value: torch.Tensor, norm: str = "L1",
                     relative: bool = False) -> torch.Tensor:
    error = target - value
    if norm == "L1":
        out = error.abs().mean()
        return out / target.abs().mean() if relative else out
    if norm == "L2":
        out = error.pow(2).mean()
        return out / target.pow(2).mean() if relative else out
    raise ValueError(f"norm must be 'L1' or 'L2', got {norm!r}")


@gin.configurable(module="rave.core")
def mean_difference(target: torch.Tensor, value: torch.Tensor, norm: str = "L1",
                    relative: bool = False) -> torch.Tensor:
    """Mean absolute (``'L1'``) or squared (``'L2'``) error of ``value`` against ``target``.

    ``relative`` divides by the same mean of ``target`` alone. Any matching shapes.
    """
    return _mean_difference(target, value, norm, relative)


@gin.configurable(module="rave.core")
class AudioDistanceV1(nn.Module):
    """RAVE's spectral distance between ``(batch, channels, time)`` signals.

    Per scale of ``multiscale_stft()``: relative L2 of the magnitudes plus L1 of their logs
    (``log(|X| + log_epsilon)``), summed over scales. Returns ``{'spectral_distance': d}``.
    """

    def __init__(self, multiscale_stft: Callable[[], nn.Module], log_epsilon: float) -> None:
        super().__init__()
        self.multiscale_stft = multiscale_stft()
        self.log_epsilon = log_epsilon

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
        distance = x.new_zeros(())
        for sx, sy in zip(self.multiscale_stft(x), self.multiscale_stft(y)):
            linear = _mean_difference(sx, sy, norm="L2", relative=True)
            logarithmic = _mean_difference(torch.log(sx + self.log_epsilon),
                                           torch.log(sy + self.log_epsilon), norm="L1")
            distance = distance + linear + logarithmic
        return {"spectral_distance": distance}


# ---------------------------------------------------------------------------- GAN losses
@gin.configurable(module="rave.core")
def hinge_gan(score_real: torch.Tensor, score_fake: torch.Tensor
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hinge loss: ``(mean(relu(1 - real) + relu(1 + fake)), -mean(fake))`` = (dis, gen)."""
    loss_dis = (torch.relu(1 - score_real) + torch.relu(1 + score_fake)).mean()
    return loss_dis, -score_fake.mean()


@gin.configurable(module="rave.core")
def ls_gan(score_real: torch.Tensor, score_fake: torch.Tensor
           ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Least-squares GAN: ``(mean((real - 1)^2 + fake^2), mean((fake - 1)^2))`` = (dis, gen)."""
    loss_dis = ((score_real - 1).pow(2) + score_fake.pow(2)).mean()
    return loss_dis, (score_fake - 1).pow(2).mean()


@gin.configurable(module="rave.core")
def nonsaturating_gan(score_real: torch.Tensor, score_fake: torch.Tensor
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Non-saturating GAN on sigmoid probabilities (clamped to ``[1e-7, 1 - 1e-7]``)."""
    p_real = torch.sigmoid(score_real).clamp(1e-7, 1 - 1e-7)
    p_fake = torch.sigmoid(score_fake).clamp(1e-7, 1 - 1e-7)
    loss_dis = -(torch.log(p_real) + torch.log(1 - p_fake)).mean()
    return loss_dis, -torch.log(p_fake).mean()


@gin.configurable(module="rave.core")
def get_augmented_latent_size(latent_size: int, noise_augmentation: int) -> int:
    """Decoder input size: the latent plus ``noise_augmentation`` noise channels."""
    return latent_size + noise_augmentation


# ---------------------------------------------------------------------------- discriminator features
def split_features(features: Features) -> Tuple[Features, Features]:
    """Split the feature maps of a ``cat([real, fake], 0)`` batch into (real, fake) halves."""
    real, fake = [], []
    for maps in features:
        halves = [m.split(m.shape[0] // 2, 0) for m in maps]
        real.append([h[0] for h in halves])
        fake.append([h[1] for h in halves])
    return real, fake


def feature_matching_loss(features_real: Features, features_fake: Features,
                          fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                          num_skipped: int = 0) -> torch.Tensor:
    """Feature-matching distance as RAVE's training step computes it.

    For each sub-discriminator, the mean of ``fn(real_map, fake_map)`` over its feature
    maps after the first ``num_skipped`` (the score map included); then the mean over
    sub-discriminators. ``features_*`` are lists (sub-discriminators) of lists of maps.
    """
    total = 0.
    for real, fake in zip(features_real, features_fake):
        pairs = list(zip(real[num_skipped:], fake[num_skipped:]))
        total = total + sum(fn(r, f) for r, f in pairs) / len(pairs)
    return total / len(features_real)


def adversarial_losses(features_real: Features, features_fake: Features,
                       gan_loss: Callable[[torch.Tensor, torch.Tensor],
                                          Tuple[torch.Tensor, torch.Tensor]]
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum over sub-discriminators of ``gan_loss`` on their last map (the score).

    Returns ``(loss_dis, loss_gen, pred_real, pred_fake)``, the last two being the summed
    mean scores (what RAVE logs).
    """
    loss_dis = loss_gen = pred_real = pred_fake = 0.
    for real, fake in zip(features_real, features_fake):
        d, g = gan_loss(real[-1], fake[-1])
        loss_dis = loss_dis + d
        loss_gen = loss_gen + g
        pred_real = pred_real + real[-1].mean()
        pred_fake = pred_fake + fake[-1].mean()
    return loss_dis, loss_gen, pred_real, pred_fake
