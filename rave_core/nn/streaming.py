"""Explicit streaming state and delay bookkeeping.

Every layer that needs the past to process the present (a padded convolution, a
transposed convolution's overlap, a delay line) derives from :class:`StreamingModule`.
It owns its state as a *non-persistent buffer* named ``state``:

* the state never enters the state dict, so checkpoints stay those of the offline model
  (acids-rave's key set);
* it is sized for the batch actually used (never a fixed batch of 64): a call with another
  batch size starts that layer from silence;
* ``state`` is *replaced*, not written in place, so the same layer can be scripted for
  TorchScript hosts (state carried inside the module) and traced for ONNX with the state
  passed in and out explicitly (see :func:`streaming_layers`).

Exactness: a streaming model must output the offline model's output delayed by a whole
number of samples. Each layer reports, through :meth:`StreamingModule.configure_delay`,
the delay of its output given the delay of its input. A strided convolution only computes
the offline frames if the delay of its input plus its right padding is a multiple of its
stride; where it is not, the layer delays its input by the few samples needed
(``alignment``). cached-conv computes that alignment from the layer's own padding plus
the ``cumulative_delay`` its caller passes, and acids-rave's v2 encoders pass none, which
leaves them (v2, v2_small, discrete) computing frames at another phase than the offline
model; here every layer reports its delay, so the alignment always uses the true
upstream delay and streaming is exact (once the first receptive field has passed: before
it, offline zero padding and the layers' zero state differ inside the network).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn as nn


class StreamingModule(nn.Module):
    """A layer whose streaming mode carries state from one call to the next.

    Subclasses implement :meth:`state_shape` (the state for batch 1) and, inside
    ``forward`` when ``self.streaming``, read the state with :meth:`_get_state` and
    replace it by assigning ``self.state`` (never writing into it in place).
    """

    def __init__(self) -> None:
        super().__init__()
        self.streaming: bool = False
        # Matrix-product streaming (TorchScript hosts) keeps the state time-major,
        # ``(batch, length, channels)``: the tail kept at each call is then a contiguous
        # slice, and concatenating it with the next block is a plain copy (a strided
        # channel-first tail costs ~10x more per layer). See :func:`set_matmul_streaming`.
        self.time_major_state: bool = False
        self.register_buffer("state", torch.zeros(0), persistent=False)

    def state_shape(self) -> Tuple[int, int, int]:
        """Shape ``(1, channels, length)`` of this layer's state for batch 1."""
        raise NotImplementedError

    def reset_state(self, batch_size: int = 1) -> None:
        c, n = self.state_shape()[1:]
        p = next(self.parameters(), None)
        dtype = p.dtype if p is not None else torch.float32
        device = p.device if p is not None else self.state.device
        shape = (batch_size, n, c) if self.time_major_state else (batch_size, c, n)
        self.state = torch.zeros(shape, dtype=dtype, device=device)

    def _get_state(self, x: torch.Tensor) -> torch.Tensor:
        state = self.state
        # `size(i)` rather than `shape[i]`: TorchScript builds no list (this runs once per
        # layer and call)
        if state.size(0) != x.size(0) or state.dtype != x.dtype:
            # A new batch size (e.g. mc.nn~ voices) starts from silence.
            state = torch.zeros(x.size(0), state.size(1), state.size(2),
                                dtype=x.dtype, device=x.device)
        return state

    def configure_delay(self, input_delay: int) -> int:
        """Set up alignment for an input delayed by ``input_delay`` samples.

        Returns the delay of the output, in samples at the output rate.
        """
        raise NotImplementedError


def configure_delay(module: nn.Module, input_delay: int) -> int:
    """Delay bookkeeping through any module.

    Modules that know their delay implement ``configure_delay``. Any other module is
    taken to apply its children one after the other, in the order they were registered
    (``nn.Sequential`` and the ``net`` wrappers of our blocks); a module without children
    (activation, normalisation) is pointwise in time and keeps the delay.
    """
    fn = getattr(module, "configure_delay", None)
    if fn is not None:
        return fn(input_delay)
    d = input_delay
    for child in module.children():
        d = configure_delay(child, d)
    return d


def streaming_layers(module: nn.Module) -> List[Tuple[str, StreamingModule]]:
    """All stateful layers below ``module``, in a fixed order (that of ``named_modules``).

    This order is the order of the state tensors of an ONNX streaming graph and of the
    slices of an anira flat state.
    """
    return [(name, m) for name, m in module.named_modules()
            if isinstance(m, StreamingModule) and m.state_shape()[2] > 0]


def set_streaming(module: nn.Module, streaming: bool, batch_size: int = 1) -> None:
    """Switch every layer below ``module`` to streaming (or offline) and reset its state.

    This only sets the mode and the state: it does not configure the delay lines and
    strided-conv alignments (:func:`configure_delay`), which stay at zero until something
    does. :meth:`rave_core.models.rave.RAVE.set_streaming` configures them first (through
    ``streaming_delays``), so on a bare submodule call :func:`configure_delay` before
    streaming, or the ``Residual`` / ``Branches`` delay lines leave it inexact.
    """
    for m in module.modules():
        if isinstance(m, StreamingModule):
            m.streaming = streaming
            if streaming:
                m.reset_state(batch_size)
            else:
                m.state = torch.zeros(0, device=m.state.device)


def set_matmul_streaming(module: nn.Module, enabled: bool = True) -> None:
    """Stream ``module`` the way TorchScript hosts run it fastest on CPU.

    Short blocks (a few frames per layer at host block sizes) are computed as one matrix
    product per layer instead of a convolution kernel, states are kept time-major, and
    the weights are laid out in memory as those products read them (``weight`` keeps its
    shape, as a view, so offline use and the state dict are unchanged). Export-only: the
    TorchScript targets turn it on; ONNX graphs keep channel-first states.
    Call it before :func:`set_streaming` (the state layout is chosen at reset).
    """
    for m in module.modules():
        if isinstance(m, StreamingModule):
            m.time_major_state = enabled
        if hasattr(m, "matmul_streaming"):
            m.matmul_streaming = enabled
            if enabled and hasattr(m, "lay_out_weight_for_matmul"):
                m.lay_out_weight_for_matmul()
