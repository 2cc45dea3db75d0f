"""Small layers shared by encoders and generators: residual wiring, activations, norms.

Gin names follow acids-rave (``rave.blocks.*``) so that its configs bind to our classes.
"""
from __future__ import annotations

from typing import Callable, List, Sequence

import gin
import numpy as np
import torch
import torch.nn as nn

from ..nn.conv import Delay
from ..nn.streaming import configure_delay
from ..nn.weight_norm import apply_weight_norm

MAX_BATCH_SIZE = 64  # AdaIN's statistics buffers are sized for mc.nn~'s 64 voices.


@gin.configurable(module="rave.blocks")
def normalization(module: nn.Module, mode: str = "identity") -> nn.Module:
    """Wrap ``module`` in weight norm (``mode='weight_norm'``) or leave it as is."""
    if mode == "identity":
        return module
    if mode == "weight_norm":
        return apply_weight_norm(module)
    raise ValueError(f"normalization mode {mode!r} is not 'identity' or 'weight_norm'")


def _channels_of(module: nn.Module) -> int:
    """Input channels of the first convolution in ``module``."""
    for m in module.modules():
        if hasattr(m, "in_channels"):
            return int(m.in_channels)
    raise ValueError(f"cannot infer the channels of {type(module).__name__}")


def _out_channels_of(module: nn.Module, in_channels: int) -> int:
    """Output channels of ``module`` (its own ``out_channels``, else its last conv's)."""
    if hasattr(module, "out_channels"):
        return int(module.out_channels)
    convs = [m for m in module.modules() if hasattr(m, "out_channels")]
    return int(convs[-1].out_channels) if convs else in_channels


def align_branches(branches: Sequence[nn.Module], delay_lines: Sequence[Delay],
                   input_delay: int) -> int:
    """Delay the outputs of ``branches`` (one delay line each) onto the largest delay.

    Aligning outputs rather than inputs keeps every branch's own strides on the offline
    grid and adds no more delay than the slowest branch already has.
    """
    delays = [configure_delay(b, input_delay) for b in branches]
    target = max(delays)
    for line, d in zip(delay_lines, delays):
        line.delay = target - d
    return target


class Branches(nn.Module):
    """Runs several branches on the same input and returns their outputs as a list.

    In streaming, each branch's output is delayed so that all share the largest delay
    (cached-conv's ``AlignBranches``). Keys: ``branches.<i>.*`` as in acids-rave.
    Shapes: ``(batch, channels, time) -> [(batch, out_channels_i, time)]``.
    """

    def __init__(self, *branches: nn.Module, channels: int = 0) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        channels = channels or _channels_of(self.branches[0])
        self.paddings = nn.ModuleList([Delay(_out_channels_of(b, channels), 0)
                                       for b in branches])

    def configure_delay(self, input_delay: int) -> int:
        return align_branches(list(self.branches), list(self.paddings), input_delay)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs: List[torch.Tensor] = []
        for branch, delay_line in zip(self.branches, self.paddings):
            outs.append(delay_line(branch(x)))
        return outs


class Residual(nn.Module):
    """``x + module(x)``, the skip path delayed in streaming to match the module.

    Keys: ``aligned.branches.0.*`` (the module), as acids-rave's ``Residual``.
    ``cumulative_delay`` is accepted for acids-rave's configs, unused (the skip path's
    delay is set by :meth:`configure_delay`).
    """

    def __init__(self, module: nn.Module, cumulative_delay: int = 0) -> None:
        super().__init__()
        self.aligned = Branches(module, nn.Identity(), channels=_channels_of(module))

    def configure_delay(self, input_delay: int) -> int:
        return self.aligned.configure_delay(input_delay)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.aligned(x)
        return outs[0] + outs[1]


class SampleNorm(nn.Module):
    """Normalises each time step to unit L2 norm over channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.norm(x, 2, 1, keepdim=True)


@gin.configurable(module="rave.blocks")
class Snake(nn.Module):
    """Snake activation ``x + sin(alpha x)^2 / alpha`` with one learned ``alpha`` per channel."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.alpha + 1e-9).reciprocal() * (self.alpha * x).sin().pow(2)


