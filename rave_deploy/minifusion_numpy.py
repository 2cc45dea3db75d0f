"""BRAVE streamed block by block from a Minifusion ``.h5`` alone, in NumPy.

This is what a C++ plugin does with the file, written as plainly as possible: it reads
only the HDF5 datasets (state-dict keys, float32) and the root attributes that carry the
hyper-parameters shapes cannot tell (strides, dilations), and runs BRAVE's causal
``forward`` (audio -> posterior mean -> audio) one host block at a time, with every
layer's history held in an explicit state dictionary. It imports neither torch nor
``rave_core``: it is the independent reference the Minifusion target is checked
against, and a readable specification for a plugin author.

Signal path for a block of ``N`` samples (``N`` a multiple of the ratio), shapes
``(batch, channels, time)``:

1. PQMF analysis: causal strided convolution ``(B, 1, N) -> (B, n_band, N / n_band)``,
   then the sign of odd bands flipped on even band samples (counted from the start of
   the stream).
2. Encoder (RAVE v1): convolutions with BatchNorm folded from its running statistics,
   LeakyReLU(0.2), strided convolutions, all causally padded. The posterior mean is the
   first ``latent_size`` channels of its output: ``(B, latent_size, N / ratio)``.
3. Generator (RAVE v1): causal convolutions, transposed convolutions whose overlapping
   tail is carried to the next block, residual stacks of dilated convolutions, and
   ``tanh(waveform) * mod_sigmoid(loudness)``: ``(B, n_band, N / n_band)``.
4. PQMF synthesis: the odd-band flip at the phase of the decoder's delay, a causal
   convolution, and interleaving of the polyphase outputs: ``(B, 1, N)``.

The output is the offline model's output delayed by ``latency_samples`` (root attribute).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

FORMAT = "rave-deploy-minifusion/1"
ARCHITECTURE = "brave"

State = Dict[str, object]


class MinifusionFileError(ValueError):
    """The ``.h5`` lacks a dataset or attribute the plugin needs, or one is mis-shaped.

    The message names the dataset or attribute."""


# ---------------------------------------------------------------------------- layers
def leaky_relu(x: np.ndarray, slope: float) -> np.ndarray:
    return np.where(x >= 0, x, x * x.dtype.type(slope))


def mod_sigmoid(x: np.ndarray) -> np.ndarray:
    """RAVE's loudness non-linearity ``2 sigmoid(x)^2.3 + 1e-7``."""
    e = np.exp(-np.abs(x))                        # no overflow for large |x|
    s = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return (2.0 * s**2.3 + 1e-7).astype(x.dtype, copy=False)


