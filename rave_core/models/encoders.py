"""Encoders: band signal ``(batch, n_band * channels, time)`` -> latent ``(batch, n_out * latent, frames)``.

* :class:`Encoder`: RAVE v1 / BRAVE (strided convolutions with BatchNorm).
* :class:`EncoderV2`: RAVE v2 / v3 (residual dilated units, strided downsampling).
* :class:`VariationalEncoder`, :class:`DiscreteEncoder`, :class:`WasserteinEncoder`,
  :class:`SphericalEncoder`: the latent regularisation around them (Gaussian posterior
  with KL; residual vector quantisation; MMD to a standard normal; the unit sphere).
  ``WasserteinEncoder`` keeps acids-rave's spelling: it is the gin name run configs use.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import gin
import torch
import torch.nn as nn

from ..nn.conv import cached_conv1d as Conv1d
from ..nn.conv import get_padding
from .layers import (ActivationFactory, Residual, SampleNorm, leaky_relu, normalization,
                     normalize_dilations)


@gin.configurable(module="rave.blocks")
class DilatedUnit(nn.Module):
    """activation -> dilated conv -> activation -> 1x1 conv (the v2 residual unit)."""

    def __init__(self, dim: int, kernel_size: int, dilation: int,
                 activation: ActivationFactory = leaky_relu) -> None:
        super().__init__()
        self.net = nn.Sequential(
            activation(dim),
            normalization(Conv1d(dim, dim, kernel_size=kernel_size, dilation=dilation,
                                 padding=get_padding(kernel_size, dilation=dilation))),
            activation(dim),
            normalization(Conv1d(dim, dim, kernel_size=1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@gin.configurable(module="rave.blocks")
class Encoder(nn.Module):
    """RAVE v1 / BRAVE encoder: conv, then per ratio BatchNorm, LeakyReLU, strided conv."""

    def __init__(self, data_size: int, capacity: int, latent_size: int,
                 ratios: Sequence[int], n_out: int, sample_norm: bool,
                 repeat_layers: int, n_channels: int = 1,
                 recurrent_layer: Optional[Callable[..., nn.Module]] = None,
                 spectrogram=None) -> None:
        super().__init__()
        if recurrent_layer is not None:
            raise NotImplementedError("recurrent encoders are not supported")
        data_size = data_size or n_channels
        net = [Conv1d(data_size * n_channels, capacity, 7, padding=get_padding(7))]
        out_dim = capacity
        for i, r in enumerate(ratios):
            in_dim, out_dim = 2**i * capacity, 2**(i + 1) * capacity
            net.append(SampleNorm() if sample_norm else nn.BatchNorm1d(in_dim))
            net.append(nn.LeakyReLU(.2))
            net.append(Conv1d(in_dim, out_dim, 2 * r + 1, stride=r,
                              padding=get_padding(2 * r + 1, r)))
            for _ in range(repeat_layers - 1):
                net.append(SampleNorm() if sample_norm else nn.BatchNorm1d(out_dim))
                net.append(nn.LeakyReLU(.2))
                net.append(Conv1d(out_dim, out_dim, 3, padding=get_padding(3)))
        net.append(nn.LeakyReLU(.2))
        net.append(Conv1d(out_dim, latent_size * n_out, 5, padding=get_padding(5),
                          groups=n_out))
        self.net = nn.Sequential(*net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@gin.configurable(module="rave.blocks")
class EncoderV2(nn.Module):
    """RAVE v2 encoder: per ratio, residual dilated units then a strided conv."""

    def __init__(self, data_size: Optional[int], capacity: int, ratios: Sequence[int],
                 latent_size: int, n_out: int, kernel_size: int, dilations: Sequence,
                 keep_dim: bool = False,
                 recurrent_layer: Optional[Callable[..., nn.Module]] = None,
                 n_channels: int = 1, activation: ActivationFactory = leaky_relu,
                 adain: Optional[Callable[..., nn.Module]] = None,
                 spectrogram=None) -> None:
        super().__init__()
        if recurrent_layer is not None:
            raise NotImplementedError("recurrent encoders are not supported")
        data_size = data_size or n_channels
        net = [normalization(Conv1d(data_size * n_channels, capacity,
                                    kernel_size=kernel_size * 2 + 1,
                                    padding=get_padding(kernel_size * 2 + 1)))]
        channels = capacity
        for r, dilations_r in zip(ratios, normalize_dilations(dilations, ratios)):
            for d in dilations_r:
                if adain is not None:
                    net.append(adain(dim=channels))
                net.append(Residual(DilatedUnit(dim=channels, kernel_size=kernel_size,
                                                dilation=d)))
            net.append(activation(channels))
            out_channels = channels * r if keep_dim else channels * 2
            net.append(normalization(Conv1d(channels, out_channels, kernel_size=2 * r,
                                            stride=r, padding=get_padding(2 * r, r))))
            channels = out_channels
        net.append(activation(channels))
        net.append(normalization(Conv1d(channels, latent_size * n_out,
                                        kernel_size=kernel_size,
                                        padding=get_padding(kernel_size))))
        self.net = nn.Sequential(*net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FreezableEncoder(nn.Module):
    """An encoder behind a latent regularisation that phase 2 freezes: once
    ``warmed_up`` (a buffer, saved in checkpoints) is set, its output is detached."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("warmed_up", torch.tensor(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        if bool(self.warmed_up):
            z = z.detach()
        return z

    def set_warmed_up(self, state: bool) -> None:
        self.warmed_up = torch.tensor(int(state), device=self.warmed_up.device)


