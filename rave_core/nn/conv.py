"""Padded convolutions that run offline or block by block with exact streaming.

We use cached-conv's padding arithmetic (:func:`get_padding`) and its gin vocabulary
(``cc.Conv1d.bias``, ``convs.get_padding.mode``), but not its cached layers: those keep
caches of a fixed batch of 64 behind a process-wide flag, and align a strided convolution
on the upstream delay only when the caller passes it (``cumulative_delay``; acids-rave's
v2 encoders do not). Our layers keep an explicit state per layer, sized for the batch in
use, and always align on the true upstream delay (see :mod:`rave_core.nn.streaming`).
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

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


# Up to this many output frames per call, a product reads an (out, in) weight matrix
# fastest (BLAS's matrix-vector-like kernels); beyond, an (in, out) one.
MAX_FRAMES_ROWS_OUT = 3

# A product of up to this many rows with a weight matrix of at least this many values is
# computed as weighted sums of the weight's rows (`embedding_bag`, FBGEMM's kernel on x86;
# every libtorch has the op): it streams the `(in, out)` matrix once, where BLAS's general
# product first packs it. One thread, weights out of L2 (AMD Zen 4): 768x256 at 1, 2, 3
# rows in 24, 34, 43 us against 41-57, 43-72, 62-89 us through `mm`; at 4 rows, 95 us
# against 134 (384x128: 27 against 31; weights cycled, a busy phase), and BRAVE's file
# ran 256-sample blocks 7-10 % faster; at 8 rows `mm` after a read-ahead wins (131
# against 137 us). Below about 32k values its fixed cost (~7 us) loses. Above 2 MB
# (twice a core's 1 MB L2 here) each bag reads the weight from farther away, and MKL's
# product wins: v2's 1.8-4.7M-value layers took 1.1-1.5x longer, 11 % on the whole call.
# Such layers keep the `(in, out)` layout. `_WeightedRowSums._weighted_sum_rows` has one
# branch per row count up to 4.
MAX_ROWS_WEIGHTED_SUM = 4
MIN_WEIGHTS_WEIGHTED_SUM = 32768
MAX_WEIGHTS_WEIGHTED_SUM = 524288

# A weight of this many values (512 KB to 2 MB; a core's L2 holds 1 MB here) that a
# product of more rows reads is first read once in order (see :func:`_read_ahead`). MKL
# packs a weight that is out of cache at a few GB/s on AMD Zen 4 (one thread, 768x256 by
# 32 rows: about 270 us, against 170 us when it is in L2), while one sequential pass
# pulls it close at tens of GB/s (about 20 us). BRAVE at block 2048: 5-10 % off each call;
# smaller weights gained nothing measurable. At up to 4 rows these layers take the
# weighted sums instead, so small blocks are unchanged. Grouped convs, which have no
# weighted sums, skip the pass below ``MIN_ROWS_READ_AHEAD_GROUPED`` rows: there their
# batched product reads the weight once anyway (at 128, BRAVE's call was 6 % slower
# with the pass).
MIN_WEIGHTS_READ_AHEAD = 131072
MAX_WEIGHTS_READ_AHEAD = 524288
MIN_ROWS_READ_AHEAD_GROUPED = 4

# Opt-in (``--cpu-kernels onednn``): a weight of at least this many values that a product
# of more than ``MAX_ROWS_WEIGHTED_SUM`` rows reads goes through oneDNN's linear with the
# weight packed once, at the first such call, in the layout oneDNN's kernel reads
# (``mkldnn::_reorder_linear_weight``, ``mkldnn::_linear_pointwise``): no per-call packing,
# no read-ahead. One thread, AMD Zen 4, weights cycled out of cache: 768x256 by 32 rows
# in 157 us against 201 us through `mm` after the read-ahead; BRAVE's file ran 2048-sample
# blocks 4-21 % faster (15 % in two of three benchmark runs). Smaller weights (192x64 by
# 128 rows: 48 against 43 us) lose to oneDNN's fixed cost per call, and grouped convs
# gained nothing measurable. Not the default: the ops are in the `mkldnn` namespace,
# which only a libtorch built with oneDNN has (PyTorch's x86-64 builds), and a packed
# weight suits the CPU that packed it, so the file packs on the host, never at export.
MIN_WEIGHTS_PACKED = 32768


def _channels_first_view(y: torch.Tensor, b: int, t: int, o: int) -> torch.Tensor:
    """``(b, o, t)`` view of a new contiguous time-major product ``y`` ``(b t, o)``: one
    op where ``view`` then ``transpose`` are two."""
    return y.as_strided([b, o, t], [t * o, 1, o], 0)


def _reads_ahead(weight: torch.Tensor) -> bool:
    return MIN_WEIGHTS_READ_AHEAD <= weight.numel() <= MAX_WEIGHTS_READ_AHEAD


def _read_ahead(w: torch.Tensor, n_rows: int) -> torch.Tensor:
    """A zero (0-dim) computed from every value of ``w``, to add to ``w``'s product so
    that ``w`` is read in one sequential pass (and left in cache) just before it.

    ``n_rows`` is ``w.shape[0]`` as read from a runtime tensor's shape: then the pass is
    not a constant expression, and freezing cannot fold it away. A sum: the fastest pass
    (``max`` made the call slower than no pass at all); ``nan_to_num`` keeps the zero a
    zero should the sum overflow.
    """
    return (w.narrow(0, 0, n_rows).sum() * 0.0).nan_to_num()


def _store_weight_in_order(layer: nn.Module, order: Tuple[int, int, int]) -> None:
    """Keep ``layer.weight``'s values and shape, with its memory laid out as
    ``weight.permute(order)`` (contiguous): ``order`` is its own inverse here."""
    with torch.no_grad():
        stored = layer.weight.detach().permute(*order).contiguous()
    layer.weight = nn.Parameter(stored.permute(*order), requires_grad=False)


def _as_pair(padding: Union[int, Tuple[int, int], list]) -> Tuple[int, int]:
    if isinstance(padding, int):
        return (padding, padding)
    return (int(padding[0]), int(padding[1]))


class _WeightedRowSums(StreamingModule):
    """Base of the streaming convolutions: a product of a few rows computed as weighted
    sums of the weight's rows (see ``MAX_ROWS_WEIGHTED_SUM``).

    The bags (row indices and offsets) are non-persistent buffers, one pair per row count
    (state dicts are unchanged, and they move with the layer): picking one by the rows of
    the call is a few interpreter instructions, where slicing one pair to them was two
    op calls per layer and call.

    CPU only: the gain is FBGEMM's kernel against BLAS's packing, measured on CPUs. A
    model moved to a GPU (nn~'s ``gpu`` message) takes the product instead; MPS has no
    ``embedding_bag`` before torch 2.10, and nn~ 1.6 ships libtorch 2.5.1.
    """

    def _no_weighted_sum(self) -> None:
        # Every layer has the attributes TorchScript compiles against; freezing folds the
        # branch away where ``weighted_sum_rows`` stays 0.
        self.weighted_sum_rows = 0
        for m in range(1, MAX_ROWS_WEIGHTED_SUM + 1):
            self.register_buffer(f"bag_index_{m}", torch.zeros(0, dtype=torch.long),
                                 persistent=False)
            self.register_buffer(f"bag_offsets_{m}", torch.zeros(0, dtype=torch.long),
                                 persistent=False)

    def _set_up_weighted_sum(self, n_in: int) -> None:
        """Bags for an ``(n_in, out)`` weight matrix and 1 to ``MAX_ROWS_WEIGHTED_SUM``
        rows, or none (``weighted_sum_rows = 0``) when its size is outside
        ``MIN_WEIGHTS_WEIGHTED_SUM`` to ``MAX_WEIGHTS_WEIGHTED_SUM`` values. The offsets
        end with the total (``include_last_offset``)."""
        if MAX_ROWS_WEIGHTED_SUM != 4:
            raise NotImplementedError("_weighted_sum_rows has one branch per row count, "
                                      "up to 4: add branches with MAX_ROWS_WEIGHTED_SUM")
        self._no_weighted_sum()
        if not MIN_WEIGHTS_WEIGHTED_SUM <= self.weight.numel() <= MAX_WEIGHTS_WEIGHTED_SUM:
            return
        device = self.weight.device
        self.weighted_sum_rows = MAX_ROWS_WEIGHTED_SUM
        for m in range(1, MAX_ROWS_WEIGHTED_SUM + 1):
            setattr(self, f"bag_index_{m}", torch.arange(n_in, device=device).repeat(m))
            setattr(self, f"bag_offsets_{m}", torch.arange(m + 1, device=device) * n_in)

    def use_packed_product(self) -> bool:
        """Compute this layer's products of more than ``MAX_ROWS_WEIGHTED_SUM`` rows with
        oneDNN, on a weight it packs at the first such call (see ``MIN_WEIGHTS_PACKED``),
        if its weight is large enough; returns whether it does. Whatever the weight's
        memory order, the packed weight is the product's ``(in, out)`` matrix.

        Only such layers have the ``packed_weight`` attribute: TorchScript evaluates
        ``hasattr`` when it compiles, so every other layer's code, and a portable file's,
        has no ``mkldnn`` op."""
        if ("weight" not in self._parameters or getattr(self, "groups", 1) != 1
                or self.weight.numel() < MIN_WEIGHTS_PACKED):
            return False
        self.min_rows_packed = MAX_ROWS_WEIGHTED_SUM + 1  # fewer: the row sums
        self.packed_weight = torch.zeros(0)  # packed at the first product
        self.packed_ready = False
        return True

    def forget_packed_weight(self) -> None:
        """Drop the packed weight, if any: the next product packs it again. A packed weight
        is an opaque oneDNN tensor, which cannot be saved: files are saved without one."""
        if hasattr(self, "packed_weight"):
            self.packed_ready = False
            self.packed_weight = torch.zeros(0)

    def _product(self, a: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor],
                 x: torch.Tensor) -> torch.Tensor:
        """``a @ w (+ bias)``: ``a`` ``(M, K)``, ``w`` ``(K, N)`` -> ``(M, N)`` contiguous,
        for a call on block ``x``. oneDNN on the packed weight where set up (float32 CPU
        blocks only), else BLAS, after the read-ahead where the weight's size calls for it
        (``MIN_WEIGHTS_READ_AHEAD``)."""
        if hasattr(self, "packed_weight"):
            # float32 on the CPU: what was packed (a host may move the module, e.g.
            # nn~'s gpu message; the other devices and dtypes take BLAS)
            if a.size(0) >= self.min_rows_packed and x.is_cpu and x.dtype == torch.float32:
                return self._packed_product(a, w, bias)
        if self.read_ahead:
            zero = _read_ahead(w, a.size(1))
            return torch.addmm(zero if bias is None else bias + zero, a, w)
        return torch.addmm(bias, a, w) if bias is not None else torch.mm(a, w)

    def _packed_product(self, a: torch.Tensor, w: torch.Tensor,
                        bias: Optional[torch.Tensor]) -> torch.Tensor:
        """``a @ w (+ bias)`` through oneDNN; ``w`` is packed at the first call, for its
        ``M`` rows (other row counts work too)."""
        if not self.packed_ready:
            # oneDNN's linear reads an (N, K) weight: a transposed view, no copy
            self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(w.t(), a.size(0))
            self.packed_ready = True
        no_scalars: List[Optional[Union[int, float, complex]]] = []
        return torch.ops.mkldnn._linear_pointwise(a.contiguous(), self.packed_weight, bias,
                                                  "none", no_scalars, "")

    def _sums_weight_rows(self, rows: int, x: torch.Tensor) -> bool:
        """Whether a call computing ``rows`` rows of block ``x`` takes the row sums. The
        block's device, not the weight's: freezing would fold the latter."""
        return self.weighted_sum_rows > 0 and rows <= self.weighted_sum_rows and x.is_cpu

    def _weighted_sum_rows(self, a: torch.Tensor, m: int, w: torch.Tensor) -> torch.Tensor:
        """``a @ w`` for a few rows: ``a`` the ``M`` rows of ``(M, K)`` one after the
        other (any shape that flattens to them), ``w`` ``(K, N)`` contiguous, ``M`` at
        most ``weighted_sum_rows`` -> ``(M, N)``. Row ``i`` of the result sums the rows of
        ``w`` weighted by row ``i`` of ``a``."""
        # one branch per row count up to MAX_ROWS_WEIGHTED_SUM (4)
        if m == 1:
            index, offsets = self.bag_index_1, self.bag_offsets_1
        elif m == 2:
            index, offsets = self.bag_index_2, self.bag_offsets_2
        elif m == 3:
            index, offsets = self.bag_index_3, self.bag_offsets_3
        else:
            index, offsets = self.bag_index_4, self.bag_offsets_4
        # The aten op that `embedding_bag` calls when nothing needs gradients (same schema
        # in torch 2.5, nn~ 1.6's libtorch, and 2.13): `F.embedding_bag`'s argument checks
        # are ~15 interpreter nodes per call, and the public op one more dispatch, on a
        # path that runs at every small host block. Mode 0 is "sum"; the offsets include
        # the last one; no padding index. `a` is flattened by `reshape(-1)`: a length computed
        # from `w.size(0)` (a constant once frozen) was folded by some freezes and not by
        # others, so two exports of one checkpoint could differ in that line of code.
        return torch._embedding_bag_forward_only(w, index, offsets, False, 0, False,
                                                 a.reshape(-1), True, -1)[0]


class Conv1d(_WeightedRowSums):
    """``nn.Conv1d`` with explicit ``(left, right)`` padding and a streaming mode.

    Offline: ``pad(x, (left, right))`` then convolve (what cached-conv's ``Conv1d`` does).
    Streaming: the ``left + right`` samples of padding come from the previous call, so the
    output is the offline output delayed by ``right`` samples (plus the alignment of a
    strided convolution), and each call of ``T`` samples (``T`` a multiple of the stride)
    returns ``T / stride`` samples.

    Shapes: ``(batch, in_channels, time) -> (batch, out_channels, time / stride)``.
    Parameters are named ``weight`` and ``bias`` (``weight_g`` / ``weight_v`` once weight
    norm is applied), as in acids-rave's state dicts. ``cumulative_delay`` is accepted for
    acids-rave's configs, unused (delays are set by :meth:`configure_delay`).
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
        # Streaming blocks are a few frames long: there one matrix product beats the
        # convolution kernels (see :meth:`_matmul_streaming`). On for TorchScript export.
        self.matmul_streaming = False
        self.weight_rows_out = False  # memory order of `weight`, see lay_out_weight_for_matmul
        self.max_frames_rows_out = MAX_FRAMES_ROWS_OUT
        self.read_ahead = False  # see MIN_WEIGHTS_READ_AHEAD
        self.min_rows_read_ahead = MIN_ROWS_READ_AHEAD_GROUPED  # grouped convs only
        self._no_weighted_sum()

    def state_shape(self) -> Tuple[int, int, int]:
        return (1, self.in_channels, self.padding_lr[0] + self.padding_lr[1] + self.alignment)

    def configure_delay(self, input_delay: int) -> int:
        s = self.stride[0]
        d = input_delay + self.padding_lr[1]
        self.alignment = (s - d % s) % s
        return (d + self.alignment) // s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.streaming:
            x = nn.functional.pad(x, self.padding_lr)
        elif self.matmul_streaming:
            return self._matmul_streaming(x)
        else:
            n_state = self.state.shape[2]
            if n_state > 0:
                buf = torch.cat([self._get_state(x), x], -1)
                self.state = buf[..., buf.shape[-1] - n_state:]
                if self.alignment > 0:
                    buf = buf[..., :buf.shape[-1] - self.alignment]
                x = buf
        return nn.functional.conv1d(x, self.weight, self.bias, self.stride, 0,
                                    self.dilation, self.groups)

    def lay_out_weight_for_matmul(self, frames_per_call: int = 0) -> None:
        """Store ``weight`` in the memory order :meth:`_matmul_streaming` reads fastest.

        The product is ``(M, k C) x (k C, O)`` with ``M`` the output frames of a call.
        For ``M <= 3`` BLAS streams an ``(O, k C)`` row-major matrix fastest (1.4x on
        weights read from memory); for more frames, a ``(k C, O)`` one. ``frames_per_call``
        is ``M`` at the host block the export is tuned for (0: unknown, the latter).
        A large weight (see ``MIN_WEIGHTS_WEIGHTED_SUM``) always takes the ``(k C, O)``
        order: at up to 4 rows it is read as weighted sums of its rows, faster still; at
        more rows, one of 512 KB to 2 MB is read ahead of the product (see
        ``MIN_WEIGHTS_READ_AHEAD``). ``weight`` keeps its shape as a view: same values,
        same state dict.
        """
        if "weight" not in self._parameters:
            return
        self.read_ahead = _reads_ahead(self.weight)
        if self.groups != 1:
            return  # grouped convs use batched products over the original layout
        self._set_up_weighted_sum(self.in_channels * self.kernel_size[0])
        self.weight_rows_out = (0 < frames_per_call <= MAX_FRAMES_ROWS_OUT
                                and self.weighted_sum_rows == 0)
        _store_weight_in_order(self, (0, 2, 1) if self.weight_rows_out   # (O, k, C)
                               else (2, 1, 0))                            # (k, C, O)

    def _matmul_streaming(self, x: torch.Tensor) -> torch.Tensor:
        """One streaming call as a matrix product over gathered taps, time-major.

        ``x``: ``(batch, in_channels, T)`` (any strides; the previous layer's output is
        time-major in memory) -> ``(batch, out_channels, T / stride)``, a transposed view
        of a time-major result. The state is ``(batch, length, in_channels)``.
        """
        xt = x.transpose(1, 2)                                       # (B, T, C)
        # Static lengths (constants once the export is frozen): no shape reads, no
        # branch left in the graph for a stateless or unaligned layer.
        n_state = self.padding_lr[0] + self.padding_lr[1] + self.alignment
        c = self.in_channels
        if n_state > 0:
            buf = torch.cat([self._get_state(xt), xt], 1)
            length = buf.size(1)
            self.state = buf.narrow(1, length - n_state, n_state)
            if self.alignment > 0:
                buf = buf.narrow(1, 0, length - self.alignment)
            # a new contiguous (B, length, C) tensor: strides known without asking
            # (four op calls per layer that small host blocks feel)
            sb, st, sc, offset = length * c, c, 1, 0
        else:
            buf = xt
            sb, st, sc, offset = buf.stride(0), buf.stride(1), buf.stride(2), buf.storage_offset()
        k, d, s = self.kernel_size[0], self.dilation[0], self.stride[0]
        b, o, g = buf.size(0), self.out_channels, self.groups
        t = (buf.size(1) - (k - 1) * d - 1) // s + 1
        # The taps of output frame j are buf[:, j s + i d] (i < k): one strided view,
        # (B, T', k, C); reshaping it is a view when the taps are adjacent in memory
        # (one frame, no dilation), else the one copy im2col needs.
        taps = buf.as_strided([b, t, k, c], [sb, s * st, d * st, sc], offset)
        if g == 1:
            bias = self.bias
            if self.weight_rows_out:
                taps = taps.reshape(b * t, k * c)
                w = self.weight.permute(0, 2, 1).reshape(o, k * c)   # a view once laid out
                if b * t > self.max_frames_rows_out:  # (O, M) = W taps^T reads W's rows in order
                    if bias is not None:
                        y = torch.addmm(bias.unsqueeze(1), w, taps.t()).t()
                    else:
                        y = torch.mm(w, taps.t()).t()
                    return y.reshape(b, t, o).transpose(1, 2)
                # BLAS is ~10x slower on a column-major left factor times a transposed
                # right one (a stateless layer after a channel-first output gives one)
                taps = taps.contiguous()
                w = w.t()
            else:
                w = self.weight.permute(2, 1, 0).reshape(k * c, o)   # a view once laid out
                if self._sums_weight_rows(b * t, x):
                    # the taps flattened straight from their 4-D view: no 2-D reshape first
                    y = self._weighted_sum_rows(taps, b * t, w)
                    if bias is not None:
                        y = y + bias
                    return _channels_first_view(y, b, t, o)
                taps = taps.reshape(b * t, k * c)
            return _channels_first_view(self._product(taps, w, bias, x), b, t, o)
        cg, og = c // g, o // g
        taps = taps.reshape(b * t, k, g, cg).permute(2, 0, 3, 1).reshape(g, b * t, cg * k)
        w = self.weight.reshape(g, og, cg * k).transpose(1, 2)        # (G, Cg k, Og)
        if self.read_ahead and b * t >= self.min_rows_read_ahead:
            y = torch.baddbmm(_read_ahead(w, taps.size(0)), taps, w)
        else:
            y = torch.bmm(taps, w)
        y = y.transpose(0, 1).reshape(b, t, o)
        if self.bias is not None:
            y = y + self.bias
        return y.transpose(1, 2)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size[0]}, "
                f"stride={self.stride[0]}, padding={self.padding_lr}, dilation={self.dilation[0]}"
                f", groups={self.groups}, bias={self.bias is not None}")


