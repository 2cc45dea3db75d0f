"""Discriminators of the RAVE family (training only; never exported).

Two gin modules, as in acids-rave:

* ``rave.discriminator``: :class:`ConvNet` and the multi-scale / multi-period /
  multi-scale-spectral discriminators built from it, combined by
  :class:`CombineDiscriminators` (v1, v2, BRAVE, discrete).
* ``rave.descript_discriminator``: :class:`DescriptDiscriminator` (v3), the DAC
  discriminator made of :class:`MPD`, :class:`MSD` and :class:`MRD`.

Every discriminator maps audio ``(batch, channels, time)`` to a list (one entry per
sub-discriminator) of lists of feature maps; the last map of each is its score.
Parameter names are acids-rave's so that checkpoints load key for key.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import gin
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..losses import Spectrogram
from ..nn.conv import get_padding
from ..nn.weight_norm import apply_weight_norm
from .layers import normalization
from .pqmf import kaiser_filter

FeatureMaps = List[torch.Tensor]
IntOrPair = Union[int, Sequence[int]]


def _stft_discriminator_spectrogram(n_fft: int) -> Spectrogram:
    """The spectrogram of the spectral discriminators: no padding, energy-normalised."""
    return Spectrogram(n_fft, hop_length=n_fft // 4, normalized=True, center=False)


# ============================================================================ rave.discriminator
def _conv2d_block(capacity: int, kernel_size: Tuple[int, int],
                  stride: Optional[Tuple[int, int]] = None,
                  dilation: Optional[Tuple[int, int]] = None,
                  in_size: Optional[int] = None, out_size: Optional[int] = None,
                  activation: bool = True) -> nn.Module:
    """Normalised 2-D convolution with "same" padding, optionally followed by LeakyReLU(0.2)."""
    dil = tuple(dilation) if dilation is not None else (1, 1)
    padding = tuple(((k - 1) * d) // 2 for k, d in zip(kernel_size, dil))
    conv = normalization(nn.Conv2d(in_size or capacity, out_size or capacity,
                                   kernel_size=tuple(kernel_size),
                                   stride=tuple(stride) if stride is not None else (1, 1),
                                   dilation=dil, padding=padding))
    return nn.Sequential(conv, nn.LeakyReLU(.2)) if activation else conv


@gin.configurable(module="rave.discriminator")
class EncodecConvNet(nn.Module):
    """2-D convnet over a real/imag spectrogram ``(batch, 2 * n_channels, bins, frames)``.

    Returns the output of each of its six blocks; the last (one channel) is the score.
    """

    def __init__(self, capacity: int, n_channels: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _conv2d_block(capacity, (9, 3), in_size=2 * n_channels),
            _conv2d_block(capacity, (9, 3), (2, 1), (1, 1)),
            _conv2d_block(capacity, (9, 3), (2, 1), (1, 2)),
            _conv2d_block(capacity, (9, 3), (2, 1), (1, 4)),
            _conv2d_block(capacity, (3, 3)),
            _conv2d_block(capacity, (3, 3), out_size=1, activation=False),
        )

    def forward(self, x: torch.Tensor) -> FeatureMaps:
        maps = []
        for block in self.net:
            x = block(x)
            maps.append(x)
        return maps


@gin.configurable(module="rave.discriminator")
class ConvNet(nn.Module):
    """Strided convolution stack: ``n_layers`` normalised convs (channels ``capacity * 2^i``)
    with LeakyReLU(0.2), then a plain 1x1 conv to ``out_size`` channels.

    ``conv`` is the convolution factory (``torch.nn.Conv1d`` on ``(batch, in_size, time)``
    or ``torch.nn.Conv2d`` on folded ``(batch, in_size, time / period, period)``, in which
    case ``kernel_size`` is a pair and only the first axis is strided). Returns the output
    of every convolution; the last one is the score.
    """

    def __init__(self, in_size: int, out_size: int, capacity: int, n_layers: int,
                 kernel_size: IntOrPair, stride: Union[int, Sequence[int]],
                 conv: Callable[..., nn.Module]) -> None:
        super().__init__()
        widths = [in_size] + [capacity * 2**i for i in range(n_layers)]
        strides = [stride] * n_layers if isinstance(stride, int) else list(stride)
        two_d = not isinstance(kernel_size, int)
        if two_d:
            kernel_size = tuple(kernel_size)

        layers: List[nn.Module] = []
        for i in range(n_layers):
            if two_d:
                padding = (get_padding(kernel_size[0], strides[i], mode="centered")[0], 0)
                step = (strides[i], 1)
            else:
                padding = get_padding(kernel_size, strides[i], mode="centered")[0]
                step = strides[i]
            layers.append(normalization(conv(widths[i], widths[i + 1], kernel_size,
                                             stride=step, padding=padding)))
            layers.append(nn.LeakyReLU(.2))
        layers.append(conv(widths[-1], out_size, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> FeatureMaps:
        maps = []
        for layer in self.net:
            x = layer(x)
            if isinstance(layer, nn.modules.conv._ConvNd):
                maps.append(x)
        return maps


@gin.configurable(module="rave.discriminator")
class MultiScaleDiscriminator(nn.Module):
    """``n_discriminators`` convnets on the signal, halved in rate (average pooling) each time.

    ``(batch, n_channels, time)`` -> one list of feature maps per scale.
    """

    def __init__(self, n_discriminators: int, convnet: Callable[..., nn.Module],
                 n_channels: int = 1) -> None:
        super().__init__()
        self.layers = nn.ModuleList([convnet(in_size=n_channels)
                                     for _ in range(n_discriminators)])

    def forward(self, x: torch.Tensor) -> List[FeatureMaps]:
        out = []
        for net in self.layers:
            out.append(net(x))
            x = F.avg_pool1d(x, 2)
        return out


@gin.configurable(module="rave.discriminator")
class MultiPeriodDiscriminator(nn.Module):
    """One 2-D convnet per period ``p``, on the signal folded to ``(batch, c, time / p, p)``.

    The signal is zero-padded on the right to a multiple of ``p`` first.
    ``(batch, n_channels, time)`` -> one list of feature maps per period.
    """

    def __init__(self, periods: Sequence[int], convnet: Callable[..., nn.Module],
                 n_channels: int = 1) -> None:
        super().__init__()
        self.periods = list(periods)
        self.layers = nn.ModuleList([convnet(in_size=n_channels) for _ in self.periods])

    @staticmethod
    def fold(x: torch.Tensor, period: int) -> torch.Tensor:
        """``(batch, channels, time)`` -> ``(batch, channels, ceil(time / period), period)``."""
        x = F.pad(x, (0, (-x.shape[-1]) % period))
        return x.reshape(x.shape[0], x.shape[1], -1, period)

    def forward(self, x: torch.Tensor) -> List[FeatureMaps]:
        return [net(self.fold(x, p)) for net, p in zip(self.layers, self.periods)]


@gin.configurable(module="rave.discriminator")
class MultiScaleSpectralDiscriminator(nn.Module):
    """2-D convnets (``convnet(n_channels=...)``) on real/imag STFTs at several ``scales``.

    Each sees ``(batch, 2 * n_channels, n_fft // 2 + 1, frames)``.
    """

    def __init__(self, scales: Sequence[int], convnet: Callable[..., nn.Module],
                 n_channels: int = 1) -> None:
        super().__init__()
        self.specs = nn.ModuleList([_stft_discriminator_spectrogram(n) for n in scales])
        self.nets = nn.ModuleList([convnet(n_channels=n_channels) for _ in scales])

    def forward(self, x: torch.Tensor) -> List[FeatureMaps]:
        out = []
        for spec, net in zip(self.specs, self.nets):
            s = spec(x)  # (batch, channels, bins, frames)
            out.append(net(torch.cat([s.real, s.imag], 1)))
        return out


@gin.configurable(module="rave.discriminator")
class MultiScaleSpectralDiscriminator1d(nn.Module):
    """1-D convnets (``convnet(n_fft + 2, n_channels)``) on mono real/imag STFTs.

    The bins are channels: each net sees ``(batch, n_fft + 2, frames)``.
    """

    def __init__(self, scales: Sequence[int], convnet: Callable[..., nn.Module],
                 n_channels: int = 1) -> None:
        super().__init__()
        self.specs = nn.ModuleList([_stft_discriminator_spectrogram(n) for n in scales])
        self.nets = nn.ModuleList([convnet(n + 2, n_channels) for n in scales])

    def forward(self, x: torch.Tensor) -> List[FeatureMaps]:
        out = []
        for spec, net in zip(self.specs, self.nets):
            s = spec(x).squeeze(1)  # (batch, bins, frames)
            out.append(net(torch.cat([s.real, s.imag], 1)))
        return out


@gin.configurable(module="rave.discriminator")
class CombineDiscriminators(nn.Module):
    """Run several discriminators (factories taking ``n_channels``) and concatenate their
    lists of sub-discriminator feature maps."""

    def __init__(self, discriminators: Sequence[Callable[..., nn.Module]],
                 n_channels: int = 1) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList([make(n_channels=n_channels)
                                             for make in discriminators])

    def forward(self, x: torch.Tensor) -> List[FeatureMaps]:
        out: List[FeatureMaps] = []
        for disc in self.discriminators:
            out.extend(disc(x))
        return out


# ============================================================================ rave.descript_discriminator
def _wn_conv(conv_cls: type, *args, act: bool = True, **kwargs) -> nn.Module:
    """Weight-normalised convolution, followed by LeakyReLU(0.1) when ``act``."""
    conv = apply_weight_norm(conv_cls(*args, **kwargs))
    return nn.Sequential(conv, nn.LeakyReLU(0.1)) if act else conv


@gin.configurable(module="rave.descript_discriminator")
class MPD(nn.Module):
    """Period discriminator: signal folded to ``(batch, c, time / period, period)``, then
    2-D convs strided along time. Returns six maps (the last is the score)."""

    def __init__(self, period: int, n_channels: int = 1) -> None:
        super().__init__()
        self.period = period
        widths = [n_channels, 32, 128, 512, 1024]
        convs = [_wn_conv(nn.Conv2d, cin, cout, (5, 1), (3, 1), padding=(2, 0))
                 for cin, cout in zip(widths[:-1], widths[1:])]
        convs.append(_wn_conv(nn.Conv2d, 1024, 1024, (5, 1), 1, padding=(2, 0)))
        self.convs = nn.ModuleList(convs)
        self.conv_post = _wn_conv(nn.Conv2d, 1024, 1, kernel_size=(3, 1), padding=(1, 0),
                                  act=False)

    def pad_to_period(self, x: torch.Tensor) -> torch.Tensor:
        # As DAC: reflect-pads by `period - time % period` (a whole period if it divides).
        return F.pad(x, (0, self.period - x.shape[-1] % self.period), mode="reflect")

    def forward(self, x: torch.Tensor) -> FeatureMaps:
        x = self.pad_to_period(x)
        x = x.reshape(x.shape[0], x.shape[1], -1, self.period)
        maps = []
        for layer in self.convs:
            x = layer(x)
            maps.append(x)
        maps.append(self.conv_post(x))
        return maps


@gin.configurable(module="rave.descript_discriminator")
class MSD(nn.Module):
    """Waveform discriminator on the signal low-passed and decimated by ``scale``
    (grouped strided 1-D convs, as MelGAN). Returns seven maps (the last is the score).

    ``sample_rate`` is accepted for acids-rave's configs, unused."""

    def __init__(self, scale: int, n_channels: int = 1, sample_rate: int = 44100) -> None:
        super().__init__()
        self.scale = scale
        self.convs = nn.ModuleList([
            _wn_conv(nn.Conv1d, n_channels, 16, 15, 1, padding=7),
            _wn_conv(nn.Conv1d, 16, 64, 41, 4, groups=4, padding=20),
            _wn_conv(nn.Conv1d, 64, 256, 41, 4, groups=16, padding=20),
            _wn_conv(nn.Conv1d, 256, 1024, 41, 4, groups=64, padding=20),
            _wn_conv(nn.Conv1d, 1024, 1024, 41, 4, groups=256, padding=20),
            _wn_conv(nn.Conv1d, 1024, 1024, 5, 1, padding=2),
        ])
        self.conv_post = _wn_conv(nn.Conv1d, 1024, 1, 3, 1, padding=1, act=False)
        if scale != 1:
            taps = kaiser_filter(np.pi / scale, 140)
            if taps.shape[-1] % 2 == 0:
                taps = np.pad(taps, (1, 0))
            self.register_buffer("downsampler",
                                 torch.from_numpy(np.asarray(taps)).float().reshape(1, 1, -1))

    def forward(self, x: torch.Tensor) -> FeatureMaps:
        if self.scale != 1:
            x = F.conv1d(x, self.downsampler, stride=self.scale,
                         padding=self.downsampler.shape[-1] // 2)
        maps = []
        for layer in self.convs:
            x = layer(x)
            maps.append(x)
        maps.append(self.conv_post(x))
        return maps


BANDS = [(0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0)]


@gin.configurable(module="rave.descript_discriminator")
class MRD(nn.Module):
    """Multi-band STFT discriminator: the complex STFT (window ``window_length``) as
    ``(batch, 2 * channels, frames, bins)`` is cut into frequency ``bands`` (fractions of
    the bins), each through its own 2-D conv stack; the stacks' outputs are concatenated
    along frequency into one score conv. Returns ``5 * len(bands) + 1`` maps.

    The STFT hop is ``int(hop_factor * window_length)``. ``sample_rate`` is accepted for
    acids-rave's configs, unused."""

    def __init__(self, window_length: int, hop_factor: float = 0.25,
                 sample_rate: int = 44100, bands: Sequence[Tuple[float, float]] = BANDS,
                 n_channels: int = 1) -> None:
        super().__init__()
        n_bins = window_length // 2 + 1
        self.bands = [(int(lo * n_bins), int(hi * n_bins)) for lo, hi in bands]

        ch = 32

        def band_stack() -> nn.ModuleList:
            return nn.ModuleList([
                _wn_conv(nn.Conv2d, 2 * n_channels, ch, (3, 9), (1, 1), padding=(1, 4)),
                _wn_conv(nn.Conv2d, ch, ch, (3, 9), (1, 2), padding=(1, 4)),
                _wn_conv(nn.Conv2d, ch, ch, (3, 9), (1, 2), padding=(1, 4)),
                _wn_conv(nn.Conv2d, ch, ch, (3, 9), (1, 2), padding=(1, 4)),
                _wn_conv(nn.Conv2d, ch, ch, (3, 3), (1, 1), padding=(1, 1)),
            ])

        self.band_convs = nn.ModuleList([band_stack() for _ in self.bands])
        self.conv_post = _wn_conv(nn.Conv2d, ch, 1, (3, 3), (1, 1), padding=(1, 1), act=False)
        self.stft = Spectrogram(window_length, win_length=window_length,
                                hop_length=int(hop_factor * window_length), center=True)

    def spectrogram(self, x: torch.Tensor) -> List[torch.Tensor]:
        """``(batch, c, time)`` -> per band ``(batch, 2c, frames, band bins)``, channels
        interleaved as (c0 real, c0 imag, c1 real, ...)."""
        spec = torch.view_as_real(self.stft(x))  # (batch, c, bins, frames, 2)
        b, c, f, t, _ = spec.shape
        spec = spec.permute(0, 1, 4, 3, 2).reshape(b, c * 2, t, f)
        return [spec[..., lo:hi] for lo, hi in self.bands]

    def forward(self, x: torch.Tensor) -> FeatureMaps:
        maps = []
        outputs = []
        for band, stack in zip(self.spectrogram(x), self.band_convs):
            for layer in stack:
                band = layer(band)
                maps.append(band)
            outputs.append(band)
        maps.append(self.conv_post(torch.cat(outputs, dim=-1)))
        return maps


@gin.configurable(module="rave.descript_discriminator")
class DescriptDiscriminator(nn.Module):
    """DAC's discriminator (RAVE v3): one :class:`MPD` per period, one :class:`MSD` per
    rate and one :class:`MRD` per FFT size, on DC-removed, peak-normalised (0.8) audio.

    ``(batch, n_channels, time)`` -> one list of feature maps per sub-discriminator.
    """

    def __init__(self, rates: Sequence[int] = (), periods: Sequence[int] = (2, 3, 5, 7, 11),
                 fft_sizes: Sequence[int] = (2048, 1024, 512), sample_rate: int = 44100,
                 bands: Sequence[Tuple[float, float]] = BANDS, n_channels: int = 1) -> None:
        super().__init__()
        discs: List[nn.Module] = [MPD(p, n_channels=n_channels) for p in periods]
        discs += [MSD(r, n_channels=n_channels, sample_rate=sample_rate) for r in rates]
        discs += [MRD(n, sample_rate=sample_rate, bands=bands, n_channels=n_channels)
                  for n in fft_sizes]
        self.discriminators = nn.ModuleList(discs)

    @staticmethod
    def preprocess(y: torch.Tensor) -> torch.Tensor:
        y = y - y.mean(dim=-1, keepdim=True)
        return 0.8 * y / (y.abs().amax(dim=-1, keepdim=True) + 1e-9)

    def forward(self, x: torch.Tensor) -> List[FeatureMaps]:
        x = self.preprocess(x)
        return [d(x) for d in self.discriminators]