@gin.configurable(module="rave.blocks")
class VariationalEncoder(FreezableEncoder):
    """Gaussian posterior: the encoder outputs ``(mean, scale)`` stacked on channels.

    ``std = softplus(scale) + 1e-4``; ``reparametrize`` samples ``mean + std * eps`` and
    returns ``beta`` times ``(mean^2 + var - log var - 1)`` summed over latent channels and
    averaged over batch and frames: twice the KL divergence to a standard normal (no
    factor 1/2), as acids-rave computes it.
    """

    def __init__(self, encoder: Callable[..., nn.Module], beta: float = 1.0,
                 n_channels: int = 1) -> None:
        super().__init__(encoder(n_channels=n_channels))
        self.beta = beta

    @staticmethod
    def split(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(batch, 2 * latent, frames)`` -> mean, std, each ``(batch, latent, frames)``."""
        mean, scale = z.chunk(2, 1)
        return mean, nn.functional.softplus(scale) + 1e-4

    def reparametrize(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.split(z)
        var = std * std
        sample = torch.randn_like(mean) * std + mean
        kl = (mean * mean + var - torch.log(var) - 1).sum(1).mean()
        return sample, self.beta * kl


@gin.configurable(module="rave.blocks")
class DiscreteEncoder(nn.Module):
    """Encoder followed by residual vector quantisation (the ``discrete`` config)."""

    def __init__(self, encoder_cls: Callable[..., nn.Module],
                 vq_cls: Callable[[], nn.Module], num_quantizers: int,
                 noise_augmentation: int = 0, n_channels: int = 1) -> None:
        super().__init__()
        self.encoder = encoder_cls(n_channels=n_channels)
        self.rvq = vq_cls()
        self.num_quantizers = num_quantizers
        self.register_buffer("warmed_up", torch.tensor(0))
        self.register_buffer("enabled", torch.tensor(0))
        self.noise_augmentation = noise_augmentation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def reparametrize(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if bool(self.enabled):
            z, diff, _ = self.rvq(z)
        else:
            diff = torch.zeros_like(z).mean()
        if self.noise_augmentation:
            noise = torch.randn(z.shape[0], self.noise_augmentation, z.shape[-1]).type_as(z)
            z = torch.cat([z, noise], 1)
        return z, diff

    def set_warmed_up(self, state: bool) -> None:
        self.warmed_up = torch.tensor(int(state), device=self.warmed_up.device)


@gin.configurable(module="rave.blocks")
class WasserteinEncoder(FreezableEncoder):
    """Deterministic latent pulled towards a standard normal by maximum mean discrepancy
    (acids-rave's ``wasserstein`` config; the class name keeps its spelling).

    ``reparametrize`` returns the latent (plus ``noise_augmentation`` noise channels) and
    the MMD between its frames and as many standard normal draws, under a Gaussian
    kernel ``exp(-mean((x - y)^2) / dim)``.
    """

    def __init__(self, encoder_cls: Callable[..., nn.Module], noise_augmentation: int = 0,
                 n_channels: int = 1) -> None:
        super().__init__(encoder_cls(n_channels=n_channels))
        self.noise_augmentation = noise_augmentation

    @staticmethod
    def _mean_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean Gaussian kernel between the rows of ``x`` ``(n, dim)`` and ``y``."""
        return torch.exp(-(x[:, None] - y[None]).pow(2).mean(2) / x.shape[-1]).mean()

    def mmd(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._mean_kernel(x, x) + self._mean_kernel(y, y) - 2 * self._mean_kernel(x, y)

    def reparametrize(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        frames = z.permute(0, 2, 1).reshape(-1, z.shape[1])
        reg = self.mmd(frames, torch.randn_like(frames))
        if self.noise_augmentation:
            noise = torch.randn(z.shape[0], self.noise_augmentation, z.shape[-1]).type_as(z)
            z = torch.cat([z, noise], 1)
        return z, reg.mean()


@gin.configurable(module="rave.blocks")
class SphericalEncoder(nn.Module):
    """Latent projected on the unit sphere (acids-rave's ``spherical`` config): each
    frame is divided by its L2 norm; no regularisation term. The encoder is never frozen
    (``set_warmed_up`` does nothing, and there is no ``warmed_up`` buffer)."""

    def __init__(self, encoder_cls: Callable[..., nn.Module], n_channels: int = 1) -> None:
        super().__init__()
        self.encoder = encoder_cls(n_channels=n_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def reparametrize(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # nothing holds the norm up: a frame's can reach 0 (seen at CAPACITY 8 by step 4),
        # where acids-rave's plain division gives NaN and training diverges
        norm = torch.norm(z, p=2, dim=1, keepdim=True).clamp_min(1e-12)
        return z / norm, torch.zeros_like(z).mean()

    def set_warmed_up(self, state: bool) -> None:
        pass