class ConvTranspose1d(_WeightedRowSums):
    """``nn.ConvTranspose1d`` (symmetric ``padding``) with a streaming mode.

    Streaming keeps the ``kernel - stride`` samples that overlap the next block and
    returns ``T * stride`` samples per call: the offline output delayed by ``padding``.

    Shapes: ``(batch, in_channels, T) -> (batch, out_channels, T')``. Offline, as torch:
    ``T' = (T - 1) * stride - 2 * padding + kernel_size``, which is ``T * stride`` only
    when ``kernel_size - 2 * padding == stride`` (RAVE's ``kernel_size = 2 * stride``,
    ``padding = stride // 2`` with an even stride; an odd stride gives one sample more).
    Streaming: ``T' = T * stride``. ``cumulative_delay`` is accepted for acids-rave's
    configs, unused.
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
        self.weight_rows_out = False  # see lay_out_weight_for_matmul
        self.read_ahead = False  # see MIN_WEIGHTS_READ_AHEAD
        self._no_weighted_sum()

    def state_shape(self) -> Tuple[int, int, int]:
        return (1, self.out_channels, self.kernel_size[0] - self.stride[0])

    def configure_delay(self, input_delay: int) -> int:
        return input_delay * self.stride[0] + self.padding[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.streaming:
            return nn.functional.conv_transpose1d(x, self.weight, self.bias, self.stride,
                                                  self.padding)
        if self.matmul_streaming and self.kernel_size[0] == 2 * self.stride[0]:
            return self._matmul_streaming(x)
        y = nn.functional.conv_transpose1d(x, self.weight, None, self.stride, 0)
        n_out = x.shape[-1] * self.stride[0]
        n_state = self.kernel_size[0] - self.stride[0]
        if n_state > 0:
            state = self._get_state(x)
            if self.time_major_state:
                state = state.transpose(1, 2)
            head = y[..., :n_state] + state
            tail = y[..., n_out:]
            self.state = tail.transpose(1, 2) if self.time_major_state else tail
            y = torch.cat([head, y[..., n_state:n_out]], -1)
        if self.bias is not None:
            y = y + self.bias.unsqueeze(-1)
        return y

    def lay_out_weight_for_matmul(self, frames_per_call: int = 0) -> None:
        """Store ``weight`` in the memory order :meth:`_matmul_streaming` reads fastest:
        ``(kernel, out, in)`` rows for up to 3 input frames per call, else ``(in, kernel,
        out)``; a large weight always the latter, read as weighted sums of its rows at up
        to 4 frames, and read ahead of the product at more (see
        :meth:`Conv1d.lay_out_weight_for_matmul`). Same values, same shape."""
        if "weight" not in self._parameters:
            return
        self.read_ahead = _reads_ahead(self.weight)
        self._set_up_weighted_sum(self.in_channels)
        self.weight_rows_out = (0 < frames_per_call <= MAX_FRAMES_ROWS_OUT
                                and self.weighted_sum_rows == 0)
        _store_weight_in_order(self, (2, 1, 0) if self.weight_rows_out   # (k, O, C)
                               else (0, 2, 1))                            # (C, k, O)

    def _matmul_streaming(self, x: torch.Tensor) -> torch.Tensor:
        """One streaming call (kernel = 2 x stride) as one matrix product, time-major.

        Each input frame ``t`` yields two output frames of ``stride`` samples: the first
        half of the kernel lands on frame ``t``, the second on ``t + 1`` (the state,
        ``(batch, stride, out_channels)``, holds the second half of the last frame).
        ``x``: ``(batch, in_channels, T)`` -> ``(batch, out_channels, T * stride)``.
        """
        b, t = x.size(0), x.size(2)
        s, o = self.stride[0], self.out_channels
        xt = x.transpose(1, 2)
        if self.weight_rows_out:  # views once laid out; row-major xt, see Conv1d
            y = torch.mm(xt.reshape(b * t, self.in_channels).contiguous(),
                         self.weight.permute(2, 1, 0).reshape(2 * s * o, self.in_channels).t())
        else:
            w = self.weight.permute(0, 2, 1).reshape(self.in_channels, 2 * s * o)
            if self._sums_weight_rows(b * t, x):
                y = self._weighted_sum_rows(xt, b * t, w)
            else:
                y = self._product(xt.reshape(b * t, self.in_channels), w, None, x)
        y = y.view(b, t, 2, s * o)
        second = y[:, :, 1]
        earlier = torch.cat([self._get_state(x).reshape(b, 1, s * o), second[:, :t - 1]], 1)
        self.state = second[:, t - 1:].reshape(b, s, o)
        out = (y[:, :, 0] + earlier).reshape(b, t * s, o)
        if self.bias is not None:
            out = out + self.bias
        return out.transpose(1, 2)


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
        if self.time_major_state:
            xt = x.transpose(1, 2)
            buf = torch.cat([self._get_state(xt), xt], 1)
            self.state = buf[:, xt.shape[1]:]
            return buf[:, :xt.shape[1]].transpose(1, 2)
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
