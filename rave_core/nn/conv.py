"""Padded convolutions that run offline or block by block with exact streaming.

We use cached-conv's padding arithmetic (:func:`get_padding`) and its gin vocabulary
(``cc.Conv1d.bias``, ``convs.get_padding.mode``), but not its cached layers: those keep caches of a fixed batch of 64 behind a process-wide flag, and align
strided convolutions on their own padding only. Our layers keep an explicit state per
layer, sized for the batch in use, and align on the true upstream delay (see
:mod:`rave_core.nn.streaming`).
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import cached_conv as cc
import gin
import torch
import torch.nn as nn

from .streaming import StreamingModule


# cached-conv's padding arithmetic ("centered", "causal", "anticausal"), bound to gin
# under its own name so that acids-rave configs (`convs.get_padding.mode = 'causal'`)
# set it. Returns ``(left, right)``.
get_padding = gin.external_configurable(cc.get_padding, "get_padding",
                                        module="cached_conv.convs")


def _as_pair(padding: Union[int, Tuple[int, int], list]) -> Tuple[int, int]:
    if isinstance(padding, int):
        return (padding, padding)
    return (int(padding[0]), int(padding[1]))


class Conv1d(StreamingModule):
    """``nn.Conv1d`` with explicit ``(left, right)`` padding and a streaming mode.

    Offline: ``pad(x, (left, right))`` then convolve (what cached-conv's ``Conv1d`` does).
    Streaming: the ``left + right`` samples of padding come from the previous call, so the
    output is the offline output delayed by ``right`` samples (plus the alignment of a
    strided convolution), and each call of ``T`` samples (``T`` a multiple of the stride)
    returns ``T / stride`` samples.

    Shapes: ``(batch, in_channels, time) -> (batch, out_channels, time / stride)``.
    Parameters are named ``weight`` and ``bias`` (``weight_g`` / ``weight_v`` once weight
    norm is applied), as in acids-rave's state dicts.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: Union[int, Tuple[int, int]] = 0,
                 dilation: int = 1, groups: int = 1, bias: bool = True,
                 cumulative_delay: int = 0) -> None:
        super().__init__()
        # The conv holds the parameters so that keys are `weight`/`bias` at this level.
        conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride,
                         dilation=dilation, groups=groups, bias=bias)
        self.weight = conv.weight
        self.bias = conv.bias
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kernel_size, )
        self.stride = (stride, )
        self.dilation = (dilation, )
        self.groups = groups
        self.padding_lr = _as_pair(padding)
        # Extra input delay that puts a strided conv on the offline frame grid.
        self.alignment = 0
        # Streaming blocks are a few samples long: there one matrix product beats the
        # convolution kernels (see :meth:`_matmul_conv`). Switched on for TorchScript export.
        self.matmul_streaming = False

    def state_shape(self) -> Tuple[int, int, int]:
        return (1, self.in_channels, self.padding_lr[0] + self.padding_lr[1] + self.alignment)

    def configure_delay(self, input_delay: int) -> int:
        s = self.stride[0]
        d = input_delay + self.padding_lr[1]
        self.alignment = (s - d % s) % s
        return (d + self.alignment) // s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.streaming:
            n_state = self.state.shape[2]
            if n_state > 0:
                buf = torch.cat([self._get_state(x), x], -1)
                self.state = buf[..., buf.shape[-1] - n_state:]
                if self.alignment > 0:
                    buf = buf[..., :buf.shape[-1] - self.alignment]
                x = buf
            if self.matmul_streaming:
                span = (self.kernel_size[0] - 1) * self.dilation[0] + 1
                if (x.shape[-1] - span) // self.stride[0] < 4:
                    return self._matmul_conv(x)
        else:
            x = nn.functional.pad(x, self.padding_lr)
        return nn.functional.conv1d(x, self.weight, self.bias, self.stride, 0,
                                    self.dilation, self.groups)

    def _matmul_conv(self, x: torch.Tensor) -> torch.Tensor:
        """Unpadded convolution as one (batched) matrix product over gathered taps.

        ``x``: ``(batch, in_channels, time)``, already padded -> ``(batch, out, frames)``.
        """
        k, d, g = self.kernel_size[0], self.dilation[0], self.groups
        taps = x.unfold(2, (k - 1) * d + 1, self.stride[0])       # (B, C, T, span)
        if d > 1:
            taps = taps[..., ::d]                                  # (B, C, T, k)
        b, c, t = taps.shape[0], taps.shape[1], taps.shape[2]
        o = self.out_channels
        if g == 1:
            y = torch.matmul(taps.permute(0, 2, 1, 3).reshape(b, t, c * k),
                             self.weight.reshape(o, c * k).t())   # (B, T, O)
            y = y.transpose(1, 2)
        else:
            cg, og = c // g, o // g
            taps = taps.reshape(b, g, cg, t, k).permute(1, 0, 3, 2, 4).reshape(g, b * t, cg * k)
            w = self.weight.reshape(g, og, cg * k).transpose(1, 2)  # (G, Cg*k, Og)
            y = torch.bmm(taps, w).reshape(g, b, t, og).permute(1, 0, 3, 2).reshape(b, o, t)
        if self.bias is not None:
            y = y + self.bias.unsqueeze(-1)
        return y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size[0]}, "
                f"stride={self.stride[0]}, padding={self.padding_lr}, dilation={self.dilation[0]}"
                f", groups={self.groups}, bias={self.bias is not None}")


