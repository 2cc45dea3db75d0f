"""Decoders: latent ``(batch, latent, frames)`` -> bands ``(batch, n_band * channels, frames * ratio / n_band)``.

* :class:`Generator`: RAVE v1 and BRAVE (upsampling, residual stacks, a waveform and a
  loudness branch, an optional filtered-noise branch).
* :class:`GeneratorV2`: RAVE v2 / v3 (upsampling, residual dilated units, amplitude
  modulation, optional :class:`NoiseGeneratorV2`).

The output is still split into PQMF bands. :class:`GeneratorV2` ends in a tanh, so its output
is in ``[-1, 1]``; :class:`Generator` returns ``tanh(waveform) * mod_sigmoid(loudness)``, which
is in ``(-2, 2)`` (``mod_sigmoid`` goes up to 2), plus the filtered noise when that branch is on.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import gin
import torch
import torch.nn as nn

from ..nn.conv import cached_conv1d as Conv1d
from ..nn.conv import cached_conv_transpose1d as ConvTranspose1d
from ..nn.conv import Delay, get_padding
from ..nn.streaming import configure_delay
from .encoders import DilatedUnit
from .layers import (ActivationFactory, Branches, Residual, align_branches, amp_to_impulse_response,
                     fft_convolve, leaky_relu, mod_sigmoid, normalization,
                     normalize_dilations, prod)


@gin.configurable(module="rave.blocks")
class ResidualLayer(nn.Module):
    """Residual around a chain of (activation, dilated conv) pairs (v1 / BRAVE).

    ``cumulative_delay`` is accepted for acids-rave's configs, unused.
    """

    def __init__(self, dim: int, kernel_size: int, dilations: Sequence[int],
                 cumulative_delay: int = 0,
                 activation: ActivationFactory = leaky_relu) -> None:
        super().__init__()
        net: List[nn.Module] = []
        for d in dilations:
            net.append(activation(dim))
            net.append(normalization(Conv1d(dim, dim, kernel_size, dilation=d,
                                            padding=get_padding(kernel_size, dilation=d))))
        self.net = Residual(nn.Sequential(*net))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualBlock(nn.Module):
    """A chain of :class:`ResidualLayer` (one per entry of ``dilations_list``).

    ``cumulative_delay`` is accepted for acids-rave's signature, unused.
    """

    def __init__(self, dim: int, kernel_size: int, dilations_list: Sequence[Sequence[int]],
                 cumulative_delay: int = 0) -> None:
        super().__init__()
        self.net = nn.Sequential(*[ResidualLayer(dim, kernel_size, d) for d in dilations_list])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@gin.configurable(module="rave.blocks")
class ResidualStack(nn.Module):
    """Sum of one :class:`ResidualBlock` per kernel size.

    ``cumulative_delay`` is accepted for acids-rave's configs, unused.
    """

    def __init__(self, dim: int, kernel_sizes: Sequence[int],
                 dilations_list: Sequence[Sequence[int]], cumulative_delay: int = 0) -> None:
        super().__init__()
        self.net = Branches(*[ResidualBlock(dim, k, dilations_list) for k in kernel_sizes],
                            channels=dim)

    def configure_delay(self, input_delay: int) -> int:
        return self.net.configure_delay(input_delay)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.net(x)
        if len(outs) == 1:  # one kernel size (v1, BRAVE): no sum to take
            return outs[0]
        return torch.stack(outs, 0).sum(0)


@gin.configurable(module="rave.blocks")
class UpsampleLayer(nn.Module):
    """activation -> transposed conv by ``ratio`` (or a 3-tap conv when ``ratio`` is 1).

    ``cumulative_delay`` is accepted for acids-rave's configs, unused.
    """

    def __init__(self, in_dim: int, out_dim: int, ratio: int, cumulative_delay: int = 0,
                 activation: ActivationFactory = leaky_relu) -> None:
        super().__init__()
        net = [activation(in_dim)]
        if ratio > 1:
            net.append(normalization(ConvTranspose1d(in_dim, out_dim, 2 * ratio, stride=ratio,
                                                     padding=ratio // 2)))
        else:
            net.append(normalization(Conv1d(in_dim, out_dim, 3, padding=get_padding(3))))
        self.net = nn.Sequential(*net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _FilteredNoise(nn.Module):
    """Shared synthesis of noise filtered by per-frame magnitude responses."""

    def _synthesize(self, amp: torch.Tensor, bands: int) -> torch.Tensor:
        # amp: (batch, bands * noise_bands, frames) -> noise (batch, bands, frames * target)
        amp = mod_sigmoid(amp - 5).permute(0, 2, 1)
        amp = amp.reshape(amp.shape[0], amp.shape[1], bands, -1)
        ir = amp_to_impulse_response(amp, self.target_size)
        noise = torch.rand_like(ir) * 2 - 1
        noise = fft_convolve(noise, ir).permute(0, 2, 1, 3)
        return noise.reshape(noise.shape[0], noise.shape[1], -1)


@gin.configurable(module="rave.blocks")
class NoiseGenerator(_FilteredNoise):
    """v1 noise branch: strided convs to one magnitude response per ``prod(ratios)`` samples."""

    def __init__(self, in_size: int, data_size: int, ratios: Sequence[int],
                 noise_bands: int) -> None:
        super().__init__()
        channels = [in_size] * len(ratios) + [data_size * noise_bands]
        net: List[nn.Module] = []
        for i, r in enumerate(ratios):
            net.append(Conv1d(channels[i], channels[i + 1], 3, padding=get_padding(3, r),
                              stride=r))
            if i != len(ratios) - 1:
                net.append(nn.LeakyReLU(.2))
        self.net = nn.Sequential(*net)
        self.data_size = data_size
        self.out_channels = data_size
        self.hop = prod(ratios)
        self.register_buffer("target_size", torch.tensor(prod(ratios)).long())

    def configure_delay(self, input_delay: int) -> int:
        # One magnitude response per hop: the output is late by whole hops.
        return configure_delay(self.net, input_delay) * self.hop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._synthesize(self.net(x), self.data_size)


@gin.configurable(module="rave.blocks")
class NoiseGeneratorV2(_FilteredNoise):
    """v2 noise branch (v2_small): causal strided convs, filtered noise per hop."""

    def __init__(self, in_size: int, hidden_size: int, data_size: int, ratios: Sequence[int],
                 noise_bands: int, n_channels: int = 1,
                 activation: ActivationFactory = leaky_relu) -> None:
        super().__init__()
        channels = [in_size] + (len(ratios) - 1) * [hidden_size]
        channels.append(data_size * noise_bands * n_channels)
        net: List[nn.Module] = []
        for i, r in enumerate(ratios):
            net.append(Conv1d(channels[i], channels[i + 1], 2 * r, padding=(r, 0), stride=r))
            if i != len(ratios) - 1:
                net.append(activation(channels[i + 1]))
        self.net = nn.Sequential(*net)
        self.data_size = data_size
        self.n_channels = n_channels
        self.out_channels = data_size * n_channels
        self.hop = prod(ratios)
        self.register_buffer("target_size", torch.tensor(prod(ratios)).long())

    def configure_delay(self, input_delay: int) -> int:
        return configure_delay(self.net, input_delay) * self.hop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._synthesize(self.net(x), self.n_channels * self.data_size)


@gin.configurable(module="rave.blocks")
class Generator(nn.Module):
    """RAVE v1 / BRAVE generator.

    ``tanh(waveform) * mod_sigmoid(loudness)`` (+ filtered noise once warmed up).
    """

    def __init__(self, latent_size: int, capacity: int, data_size: int,
                 ratios: Sequence[int], loud_stride: int, use_noise: bool,
                 n_channels: int = 1,
                 recurrent_layer: Optional[Callable[..., nn.Module]] = None) -> None:
        super().__init__()
        if recurrent_layer is not None:
            raise NotImplementedError("recurrent generators are not supported")
        if loud_stride != 1:
            raise NotImplementedError("loud_stride other than 1 is not supported")
        self.latent_size = latent_size
        n = len(ratios)
        net: List[nn.Module] = [normalization(Conv1d(latent_size, 2**n * capacity, 7,
                                                     padding=get_padding(7)))]
        out_dim = 2**n * capacity
        for i, r in enumerate(ratios):
            in_dim, out_dim = 2**(n - i) * capacity, 2**(n - i - 1) * capacity
            net.append(UpsampleLayer(in_dim, out_dim, r))
            net.append(ResidualStack(out_dim))
        self.net = nn.Sequential(*net)

        wave_gen = normalization(Conv1d(out_dim, data_size * n_channels, 7,
                                        padding=get_padding(7)))
        loud_gen = normalization(Conv1d(out_dim, 1, 2 * loud_stride + 1, stride=loud_stride,
                                        padding=get_padding(2 * loud_stride + 1, loud_stride)))
        branches = [wave_gen, loud_gen]
        if use_noise:
            branches.append(NoiseGenerator(out_dim, data_size * n_channels))
        self.synth = Branches(*branches, channels=out_dim)
        self.use_noise = use_noise
        self.noise_enabled = True  # False: deterministic output (export --deterministic)
        self.loud_stride = loud_stride
        self.register_buffer("warmed_up", torch.tensor(0))

    def configure_delay(self, input_delay: int) -> int:
        return self.synth.configure_delay(configure_delay(self.net, input_delay))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.net(x)
        outs = self.synth(x)
        waveform = torch.tanh(outs[0]) * mod_sigmoid(outs[1])
        if self.use_noise and self.noise_enabled and bool(self.warmed_up):
            waveform = waveform + outs[2]
        return waveform

    def set_warmed_up(self, state: bool) -> None:
        self.warmed_up = torch.tensor(int(state), device=self.warmed_up.device)


@gin.configurable(module="rave.blocks")
class GeneratorV2(nn.Module):
    """RAVE v2 / v3 generator: conv, then per ratio (reversed) upsampling and residual units."""

    def __init__(self, capacity: int, ratios: Sequence[int], latent_size: int,
                 kernel_size: int, dilations: Sequence, keep_dim: bool = False,
                 data_size: Optional[int] = None,
                 recurrent_layer: Optional[Callable[..., nn.Module]] = None,
                 n_channels: int = 1, amplitude_modulation: bool = False,
                 noise_module: Optional[Callable[..., nn.Module]] = None,
                 activation: ActivationFactory = leaky_relu,
                 adain: Optional[Callable[..., nn.Module]] = None) -> None:
        super().__init__()
        if recurrent_layer is not None:
            raise NotImplementedError("recurrent generators are not supported")
        self.latent_size = latent_size
        data_size = n_channels if data_size is None else data_size * n_channels
        dilations_list = normalize_dilations(dilations, ratios)[::-1]
        ratios = list(ratios)[::-1]
        channels = prod(ratios) * capacity if keep_dim else 2**len(ratios) * capacity

        net: List[nn.Module] = [normalization(Conv1d(latent_size, channels,
                                                     kernel_size=kernel_size,
                                                     padding=get_padding(kernel_size)))]
        for r, dilations_r in zip(ratios, dilations_list):
            out_channels = channels // r if keep_dim else channels // 2
            net.append(activation(channels))
            net.append(normalization(ConvTranspose1d(channels, out_channels, 2 * r,
                                                     stride=r, padding=r // 2)))
            channels = out_channels
            for d in dilations_r:
                if adain is not None:
                    net.append(adain(channels))
                net.append(Residual(DilatedUnit(dim=channels, kernel_size=kernel_size,
                                                dilation=d)))
        net.append(activation(channels))
        waveform_module = normalization(Conv1d(
            channels, data_size * 2 if amplitude_modulation else data_size,
            kernel_size=kernel_size * 2 + 1, padding=get_padding(kernel_size * 2 + 1)))

        self.noise_module: Optional[nn.Module] = None
        self.waveform_module: Optional[nn.Module] = None
        if noise_module is not None:
            self.waveform_module = waveform_module
            self.noise_module = noise_module(channels, n_channels=n_channels)
        else:
            net.append(waveform_module)
        self.net = nn.Sequential(*net)
        self.amplitude_modulation = amplitude_modulation
        self.noise_enabled = True  # False: deterministic output (export --deterministic)
        # Streaming delay lines behind the waveform and noise heads, so that both
        # reach the output with the same delay (no parameters: keys are unchanged).
        out = data_size * 2 if amplitude_modulation else data_size
        self.head_delays = nn.ModuleList([Delay(out), Delay(data_size)])  # data_size: all channels

    def configure_delay(self, input_delay: int) -> int:
        d = configure_delay(self.net, input_delay)
        if self.noise_module is None or self.waveform_module is None:
            return d
        return align_branches([self.waveform_module, self.noise_module],
                              list(self.head_delays), d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.net(x)
        noise = torch.zeros(1, dtype=x.dtype, device=x.device)
        if self.noise_module is not None and self.waveform_module is not None:
            noise = self.head_delays[1](self.noise_module(x))
            if not self.noise_enabled:
                noise = torch.zeros_like(noise)
            x = self.head_delays[0](self.waveform_module(x))
        if self.amplitude_modulation:
            x, amplitude = x.split(x.shape[1] // 2, 1)
            x = x * torch.sigmoid(amplitude)
        return torch.tanh(x + noise)

    def set_warmed_up(self, state: bool) -> None:
        pass