class CausalConv:
    """A convolution padded on the left only, streamed with its last inputs as state.

    ``weight``: ``(out, in / groups, kernel)``. The state holds the ``(kernel - 1) *
    dilation`` input samples before the block, zeros at the start (the offline model's
    zero padding). A block of ``T`` samples (``T`` a multiple of ``stride``) gives
    ``T / stride`` samples: ``(B, in, T) -> (B, out, T / stride)``.
    """

    def __init__(self, name: str, weight: np.ndarray, bias: Optional[np.ndarray],
                 stride: int = 1, dilation: int = 1, groups: int = 1) -> None:
        self.name = name
        self.out_channels, in_per_group, self.kernel = weight.shape
        self.in_channels = in_per_group * groups
        self.stride, self.dilation, self.groups = stride, dilation, groups
        self.history = (self.kernel - 1) * dilation
        # One matrix per group: (out / groups, in / groups * kernel), im2col order.
        og = self.out_channels // groups
        self.matrices = [np.ascontiguousarray(weight[g * og:(g + 1) * og].reshape(og, -1))
                         for g in range(groups)]
        self.bias = None if bias is None else bias.reshape(1, -1, 1)

    def initial_state(self, batch: int, dtype) -> np.ndarray:
        return np.zeros((batch, self.in_channels, self.history), dtype)

    def __call__(self, x: np.ndarray, state: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        buf = np.concatenate([state, x], -1)
        new_state = buf[..., buf.shape[-1] - self.history:]
        span = self.history + 1
        # (B, in, T_out, kernel) windows, one per output sample.
        win = sliding_window_view(buf, span, axis=-1)[:, :, ::self.stride, ::self.dilation]
        batch, _, t_out, _ = win.shape
        ig = self.in_channels // self.groups
        outs = []
        for g, mat in enumerate(self.matrices):
            cols = win[:, g * ig:(g + 1) * ig].transpose(0, 2, 1, 3).reshape(batch, t_out, -1)
            outs.append(np.matmul(cols, mat.T))          # (B, T_out, out / groups)
        y = np.concatenate(outs, -1).transpose(0, 2, 1)
        if self.bias is not None:
            y = y + self.bias
        return np.ascontiguousarray(y), new_state


class StreamingConvTranspose:
    """A transposed convolution streamed by overlap-add.

    ``weight``: ``(in, out, kernel)``. Each input sample writes ``kernel`` output samples
    ``stride`` apart; the ``kernel - stride`` samples that overlap the next block are the
    state. ``(B, in, T) -> (B, out, T * stride)``: the offline output (whose ``padding``
    crops the edges) delayed by that ``padding``.
    """

    def __init__(self, name: str, weight: np.ndarray, bias: Optional[np.ndarray],
                 stride: int) -> None:
        self.name = name
        self.in_channels, self.out_channels, self.kernel = weight.shape
        if self.kernel < stride:
            raise MinifusionFileError(f"{name}: kernel {self.kernel} < stride {stride}")
        self.stride = stride
        self.tail = self.kernel - stride
        self.matrix = np.ascontiguousarray(weight.reshape(self.in_channels, -1))
        self.bias = None if bias is None else bias.reshape(1, -1, 1)

    def initial_state(self, batch: int, dtype) -> np.ndarray:
        return np.zeros((batch, self.out_channels, self.tail), dtype)

    def __call__(self, x: np.ndarray, state: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        batch, _, t = x.shape
        s, k = self.stride, self.kernel
        taps = np.matmul(x.transpose(0, 2, 1), self.matrix)          # (B, T, out * k)
        taps = taps.reshape(batch, t, self.out_channels, k).transpose(0, 2, 1, 3)
        full = np.zeros((batch, self.out_channels, (t - 1) * s + k), x.dtype)
        for j in range(k):
            full[..., j:j + (t - 1) * s + 1:s] += taps[..., j]
        full[..., :self.tail] += state
        y = full[..., :t * s]
        if self.bias is not None:
            y = y + self.bias
        return np.ascontiguousarray(y), full[..., t * s:].copy()


def flip_odd_bands(x: np.ndarray, first_index: int, parity: int) -> np.ndarray:
    """Negate odd bands at band samples whose absolute index has ``parity``.

    ``first_index`` is the index (since the stream started; only its parity matters) of
    ``x[..., 0]``.
    """
    index = first_index + np.arange(x.shape[-1])
    sign = np.where(index % 2 == parity, -1.0, 1.0).astype(x.dtype)
    out = x.copy()
    out[:, 1::2] *= sign
    return out


# ---------------------------------------------------------------------------- model
class MinifusionModel:
    """BRAVE from a Minifusion ``.h5``, streamed with explicit state.

    Args:
        path: the ``.h5`` written by ``rave-deploy export --target minifusion``.
        dtype: compute precision (``np.float32``, as a plugin computes).

    Use :meth:`initial_state` then :meth:`forward_block` (pure: state in, state out), or
    :class:`MinifusionStream` which keeps the state for you.
    """

    def __init__(self, path: Union[str, Path], dtype=np.float32) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        with h5py.File(self.path, "r") as f:
            self.attrs = {k: _attr(v) for k, v in f.attrs.items()}
            self.weights = {k: np.asarray(f[k][()], dtype=self.dtype)
                            for k in f.keys() if isinstance(f[k], h5py.Dataset)}
        fmt = self.attrs.get("format")
        if fmt != FORMAT:
            raise MinifusionFileError(f"attribute 'format' is {fmt!r}, expected {FORMAT!r}: "
                                      "re-export with rave-deploy export --target minifusion")
        if self.attrs.get("architecture") != ARCHITECTURE:
            raise MinifusionFileError(f"attribute 'architecture' is "
                                      f"{self.attrs.get('architecture')!r}, not {ARCHITECTURE!r}")
        self.sample_rate = int(self._attr("sample_rate"))
        self.n_band = int(self._attr("n_band"))
        self.ratio = int(self._attr("ratio"))
        self.latent_size = int(self._attr("latent_size"))
        self.latency_samples = int(self._attr("latency_samples"))
        self.slope = float(self._attr("leaky_relu_slope"))
        self.eps = float(self._attr("batchnorm_eps"))
        if int(self._attr("n_channels")) != 1:
            raise MinifusionFileError("attribute 'n_channels': the plugin is mono (1)")
        self._build_pqmf()
        self._build_encoder([int(r) for r in np.ravel(self._attr("encoder_ratios"))])
        self._build_decoder([int(r) for r in np.ravel(self._attr("decoder_ratios"))],
                            [int(p) for p in np.ravel(self._attr("upsample_paddings"))],
                            np.asarray(self._attr("residual_dilations")).astype(int))
        for part, strides in (("encoder", [c.stride for c in self.encoder_convs]),
                              ("decoder", [u.stride for u in self.upsamples])):
            ratio = self.n_band * int(np.prod(strides))
            if ratio != self.ratio:
                raise MinifusionFileError(f"attribute 'ratio' is {self.ratio} but the {part}'s "
                                          f"strides and bands give {ratio}")
        if self.latency_samples != self.band_delay * self.n_band:
            raise MinifusionFileError(
                f"attribute 'latency_samples' is {self.latency_samples} but the decoder's "
                f"upsampling delays give {self.band_delay * self.n_band}")

    # ------------------------------------------------------------ loading
    def _attr(self, name: str):
        if name not in self.attrs:
            raise MinifusionFileError(f"missing attribute {name!r}")
        return self.attrs[name]

    def _get(self, key: str, ndim: Optional[int] = None) -> np.ndarray:
        if key not in self.weights:
            raise MinifusionFileError(f"missing dataset {key!r}")
        w = self.weights[key]
        if ndim is not None and w.ndim != ndim:
            raise MinifusionFileError(f"dataset {key!r} has shape {w.shape}, expected {ndim} dims")
        return w

    def _conv(self, prefix: str, **kw) -> CausalConv:
        return CausalConv(prefix, self._get(prefix + ".weight", 3),
                          self.weights.get(prefix + ".bias"), **kw)

    def _build_pqmf(self) -> None:
        m = self.n_band
        analysis = self._get("pqmf.forward_conv.weight", 3)     # (M, 1, K)
        synthesis = self._get("pqmf.inverse_conv.weight", 3)    # (M, M, K')
        if analysis.shape[:2] != (m, 1) or synthesis.shape[:2] != (m, m):
            bad = ("pqmf.forward_conv.weight" if analysis.shape[:2] != (m, 1)
                   else "pqmf.inverse_conv.weight")
            raise MinifusionFileError(f"dataset {bad!r} does not fit n_band = {m}")
        self.analysis = CausalConv("pqmf.forward_conv", analysis, None, stride=m)
        self.synthesis = CausalConv("pqmf.inverse_conv", synthesis, None)

    def _build_encoder(self, ratios: Sequence[int]) -> None:
        """``net``: conv, then per ratio (BatchNorm, LeakyReLU, strided conv), then
        LeakyReLU and the grouped conv to (mean, scale). Each BatchNorm follows a conv
        directly, so it folds into that conv."""
        p = "encoder.encoder.net"
        idx = _indices(self.weights, p)
        convs = [i for i in idx if getattr(self.weights.get(f"{p}.{i}.weight"), "ndim", 0) == 3]
        norms = [i for i in idx if f"{p}.{i}.running_mean" in self.weights]
        if len(convs) != len(ratios) + 2 or len(norms) != len(ratios):
            raise MinifusionFileError(
                f"{p}: {len(convs)} convolutions and {len(norms)} BatchNorms, expected "
                f"{len(ratios) + 2} and {len(ratios)} for encoder_ratios {list(ratios)}")
        strides = [1, *ratios, 1]
        self.encoder_convs: List[CausalConv] = []
        for n, (i, s) in enumerate(zip(convs, strides)):
            w = self._get(f"{p}.{i}.weight", 3)
            b = self.weights.get(f"{p}.{i}.bias")
            groups = 1
            if n == len(convs) - 1:   # (mean, scale) heads: grouped conv
                groups = self.encoder_convs[-1].out_channels // w.shape[1]
            if i + 1 in norms:         # fold BatchNorm(conv(x)) into the conv
                w, b = self._fold_batchnorm(f"{p}.{i + 1}", w, b)
            self.encoder_convs.append(CausalConv(f"{p}.{i}", w, b, stride=s, groups=groups))
        if self.encoder_convs[-1].out_channels != 2 * self.latent_size:
            raise MinifusionFileError(f"dataset '{p}.{convs[-1]}.weight' gives "
                                      f"{self.encoder_convs[-1].out_channels} outputs, expected "
                                      f"2 x latent_size = {2 * self.latent_size}")

    def _fold_batchnorm(self, prefix: str, w: np.ndarray, b: Optional[np.ndarray]):
        gamma, beta = self._get(prefix + ".weight", 1), self._get(prefix + ".bias", 1)
        mean, var = self._get(prefix + ".running_mean", 1), self._get(prefix + ".running_var", 1)
        if gamma.shape[0] != w.shape[0]:
            raise MinifusionFileError(f"dataset '{prefix}.weight' has {gamma.shape[0]} channels, "
                                      f"the conv before it {w.shape[0]}")
        scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + self.eps)
        shift = beta - mean * scale
        b = shift if b is None else b * scale + shift
        return ((w * scale[:, None, None]).astype(self.dtype), b.astype(self.dtype))

    def _build_decoder(self, ratios: Sequence[int], paddings: Sequence[int],
                       dilations: np.ndarray) -> None:
        """``net``: conv, then per ratio an upsampling layer (LeakyReLU, transposed conv, or
        a 3-tap conv for ratio 1) and a residual stack; ``synth``: waveform and loudness
        convs."""
        p = "decoder.net"
        self.decoder_in = self._conv(f"{p}.0")
        if self.decoder_in.in_channels != self.latent_size:
            raise MinifusionFileError(f"dataset '{p}.0.weight' takes {self.decoder_in.in_channels} "
                                      f"channels, latent_size is {self.latent_size}")
        if dilations.ndim != 2:
            raise MinifusionFileError("attribute 'residual_dilations' must be 2-D "
                                      "(layers, convs per layer)")
        self.upsamples: List[object] = []
        self.stacks: List[List[List[List[CausalConv]]]] = []  # stack / branch / layer / conv
        band_delay = 0
        for i, (r, pad) in enumerate(zip(ratios, paddings)):
            up = f"{p}.{1 + 2 * i}.net.1"
            if r > 1:
                self.upsamples.append(StreamingConvTranspose(
                    up, self._get(up + ".weight", 3), self.weights.get(up + ".bias"), r))
                band_delay = band_delay * r + pad   # the offline padding becomes delay
            else:
                self.upsamples.append(self._conv(up))
            stack = f"{p}.{2 + 2 * i}.net.branches"
            branches = []
            for b in _indices(self.weights, stack):
                layers = []
                for j, layer_dilations in enumerate(dilations):
                    convs = [self._conv(f"{stack}.{b}.net.{j}.net.aligned.branches.0.{2 * m + 1}",
                                        dilation=int(d)) for m, d in enumerate(layer_dilations)]
                    layers.append(convs)
                extra = f"{stack}.{b}.net.{len(dilations)}.net.aligned.branches.0.1.weight"
                if extra in self.weights:
                    raise MinifusionFileError(f"dataset {extra!r}: more residual layers than "
                                              "attribute 'residual_dilations' lists")
                branches.append(layers)
            if not branches:
                raise MinifusionFileError(f"missing dataset '{stack}.0.net.0.net.aligned."
                                          "branches.0.1.weight' (residual stack)")
            self.stacks.append(branches)
        self.band_delay = band_delay
        self.wave = self._conv("decoder.synth.branches.0")
        self.loud = self._conv("decoder.synth.branches.1")
        if self.wave.out_channels != self.n_band or self.loud.out_channels != 1:
            raise MinifusionFileError("datasets 'decoder.synth.branches.0/1.weight' must give "
                                      f"{self.n_band} waveform bands and 1 loudness channel")

    # ------------------------------------------------------------ streaming
    def layers(self) -> List[object]:
        """Every stateful layer, in processing order (their names key the state)."""
        out: List[object] = [self.analysis, *self.encoder_convs, self.decoder_in]
        for up, stack in zip(self.upsamples, self.stacks):
            out.append(up)
            out.extend(conv for branch in stack for layer in branch for conv in layer)
        return out + [self.wave, self.loud, self.synthesis]

    def receptive_field(self) -> int:
        """How far back (in audio samples) one output sample looks, over the whole chain.

        Streaming starts from silence while the offline model starts from zero padding
        *after* each transposed convolution, whose streaming output begins ``padding``
        samples early: the two agree once this many samples have been processed.
        """
        total, step = self.analysis.history, self.n_band   # step: audio samples per sample
        for conv in self.encoder_convs:
            total += conv.history * step
            step *= conv.stride
        total += self.decoder_in.history * step
        for up, stack in zip(self.upsamples, self.stacks):
            if isinstance(up, StreamingConvTranspose):
                total += (-(-up.kernel // up.stride) - 1) * step
                step //= up.stride
            else:
                total += up.history * step
            total += max(sum(conv.history for layer in branch for conv in layer)
                         for branch in stack) * step
        total += max(self.wave.history, self.loud.history) * step
        return total + self.synthesis.history * step

    def initial_state(self, batch: int = 1) -> State:
        """Silence: every layer's history zero, band samples counted from 0."""
        state: State = {layer.name: layer.initial_state(batch, self.dtype)
                        for layer in self.layers()}
        state["band_phase"] = 0
        return state

    def forward_block(self, x: np.ndarray, state: State) -> Tuple[np.ndarray, State]:
        """One host block: ``(B, 1, N) -> (B, 1, N)``, ``N`` a multiple of :attr:`ratio`.

        Returns the output block and the next state (``state`` itself is not modified)."""
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim != 3 or x.shape[1] != 1:
            raise ValueError(f"expected audio (batch, 1, samples), got shape {x.shape}")
        if x.shape[-1] % self.ratio:
            raise ValueError(f"block of {x.shape[-1]} samples: must be a multiple of the "
                             f"ratio {self.ratio}")
        new: State = {}

        def run(layer, h):
            y, new[layer.name] = layer(h, state[layer.name])
            return y

        index = int(state["band_phase"])   # parity of band samples seen so far
        # 1. PQMF analysis (sign flip on even band samples: parity 0, no analysis delay).
        h = flip_odd_bands(run(self.analysis, x), index, 0)
        # 2. Encoder -> posterior mean.
        for n, conv in enumerate(self.encoder_convs):
            if n > 0:
                h = leaky_relu(h, self.slope)
            h = run(conv, h)
        h = h[:, :self.latent_size]
        # 3. Generator.
        h = run(self.decoder_in, h)
        for up, stack in zip(self.upsamples, self.stacks):
            h = run(up, leaky_relu(h, self.slope))
            total = 0
            for branch in stack:
                y = h
                for layer in branch:
                    r = y
                    for conv in layer:
                        r = run(conv, leaky_relu(r, self.slope))
                    y = y + r
                total = total + y
            h = total
        bands = np.tanh(run(self.wave, h)) * mod_sigmoid(run(self.loud, h))
        # 4. PQMF synthesis: the decoder's output is `band_delay` band samples late, so
        # the flip follows that phase (acids-rave flips relative to each block instead).
        bands = flip_odd_bands(bands, index, self.band_delay % 2)
        phases = run(self.synthesis, bands) * self.dtype.type(self.n_band)   # (B, M, frames)
        y = phases[:, ::-1].transpose(0, 2, 1).reshape(x.shape[0], 1, -1)
        new["band_phase"] = (index + x.shape[-1] // self.n_band) % 2
        return np.ascontiguousarray(y, dtype=self.dtype), new


class MinifusionStream:
    """Convenience: a :class:`MinifusionModel` with its state kept between calls.

    >>> stream = MinifusionStream("model.minifusion.h5")
    >>> y = np.concatenate([stream(x[..., i:i + 512]) for i in range(0, x.shape[-1], 512)], -1)
    """

    def __init__(self, model: Union[MinifusionModel, str, Path], batch: int = 1) -> None:
        self.model = model if isinstance(model, MinifusionModel) else MinifusionModel(model)
        self.reset(batch)

    def reset(self, batch: int = 1) -> None:
        self.state = self.model.initial_state(batch)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        if block.shape[0] != next(v for v in self.state.values()
                                  if isinstance(v, np.ndarray)).shape[0]:
            self.reset(block.shape[0])   # a new batch size starts from silence
        y, self.state = self.model.forward_block(block, self.state)
        return y


# ---------------------------------------------------------------------------- helpers
def _attr(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.shape == ():
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _indices(weights: Dict[str, np.ndarray], prefix: str) -> List[int]:
    """Sorted integer children ``i`` of ``prefix`` (keys ``prefix.i.*``)."""
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m.group(1)) for k in weights for m in [pat.match(k)] if m})