def leaky_relu(dim: int) -> nn.Module:
    """acids-rave's default activation factory (the dimension is unused)."""
    return nn.LeakyReLU(.2)


@gin.configurable(module="rave.blocks")
class AdaptiveInstanceNormalization(nn.Module):
    """AdaIN as v3 uses it: identity in training; at inference it can learn source
    (``x``) and target (``y``) statistics and transfer one onto the other.

    The statistics buffers keep acids-rave's shape ``(64, dim, 1)`` so checkpoints load.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean_x", torch.zeros(MAX_BATCH_SIZE, dim, 1))
        self.register_buffer("std_x", torch.ones(MAX_BATCH_SIZE, dim, 1))
        self.register_buffer("learn_x", torch.zeros(1))
        self.register_buffer("num_update_x", torch.zeros(1))
        self.register_buffer("mean_y", torch.zeros(MAX_BATCH_SIZE, dim, 1))
        self.register_buffer("std_y", torch.ones(MAX_BATCH_SIZE, dim, 1))
        self.register_buffer("learn_y", torch.zeros(1))
        self.register_buffer("num_update_y", torch.zeros(1))

    def _update(self, target: torch.Tensor, source: torch.Tensor,
                num_updates: torch.Tensor) -> None:
        bs = source.shape[0]
        target[:bs] += (source - target[:bs]) / (num_updates + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return x
        if bool(self.learn_y):
            self._update(self.mean_y, x.mean(-1, keepdim=True), self.num_update_y)
            self._update(self.std_y, x.std(-1, keepdim=True), self.num_update_y)
            self.num_update_y += 1
            return x
        if bool(self.learn_x):
            self._update(self.mean_x, x.mean(-1, keepdim=True), self.num_update_x)
            self._update(self.std_x, x.std(-1, keepdim=True), self.num_update_x)
            self.num_update_x += 1
        if bool(self.num_update_x) and bool(self.num_update_y):
            bs = x.shape[0]
            x = (x - self.mean_x[:bs]) / (self.std_x[:bs] + 1e-5)
            x = x * self.std_y[:bs] + self.mean_y[:bs]
        return x


def mod_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """RAVE's amplitude non-linearity ``2 sigmoid(x)^2.3 + 1e-7``."""
    return 2 * torch.sigmoid(x)**2.3 + 1e-7


def amp_to_impulse_response(amp: torch.Tensor, target_size: int) -> torch.Tensor:
    """Zero-phase, Hann-windowed impulse responses from magnitude responses.

    ``amp``: ``(..., n_bins)`` -> ``(..., target_size)``.
    """
    ir = torch.fft.irfft(torch.complex(amp, torch.zeros_like(amp)))
    filter_size = ir.shape[-1]
    ir = torch.roll(ir, filter_size // 2, -1)
    ir = ir * torch.hann_window(filter_size, dtype=ir.dtype, device=ir.device)
    ir = nn.functional.pad(ir, (0, int(target_size) - int(filter_size)))
    return torch.roll(ir, -filter_size // 2, -1)


def fft_convolve(signal: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Causal linear convolution on the last axis, truncated to the signal's length.

    ``signal`` and ``kernel`` must have the same length on the last axis (the spectra of
    the two zero-padded inputs are multiplied bin by bin); other dimensions broadcast.
    """
    signal = nn.functional.pad(signal, (0, signal.shape[-1]))
    kernel = nn.functional.pad(kernel, (kernel.shape[-1], 0))
    out = torch.fft.irfft(torch.fft.rfft(signal) * torch.fft.rfft(kernel))
    return out[..., out.shape[-1] // 2:]


def normalize_dilations(dilations: Sequence, ratios: Sequence[int]) -> List[Sequence[int]]:
    """One list of dilations per ratio (a flat list is repeated for every ratio)."""
    if isinstance(dilations[0], int):
        return [list(dilations) for _ in ratios]
    return [list(d) for d in dilations]


def prod(values: Sequence[int]) -> int:
    return int(np.prod(values))


ActivationFactory = Callable[[int], nn.Module]