class ConvTranspose1d(StreamingModule):
    """``nn.ConvTranspose1d`` (symmetric ``padding``) with a streaming mode.

    Streaming keeps the ``kernel - stride`` samples that overlap the next block and
    returns ``T * stride`` samples per call: the offline output delayed by ``padding``.

    Shapes: ``(batch, in_channels, time) -> (batch, out_channels, time * stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 stride: int = 1, padding: int = 0, bias: bool = True,
                 cumulative_delay: int = 0) -> None:
        super().__init__()
        conv = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride=stride,
                                  padding=padding, bias=bias)
        self.weight = conv.weight
        self.bias = conv.bias
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (kernel_size, )
        self.stride = (stride, )
        self.padding = (padding, )
        if kernel_size < stride:
            raise ValueError("ConvTranspose1d needs kernel_size >= stride to stream")
        self.matmul_streaming = False  # see Conv1d.matmul_streaming

    def state_shape(self) -> Tuple[int, int, int]:
        return (1, self.out_channels, self.kernel_size[0] - self.stride[0])

    def configure_delay(self, input_delay: int) -> int:
        return input_delay * self.stride[0] + self.padding[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.streaming:
            return nn.functional.conv_transpose1d(x, self.weight, self.bias, self.stride,
                                                  self.padding)
        if self.matmul_streaming and self.kernel_size[0] == 2 * self.stride[0] and x.shape[-1] < 4:
            y = self._matmul_conv_transpose(x)
        else:
            y = nn.functional.conv_transpose1d(x, self.weight, None, self.stride, 0)
        n_out = x.shape[-1] * self.stride[0]
        n_state = self.state.shape[2]
        if n_state > 0:
            head = y[..., :n_state] + self._get_state(y)
            self.state = y[..., n_out:]
            y = torch.cat([head, y[..., n_state:n_out]], -1)
        if self.bias is not None:
            y = y + self.bias.unsqueeze(-1)
        return y


    def _matmul_conv_transpose(self, x: torch.Tensor) -> torch.Tensor:
        """Unpadded transposed convolution (kernel = 2 x stride) as one matrix product.

        ``x``: ``(batch, in_channels, T)`` -> ``(batch, out_channels, (T + 1) * stride)``.
        """
        b, t = x.shape[0], x.shape[-1]
        s, o = self.stride[0], self.out_channels
        y = torch.matmul(x.transpose(1, 2), self.weight.reshape(self.in_channels, o * 2 * s))
        y = y.reshape(b, t, o, 2, s).permute(0, 2, 3, 1, 4)      # (B, O, half, T, s)
        zero = torch.zeros(b, o, 1, s, dtype=y.dtype, device=y.device)
        first = torch.cat([y[:, :, 0], zero], 2)                   # lands on frames 0..T-1
        second = torch.cat([zero, y[:, :, 1]], 2)                  # one frame later
        return (first + second).reshape(b, o, (t + 1) * s)


class Delay(StreamingModule):
    """Delays a signal by ``delay`` samples in streaming; identity offline.

    Used to align a skip connection with a branch that has a streaming delay.
    Shapes: ``(batch, channels, time) -> (batch, channels, time)``.
    """

    def __init__(self, channels: int, delay: int = 0) -> None:
        super().__init__()
        self.channels = channels
        self.delay = delay

    def state_shape(self) -> Tuple[int, int, int]:
        return (1, self.channels, self.delay)

    def configure_delay(self, input_delay: int) -> int:
        return input_delay + self.delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.streaming or self.delay == 0:
            return x
        buf = torch.cat([self._get_state(x), x], -1)
        self.state = buf[..., x.shape[-1]:]
        return buf[..., :x.shape[-1]]


# cached-conv's public factories, under its gin names, so that acids-rave configs
# (`cc.Conv1d.bias = False`) bind to our layers.
@gin.configurable("Conv1d", module="cached_conv")
def cached_conv1d(*args, **kwargs) -> Conv1d:
    return Conv1d(*args, **kwargs)


@gin.configurable("ConvTranspose1d", module="cached_conv")
def cached_conv_transpose1d(*args, **kwargs) -> ConvTranspose1d:
    return ConvTranspose1d(*args, **kwargs)
