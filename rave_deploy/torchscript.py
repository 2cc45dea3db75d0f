"""The TorchScript file that nn~, SuperCollider and the RAVE VST load.

:class:`ScriptedRAVE` wraps the export core (:class:`~rave_deploy.model.DeployModel`) in
``nn_tilde.Module`` and adds what those hosts read:

* methods ``encode``, ``decode``, ``forward`` registered for nn~ (buffers
  ``<method>_params = [in_channels, in_ratio, out_channels, out_ratio]`` and labels);
* the nn~ attribute ``deterministic`` (``get_deterministic`` / ``set_deterministic``):
  posterior mean, zero fill and no noise branch at runtime, without re-exporting;
* top-level ``int`` attributes ``sr``, ``sampling_rate`` and ``full_latent_size`` and a
  ``bool`` ``stereo`` (the RAVE VST and the SuperCollider UGens read them with
  ``toInt()`` / ``toBool()``), ``set_stereo_mode(Tensor)`` and ``encode_amortized``;
* ``reset()``: every streaming state back to silence;
* v3 (AdaIN layers): acids-rave's style-transfer attributes ``learn_target``,
  ``learn_source``, ``reset_target`` and ``reset_source``
  (:mod:`rave_deploy.style_transfer`), applied at the start of the next call.

Streaming states are those of the rave_core layers (one ``state`` buffer per layer),
allocated for batch 1 before scripting, so a host's first call neither allocates nor
reshapes modules. A call with another batch size (``mc.nn~`` voices) starts the layers it
reaches from silence.

Host options: ``channels`` (outputs replicated from independent decodes, or mixed down,
as acids-rave's export does) and ``host_sr`` (an integer multiple of the model's rate:
a streaming low-pass FIR resampler in front of the encoder and behind the decoder, built
from our own streaming layers, whose delay is part of the reported latency).

The file is reproducible byte for byte (:func:`save_torchscript`) and written with plain
ops so that libtorch 2.5 (nn~ 1.6) loads it (``scripts/check_libtorch_compat.py``).
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import linecache
import logging
import math
import struct
import types
import weakref
import zipfile
import zlib
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from scipy.signal import kaiserord

import nn_tilde
from rave_core.models.pqmf import kaiser_filter
from rave_core.models.rave import RAVE
from rave_core.nn.conv import Conv1d, ConvTranspose1d
from rave_core.nn.streaming import configure_delay, set_streaming, streaming_layers

from .model import DeployError, DeployModel
from .style_transfer import style_layers

#: Names a host redirects on (host contract 5): never a top-level child or attribute.
FORBIDDEN_NAMES = ("model", "_rave", "_prior")
#: nn~ attribute type codes (host contract 10).
TYPE_CODES = {bool: 0, int: 1, float: 2, str: 3, torch.Tensor: 4}
#: acids-rave's v3 attributes (nn~ messages such as ``set learn_target 1``), in its order.
STYLE_ATTRIBUTES = ("learn_target", "reset_target", "learn_source", "reset_source")


# --------------------------------------------------------------------------- resampling
def resampling_filter(factor: int, attenuation: float = 100.0,
                      transition: float = 0.2) -> np.ndarray:
    """Low-pass FIR for integer-factor resampling, odd length ``2q + 1``, unit DC gain.

    Cut-off at the model's Nyquist (``pi / factor`` at the host rate), a transition band
    ``transition * pi / factor`` wide, ``attenuation`` dB in the stop band (a Kaiser
    window, :func:`rave_core.models.pqmf.kaiser_filter`).
    """
    n_taps, _ = kaiserord(attenuation, transition / factor)
    n_taps = 2 * (n_taps // 2) + 1
    h = kaiser_filter(math.pi / factor, attenuation, n_taps)
    return h / h.sum()


class StreamingResampler(nn.Module):
    """Host rate <-> model rate by an integer ``factor``, with explicit streaming state.

    ``down``: ``(batch, channels, T) -> (batch, channels, T / factor)``, the FIR as one
    strided :class:`~rave_core.nn.conv.Conv1d` (zero phase offline).
    ``up``: ``(batch, channels, T) -> (batch, channels, T * factor)``, the same FIR
    (gain ``factor``) as a :class:`~rave_core.nn.conv.ConvTranspose1d` (polyphase
    interpolation, zero phase offline).

    Offline (``streaming=False``) both are the reference the streaming file is checked
    against; streaming, each is that output delayed by a fixed number of samples
    (:meth:`configure`).
    """

    def __init__(self, factor: int) -> None:
        super().__init__()
        if factor < 2:
            raise ValueError(f"resampling factor must be >= 2, got {factor}")
        h = torch.from_numpy(resampling_filter(factor)).float()
        q = (h.shape[0] - 1) // 2
        self.factor = factor
        self.half_length = q
        self.downsample = Conv1d(1, 1, 2 * q + 1, stride=factor, padding=(q, q), bias=False)
        self.upsample = ConvTranspose1d(1, 1, 2 * q + factor, stride=factor, padding=q,
                                        bias=False)
        with torch.no_grad():
            self.downsample.weight.copy_(h.reshape(1, 1, -1))
            # Kernel 2q + factor so that T frames give exactly T * factor samples; the
            # filter's centre sits on tap q (= padding): zero phase.
            up = torch.cat([h * factor, torch.zeros(factor - 1)])
            self.upsample.weight.copy_(up.reshape(1, 1, -1))

    def configure(self, decode_delay: int) -> Tuple[int, int]:
        """Set up streaming alignment; returns the delays ``(down, up)``: ``down`` in
        model samples, ``up`` in host samples behind a decoder whose own delay is
        ``decode_delay`` model samples."""
        return (self.downsample.configure_delay(0),
                self.upsample.configure_delay(decode_delay))

    def down(self, x: torch.Tensor) -> torch.Tensor:
        y = self.downsample(x.reshape(x.shape[0] * x.shape[1], 1, x.shape[-1]))
        return y.reshape(x.shape[0], x.shape[1], y.shape[-1])

    def up(self, x: torch.Tensor) -> torch.Tensor:
        y = self.upsample(x.reshape(x.shape[0] * x.shape[1], 1, x.shape[-1]))
        return y.reshape(x.shape[0], x.shape[1], y.shape[-1])


# --------------------------------------------------------------------------- the module
class ScriptedRAVE(nn_tilde.Module):
    """A RAVE model as nn~, NN.ar, the RAVE UGens and the RAVE VST load it.

    Args:
        core: the export core (streaming).
        channels: host output channels (default: the model's). More than the model's:
            extra channels are independent decodes of the same latent (acids-rave's
            export does the same); fewer: channels are mixed down.
        host_sr: host sample rate, an integer multiple of the model's (default: the
            model's own rate).
        stereo: start in the RAVE VST's stereo mode (``decode`` of a batch of 2 returns
            the two decodes as channels of one batch row).

    Shapes (``R = ratio``, ``L = latent_size``, ``C`` model channels, ``C'`` host
    output channels): ``encode``: ``(batch, C, N) -> (batch, L, N / R)``; ``decode``:
    ``(batch, L, T) -> (batch, C', T * R)``; ``forward``: ``(batch, C, N) ->
    (batch, C', N)``.
    """

    def __init__(self, core: DeployModel, channels: Optional[int] = None,
                 host_sr: Optional[int] = None, stereo: bool = False) -> None:
        super().__init__()
        if not core.streaming:
            raise DeployError("ScriptedRAVE needs a streaming DeployModel")
        self.core = core
        model_sr = int(core.sr)
        factor = 1
        if host_sr is not None and int(host_sr) != model_sr:
            host_sr = int(host_sr)
            if host_sr < model_sr or host_sr % model_sr:
                raise DeployError(
                    f"--sr {host_sr} is not an integer multiple of the model's sample rate "
                    f"({model_sr} Hz): pass --sr {2 * model_sr} (or another multiple), or "
                    f"run the host at {model_sr} Hz")
            factor = host_sr // model_sr
        self.resampler: Optional[StreamingResampler] = (
            StreamingResampler(factor) if factor > 1 else None)

        n_channels = int(core.n_channels)
        out_channels = int(channels) if channels else n_channels
        if out_channels < 1:
            raise DeployError(f"--channels must be at least 1, got {channels}")
        # Host-facing facts, as plain ints/bools (hosts call toInt()/toBool() on them).
        self.sr = model_sr * factor
        self.sampling_rate = model_sr * factor
        self.model_sr = model_sr
        self.resample_factor = factor
        self.n_channels = n_channels
        self.out_channels = out_channels
        self.copies = -(-out_channels // n_channels) if out_channels > n_channels else 1
        self.full_latent_size = int(core.full_latent_size)
        self.latent_size = int(core.latent_size)
        self.ratio = int(core.ratio) * factor
        self.stereo = bool(stereo)
        self.deterministic = bool(core.deterministic)
        # Mixing matrix for fewer host channels than model channels (channel j -> j % C').
        mix = torch.zeros(out_channels, n_channels)
        for j in range(n_channels):
            mix[j % out_channels, j] = 1.0
        mix = mix / mix.sum(1, keepdim=True).clamp(min=1.0)
        self.register_buffer("channel_mix", mix)

        # Delays (host samples) of the streaming methods against the offline chain.
        if self.resampler is not None:
            down, up = self.resampler.configure(core.decode_delay)
            # The encoder now sees a signal `down` samples late: re-align its strided
            # layers on the offline frame grid for that input delay.
            frames = configure_delay(core.encoder, core.pqmf.configure_delay(down))
            self.encode_latency_samples = int(frames * core.ratio * factor)
            self.decode_latency_samples = int(up)
            self.resampler_latency_samples = int(
                self.encode_latency_samples + self.decode_latency_samples
                - factor * (core.encode_delay + core.decode_delay))
        else:
            self.encode_latency_samples = int(core.encode_delay)
            self.decode_latency_samples = int(core.decode_delay)
            self.resampler_latency_samples = 0
        self.latency_samples = self.encode_latency_samples + self.decode_latency_samples

        audio_in = [f"(signal) Channel {i + 1}" for i in range(n_channels)]
        audio_out = [f"(signal) Channel {i + 1}" for i in range(out_channels)]
        latent = [f"(signal) Latent dimension {i + 1}" for i in range(self.latent_size)]
        with _quiet_nn_tilde():
            self.register_method("encode", n_channels, 1, self.latent_size, self.ratio,
                                 input_labels=audio_in, output_labels=latent,
                                 test_method=False)
            self.register_method("decode", self.latent_size, self.ratio, out_channels, 1,
                                 input_labels=latent, output_labels=audio_out,
                                 test_method=False)
            self.register_method("forward", n_channels, 1, out_channels, 1,
                                 input_labels=audio_in, output_labels=audio_out,
                                 test_method=False)
        self._register_nn_attribute("deterministic", (self.deterministic, ))
        self._add_style_attributes()

        self.prepare_streaming()

    def _add_style_attributes(self) -> None:
        """acids-rave's v3 attributes, for a core with style-transfer layers: the flags
        (top-level bools), their nn~ getters and setters, and ``_update_style``, which
        hands the flags to every layer at the start of a call (generated: TorchScript
        cannot walk submodules generically)."""
        layers = [name for name, _ in style_layers(self.core)]
        if not layers:
            return
        lines = ["def _update_style(self) -> None:"]
        for i, name in enumerate(layers):
            lines.append(f"    m{i} = {_getattr_chain('self.core', name)}")
            lines.append(f"    m{i}.learn_target = self.learn_target")
            lines.append(f"    m{i}.learn_source = self.learn_source")
            lines.append(f"    if self.reset_target:\n        m{i}.reset_target()")
            lines.append(f"    if self.reset_source:\n        m{i}.reset_source()")
        lines += ["    self.reset_target = False", "    self.reset_source = False",
                  "    return None"]
        self._update_style = types.MethodType(_compile_method("\n".join(lines) + "\n"), self)
        for flag in STYLE_ATTRIBUTES:
            setattr(self, flag, False)
            self._register_nn_attribute(flag, (False, ))
            getter = (f"def get_{flag}(self) -> List[bool]:\n"
                      f"    return [self.{flag}]\n")
            setter = (f"def set_{flag}(self, {flag}: bool) -> int:\n"
                      f"    self.{flag} = {flag}\n"
                      f"    return 0\n")
            for source in (getter, setter):
                method = _compile_method(source)
                setattr(self, method.__name__, types.MethodType(method, self))

    def prepare_streaming(self) -> None:
        """Allocate every streaming state (zeros) and build ``reset()``.

        States exist before scripting (no lazy state), sized for one host row: the PQMF
        and the resampler see one row per audio channel, ``decode`` one per decode. Call
        it again after replacing a submodule.
        """
        set_streaming(self, True, 1)
        batches = self._rows_per_host_row()
        for name, layer in streaming_layers(self):
            layer.reset_state(batches[name])
        self.reset = types.MethodType(_compile_reset(self, batches), self)

    def _rows_per_host_row(self) -> Dict[str, int]:
        """Batch each streaming layer sees for a host batch of 1 (one call of each method
        on silence; the RNG state is restored, the states are reset afterwards)."""
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            self.encode(torch.zeros(1, self.n_channels, self.ratio))
            self.decode(torch.zeros(1, self.latent_size, 1))
        return {name: int(layer.state.shape[0]) for name, layer in streaming_layers(self)}

    def _register_nn_attribute(self, name: str, defaults: Tuple) -> None:
        """nn~ attribute registration (nn~ 1.6 layout: int64 type codes, getters returning
        a list). The value itself stays a plain top-level attribute of ``self``."""
        if name in FORBIDDEN_NAMES:
            raise ValueError(f"attribute name {name!r} is reserved by hosts")
        codes = [TYPE_CODES[type(v)] for v in defaults]
        self.register_buffer(f"{name}_params", torch.tensor(codes, dtype=torch.long))
        self._attributes.append(name)

    # --------------------------------------------------------------- nn~ attributes
    @torch.jit.export
    def get_deterministic(self) -> List[bool]:
        return [self.deterministic]

    @torch.jit.export
    def set_deterministic(self, deterministic: bool) -> int:
        """On: posterior mean, zeros for the cut latent dimensions, no noise branch."""
        self.deterministic = deterministic
        self.core.deterministic = deterministic
        self.core.decoder.noise_enabled = not deterministic
        return 0

    # --------------------------------------------------------------- RAVE VST
    @torch.jit.export
    def set_stereo_mode(self, stereo: torch.Tensor) -> int:
        """RAVE VST: ``decode`` of a batch of 2 returns one row with both decodes as
        channels (``(2, L, T) -> (1, 2 C', T R)``)."""
        self.stereo = bool(stereo.reshape(-1)[0])
        return 0

    @torch.jit.export
    def encode_amortized(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mean, std)`` in the exported latent space, each ``(batch, L, N / R)``.

        ``mean`` is what ``encode`` returns when deterministic; ``std`` is the posterior
        std rotated by the PCA (zeros when deterministic); another model's: its latent
        (codes, angles) and zeros. Shares ``encode``'s state.
        """
        x = self._host_input(x)
        z = self.core.encoder(self.core._analysis(x))
        if not self.core.variational:
            latent = self.core.latent_of(z)
            return latent, torch.zeros_like(latent)
        mean, scale = z.chunk(2, 1)
        std = nn.functional.softplus(scale) + 1e-4
        mean = self.core.pca_coordinates(mean)
        # independent axes: the variances rotate by the squared PCA weights
        std = torch.sqrt(torch.matmul(self.core.latent_pca * self.core.latent_pca, std * std))
        mean = mean[:, :self.latent_size].contiguous()
        std = std[:, :self.latent_size].contiguous()
        if self.deterministic:
            std = torch.zeros_like(std)
        return mean, std

    # --------------------------------------------------------------- methods
    def _host_input(self, x: torch.Tensor) -> torch.Tensor:
        # nn~ passes a non-contiguous view (host contract 25): copy it once, here.
        x = x.contiguous()
        if self.stereo and self.n_channels == 1 and x.shape[1] == 2:
            x = x.mean(1, keepdim=True)
        if self.resampler is not None:
            x = self.resampler.down(x)
        return x

    def _update_style(self) -> None:
        """Hand the style-transfer flags to the layers (replaced per instance for v3;
        nothing otherwise, which freezing removes)."""
        return None

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._update_style()
        return self._encode(x)

    @torch.jit.export
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._update_style()
        return self._decode(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A frozen file's forward may become decode(encode(x)) (see
        # `_forward_through_encode_and_decode`): keep it that.
        self._update_style()
        return self._decode(self._encode(x))

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.core.encode(self._host_input(x)).contiguous()

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        fold = self.stereo and z.shape[0] == 2
        z = z.contiguous()
        if self.copies > 1:
            z = z.repeat(self.copies, 1, 1)
        y = self.core.decode(z)
        if self.resampler is not None:
            y = self.resampler.up(y)
        if self.copies > 1:
            y = torch.cat(y.chunk(self.copies, 0), 1)[:, :self.out_channels]
        elif self.out_channels < self.n_channels:
            y = nn.functional.conv1d(y, self.channel_mix.unsqueeze(-1))
        if fold:
            y = y.reshape(1, -1, y.shape[-1])
        return y.contiguous()


@contextlib.contextmanager
def _quiet_nn_tilde() -> Iterator[None]:
    # nn_tilde logs a warning per method registered without its own test call; we test
    # every method ourselves (`rave-deploy check`), so that warning is noise.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


# --------------------------------------------------------------------------- reset()
def _getattr_chain(root: str, path: str) -> str:
    """TorchScript source reaching submodule ``path`` of ``root`` (Sequential children
    included)."""
    expr = root
    for part in path.split("."):
        expr = f'getattr({expr}, "{part}")'
    return expr


def _compile_method(source: str):
    """Compile the generated method ``source`` (one ``def``) so that TorchScript can
    script it: its text is registered in :mod:`linecache` under a name derived from the
    text, where TorchScript reads the source (deterministic debug info)."""
    name = source.split("(", 1)[0].split()[-1]
    filename = (f"<rave_deploy.torchscript {name} "
                f"{hashlib.sha1(source.encode()).hexdigest()[:12]}>")
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"torch": torch, "List": List, "__name__": __name__}
    exec(compile(source, filename, "exec"), namespace)
    return torch.jit.export(namespace[name])


def _compile_reset(module: nn.Module, batches: Optional[Dict[str, int]] = None):
    """A scriptable ``reset()`` for ``module``: every streaming state back to zeros, batch 1
    (or ``batches[layer name]``). Style-transfer statistics stay (they are not streaming
    state: ``reset_target`` / ``reset_source`` forget them)."""
    lines = ["def reset(self) -> None:",
             '    """Every streaming state back to silence."""']
    for i, (name, _) in enumerate(streaming_layers(module)):
        lines.append(f"    m{i} = {_getattr_chain('self', name)}")
        batch = (batches or {}).get(name, 1)
        repeat = f".repeat({batch}, 1, 1)" if batch != 1 else ""
        lines.append(f"    m{i}.state = torch.zeros_like(m{i}.state[:1]){repeat}")
    lines.append("    return None")
    return _compile_method("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- scripting
class _InsertionOrderedSet(dict):
    """The few ``set`` operations torch.jit._recursive uses, iterated in insertion order."""

    def __init__(self, items=()) -> None:
        super().__init__((item, None) for item in items)

    def add(self, item) -> None:
        self[item] = None


@contextlib.contextmanager
def _deterministic_scripting() -> Iterator[None]:
    """Make ``torch.jit.script`` output independent of process history and hash seed.

    * Type names get a ``___torch_mangle_N`` suffix from a counter over everything ever
      scripted in the process: we script into a fresh compilation unit with empty type
      caches, then restore torch's (the scripted module keeps its own unit alive).
    * torch iterates a ``set`` of module constant names (``__constants__``, ``Final``)
      when it builds a module type, so their order in the saved code follows Python's
      per-process string hashing: that module gets an insertion-ordered set meanwhile.
    * The file's debug records name the source file of every compiled function: torch
      writes its absolute path (``/home/<user>/...``, the virtualenv's), so a file
      depended on where rave-deploy was installed and told whoever it is shared with
      the exporter's user name. Each source is named by its module instead
      (``rave_core/nn/conv.py``, ``torch/nn/functional.py``; :func:`_portable_sources`).
    """
    import torch.jit._recursive as recursive
    import torch.jit._state as state

    saved = {
        (state, "_python_cu"): state._python_cu,
        (recursive, "_python_cu"): recursive._python_cu,
        (recursive, "concrete_type_store"): recursive.concrete_type_store,
        (state, "_script_classes"): state._script_classes,
        (state, "_name_to_pyclass"): state._name_to_pyclass,
        (state, "_jit_caching_layer"): state._jit_caching_layer,
        (state, "_jit_function_overload_caching"): state._jit_function_overload_caching,
    }
    had_set = "set" in vars(recursive)
    previous_set = vars(recursive).get("set")
    fresh_cu = torch._C.CompilationUnit()
    state._python_cu = recursive._python_cu = fresh_cu
    recursive.concrete_type_store = recursive.ConcreteTypeStore()
    state._script_classes, state._name_to_pyclass = {}, {}
    state._jit_caching_layer = weakref.WeakKeyDictionary()
    state._jit_function_overload_caching = weakref.WeakKeyDictionary()
    recursive.set = _InsertionOrderedSet
    try:
        with _portable_sources():
            yield
    finally:
        for (mod, name), value in saved.items():
            setattr(mod, name, value)
        if had_set:
            recursive.set = previous_set
        else:
            del recursive.set


@contextlib.contextmanager
def _portable_sources() -> Iterator[None]:
    """Meanwhile, torch's compiler reads each function's source file under a name made
    from its module (``rave_core.nn.conv`` -> ``rave_core/nn/conv.py``), not its absolute
    path. torch imports the reader by name into several modules: each is patched."""
    import importlib

    import torch._sources as sources

    original = sources.get_source_lines_and_file

    def portable(obj, error_msg=None):
        lines, first_line, filename = original(obj, error_msg)
        module = inspect.getmodule(obj)
        if filename and module is not None and getattr(module, "__name__", None):
            stem = module.__name__.replace(".", "/")
            filename = stem + ("/__init__.py" if Path(filename).name == "__init__.py"
                               else ".py")
        return lines, first_line, filename

    users = [sources] + [importlib.import_module(m) for m in (
        "torch.jit.frontend", "torch._jit_internal", "torch.jit.annotations")]
    users = [m for m in users if getattr(m, "get_source_lines_and_file", None) is original]
    for m in users:
        m.get_source_lines_and_file = portable
    try:
        yield
    finally:
        for m in users:
            m.get_source_lines_and_file = original


# Top-level buffers that hold what freezing made graph constants (see :func:`script`).
FROZEN_TENSOR_PREFIX = "_frozen_"


def script(module: ScriptedRAVE) -> torch.jit.ScriptModule:
    """``torch.jit.script`` with deterministic output (see :func:`_deterministic_scripting`),
    then frozen, with the frozen tensors kept as top-level buffers.

    Freezing inlines the weights and every attribute no method changes as constants and
    folds the branches they decide (streaming flags, kernel sizes, paddings), which
    removes thousands of interpreter instructions per host call. What hosts read stays
    an attribute: every public method (the private ones are inlined, and ``forward``
    calls ``encode`` and ``decode`` but in v3), every top-level attribute and buffer (``sr``,
    ``*_params``, ...), and the streaming states (methods change them).

    Graph constants do not move with ``Module.to``: a host that moves the model (nn~'s
    ``gpu`` message calls ``model.to(cuda)``) would then feed CUDA blocks to CPU weights,
    and nn~ prints the error and outputs silence. So every tensor constant becomes a
    top-level buffer (``_frozen_<i>``), read by one ``GetAttr`` each per method call: the
    folded graph stays as it is, and ``.to()`` moves it all.
    """
    module.eval()
    module.core.forget_packed_weights()  # opaque oneDNN tensors: the host packs its own
    with _deterministic_scripting():
        n_tensors = len(_distinct_tensor_constants(_freeze(module)))
    # Freezing has not always folded the same set of tensors (an op on a weight left
    # unfolded, rarely: `_freeze` now propagates constants once more; most exports of v3
    # before its AdaIN layers were replaced). So freeze again with as many placeholders
    # as the last freeze gave, until two agree.
    for _ in range(FREEZE_ATTEMPTS):
        names = [f"{FROZEN_TENSOR_PREFIX}{i}" for i in range(n_tensors)]
        frozen = _freeze_with_placeholders(module, names)
        n_tensors = len(_distinct_tensor_constants(frozen))
        if n_tensors == len(names):
            _tensor_constants_to_buffers(frozen, names)
            return frozen
    raise DeployError(f"freezing folded a different number of weight tensors in each of "
                      f"{FREEZE_ATTEMPTS} attempts: export again, and report it if it persists")


#: Freezes :func:`script` tries before it gives up on a stable set of folded tensors.
FREEZE_ATTEMPTS = 4


def _freeze_with_placeholders(module: ScriptedRAVE, names: List[str]) -> torch.jit.ScriptModule:
    """:func:`_freeze` with an empty top-level buffer per name, so that the frozen type
    declares them as buffers (``Module.to`` moves buffers, not plain attributes)."""
    for name in names:
        module.register_buffer(name, torch.zeros(0))
    try:
        with _deterministic_scripting():
            return _freeze(module)
    finally:
        for name in names:
            del module._buffers[name]


def _freeze(module: ScriptedRAVE) -> torch.jit.ScriptModule:
    scripted = torch.jit.script(module)
    # Hosts call public methods only; the private ones are inlined into them, and a kept
    # copy would be more code for every host to compile at load.
    keep = [n for n in scripted._c._method_names() if not n.startswith("_")]
    keep += [n for n in vars(module) if not n.startswith("_") and n != "training"]
    keep += list(module._buffers)
    frozen = torch.jit.freeze(scripted, preserved_attrs=keep)
    # Freezing folds the ops on weights (reshapes, transposes) in most freezes, not all:
    # one reshape of a weight stayed in about 1 of 40 exports of a small BRAVE, depending
    # on the process's history. Another constant propagation folds what it left, so
    # every export of a checkpoint is the same file.
    for name in frozen._c._method_names():
        torch._C._jit_pass_constant_propagation(frozen._c._get_method(name).graph)
    # Not with style layers (v3): their code, compiled inside forward's compilation when a
    # host loads the file, made torch.jit.load 5x slower (3.3 s instead of 0.64 s).
    if not style_layers(module.core):
        _forward_through_encode_and_decode(frozen)
    return frozen


def _forward_through_encode_and_decode(frozen: torch.jit.ScriptModule) -> None:
    """Make the frozen ``forward`` call ``encode`` then ``decode`` instead of holding a
    third inlined copy of the model.

    Freezing inlines every call, so ``forward`` repeated all of ``encode``'s and
    ``decode``'s code, which every host compiles when it loads the file (BRAVE: 115
    instead of 230 KB of code; ``torch.jit.load`` about 0.35 s instead of 0.8). ``forward`` is
    ``decode(encode(x))`` by definition (:meth:`ScriptedRAVE.forward`).
    """
    graph = frozen._c._get_method("forward").graph
    me, x = list(graph.inputs())
    ret = graph.return_node()
    z = graph.create("prim::CallMethod", [me, x], 1)
    z.s_("name", "encode")
    z.output().setType(torch._C.TensorType.get())
    y = graph.create("prim::CallMethod", [me, z.output()], 1)
    y.s_("name", "decode")
    y.output().setType(torch._C.TensorType.get())
    z.insertBefore(ret)
    y.insertAfter(z)
    ret.replaceInput(0, y.output())
    for node in reversed(list(graph.nodes())):
        if node is not z and node is not y:
            node.destroy()  # later nodes first, so every use is gone before its value


def _tensor_key(t: torch.Tensor) -> Tuple:
    """What makes two tensor constants one buffer: the same values in the same layout
    (``dtype``, shape, strides, bytes). Keyed by content, not by memory or by where the
    constant sits in a graph: freezing places a constant it folded late elsewhere in the
    graph (about 1 export in 100), and names given in graph order then shifted, so two
    exports of one checkpoint differed in bytes. Constants are never written, so equal
    ones (the bag indices of layers of one width, zero biases) can share a buffer."""
    values = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return (str(t.dtype), tuple(t.shape), t.stride(), hashlib.sha256(values).hexdigest())


def _tensor_constant_nodes(frozen: torch.jit.ScriptModule):
    """``(method graph, constant nodes)`` per method, the nodes of every tensor constant
    in graph order."""
    for method in frozen._c._method_names():
        graph = frozen._c._get_method(method).graph
        yield graph, [node for node in graph.findAllNodes("prim::Constant", True)
                      if node.output().type().isSubtypeOf(torch._C.TensorType.get())]


def _distinct_tensor_constants(frozen: torch.jit.ScriptModule) -> Dict[Tuple, torch.Tensor]:
    """One tensor per :func:`_tensor_key`, in the keys' order (not the graphs')."""
    distinct = {_tensor_key(node.t("value")): node.t("value")
                for _, nodes in _tensor_constant_nodes(frozen) for node in nodes}
    return dict(sorted(distinct.items()))


def _tensor_constants_to_buffers(frozen: torch.jit.ScriptModule, names: List[str]) -> None:
    """Replace each tensor constant of ``frozen``'s methods with a ``GetAttr`` of the
    top-level buffer in ``names`` that now holds it: one read per buffer and method, at
    the method's start (it dominates every use, in any block), in the buffers' order."""
    distinct = _distinct_tensor_constants(frozen)
    buffer_of = {}
    for key, name in zip(distinct, names):
        frozen._c.setattr(name, distinct[key])
        buffer_of[key] = name
    for graph, nodes in list(_tensor_constant_nodes(frozen)):
        uses: Dict[str, list] = {}
        for node in nodes:
            uses.setdefault(buffer_of[_tensor_key(node.t("value"))], []).append(node)
        # each read goes first, after the parameters: the last name first, so that the
        # reads end in name order
        for name in sorted(uses, key=_buffer_index, reverse=True):
            read = graph.create("prim::GetAttr", [next(graph.inputs())], 1)
            read.s_("name", name)
            read.output().setType(torch._C.TensorType.get())
            read.insertAfter(graph.param_node())
            for node in uses[name]:
                node.output().replaceAllUsesWith(read.output())
                node.destroy()


def _buffer_index(name: str) -> int:
    return int(name[len(FROZEN_TENSOR_PREFIX):])


# --------------------------------------------------------------------------- saving
SERIALIZATION_ID = ".data/serialization_id"


def torchscript_bytes(scripted: torch.jit.ScriptModule) -> bytes:
    """The file ``torch.jit.save`` writes, made reproducible.

    Saved through memory (the archive's root folder is named after the file, and our
    files are first written under temporary names), and with the archive's
    ``serialization_id`` record replaced by a hash of the other records.
    """
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    return _stable_serialization_id(buf.getvalue())


def _stable_serialization_id(data: bytes) -> bytes:
    """Replace the ``serialization_id`` record by a digest of the archive's other records.

    The record is a 40-digit decimal string stored uncompressed; we overwrite it in place
    (same length) and fix its CRC-32 in the data descriptor and the central directory.
    """
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        target = next((i for i in infos if i.filename.endswith(SERIALIZATION_ID)), None)
        if target is None or target.compress_type != zipfile.ZIP_STORED:
            return data
        digest = hashlib.sha256()
        for info in infos:
            if info is not target:
                digest.update(info.filename.encode())
                digest.update(struct.pack("<I", info.CRC))
        old = zf.read(target)
        central_offset = zf.start_dir
    new = str(int(digest.hexdigest(), 16))[:len(old)].zfill(len(old)).encode()
    crc = zlib.crc32(new)
    out = bytearray(data)
    off = target.header_offset
    name_len, extra_len = struct.unpack("<HH", out[off + 26:off + 30])
    start = off + 30 + name_len + extra_len
    out[start:start + len(old)] = new
    flags = struct.unpack("<H", out[off + 6:off + 8])[0]
    if flags & 0x08:  # data descriptor after the data (optional signature first)
        pos = start + len(old)
        if struct.unpack("<I", out[pos:pos + 4])[0] == 0x08074B50:
            pos += 4
        out[pos:pos + 4] = struct.pack("<I", crc)
    else:
        out[off + 14:off + 18] = struct.pack("<I", crc)
    # Central directory entry of the record.
    pos = central_offset
    while struct.unpack("<I", out[pos:pos + 4])[0] == 0x02014B50:
        n, m, k = struct.unpack("<HHH", out[pos + 28:pos + 34])
        local = struct.unpack("<I", out[pos + 42:pos + 46])[0]
        name = bytes(out[pos + 46:pos + 46 + n]).decode()
        if name == target.filename and (local == target.header_offset or local == 0xFFFFFFFF):
            out[pos + 16:pos + 20] = struct.pack("<I", crc)
            break
        pos += 46 + n + m + k
    result = bytes(out)
    with zipfile.ZipFile(io.BytesIO(result)) as zf:  # the archive must stay valid
        bad = zf.testzip()
        if bad is not None:
            raise RuntimeError(f"internal error: rewriting {SERIALIZATION_ID} broke {bad}")
    return result


def file_format_version(path) -> int:
    """The ``version`` record of a TorchScript archive (the oldest runtime that loads it
    must support this file format version)."""
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.split("/", 1)[-1] == "version")
        return int(zf.read(name).decode().strip())


# --------------------------------------------------------------------------- export
def build_scripted_rave(model: RAVE, fidelity: float = 0.95, deterministic: bool = False,
                        channels: Optional[int] = None, host_sr: Optional[int] = None,
                        stereo: bool = False, tuned_block: Optional[int] = None,
                        cpu_kernels: str = "portable") -> ScriptedRAVE:
    """The eager :class:`ScriptedRAVE` of ``model``, ready to script.

    ``tuned_block``: the host block (host samples) the weights' memory layout is tuned
    for (default: :data:`~rave_deploy.model.DEFAULT_TUNED_BLOCK` at the model's rate).
    Speed only: every block works. ``cpu_kernels``: one of
    :data:`~rave_deploy.model.CPU_KERNELS` (``onednn``: the file needs a libtorch with
    oneDNN).
    """
    factor = max(int(host_sr) // int(model.sr), 1) if host_sr else 1
    # short-block matrix products: faster in TorchScript (see set_matmul_streaming)
    core = DeployModel(model, fidelity=fidelity, deterministic=deterministic, streaming=True,
                       matmul_streaming=True,
                       tuned_block=int(tuned_block) // factor if tuned_block else None,
                       cpu_kernels=cpu_kernels, learnable_style=True)
    return ScriptedRAVE(core, channels=channels, host_sr=host_sr, stereo=stereo)


def export_torchscript(model: RAVE, path: Path, fidelity: float = 0.95,
                       deterministic: bool = False, channels: Optional[int] = None,
                       host_sr: Optional[int] = None, stereo: bool = False,
                       tuned_block: Optional[int] = None, cpu_kernels: str = "portable"
                       ) -> Tuple[ScriptedRAVE, Dict[str, object]]:
    """Script ``model`` and write it at ``path``; returns the eager module and the sidecar
    fields describing the file."""
    module = build_scripted_rave(model, fidelity, deterministic, channels, host_sr, stereo,
                                 tuned_block, cpu_kernels)
    scripted = script(module)
    data = torchscript_bytes(scripted)
    Path(path).write_bytes(data)
    return module, describe(module, data)


def describe(module: ScriptedRAVE, data: Optional[bytes] = None) -> Dict[str, object]:
    """Sidecar fields of a scripted file (rates and latencies in host samples)."""
    from .sidecar import host_block_sizes

    info: Dict[str, object] = {
        "sample_rate": module.sr,
        "model_sample_rate": module.model_sr,
        "resample_factor": module.resample_factor,
        "ratio": module.ratio,
        "block_multiple": module.ratio,
        "block_sizes": host_block_sizes(module.ratio),
        # the host block the weights' memory layout is fastest at (any block works)
        "tuned_block_size": int(module.core.tuned_block) * module.resample_factor,
        # "onednn": larger products through oneDNN on weights packed at the first call;
        # the file then loads only in a libtorch built with oneDNN
        "cpu_kernels": module.core.cpu_kernels,
        "packed_layers": int(module.core.packed_layers),
        "input_channels": module.n_channels,
        "output_channels": module.out_channels,
        "latency_samples": module.latency_samples,
        "encode_latency_samples": module.encode_latency_samples,
        "decode_latency_samples": module.decode_latency_samples,
        "resampler_latency_samples": module.resampler_latency_samples,
        "stereo": module.stereo,
        "methods": {m: [int(v) for v in getattr(module, f"{m}_params")]
                    for m in module._methods},
        "attributes": [a for a in module._attributes if a != "none"],
    }
    if data is not None:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            name = next(n for n in zf.namelist() if n.split("/", 1)[-1] == "version")
            info["torchscript_file_format_version"] = int(zf.read(name).decode().strip())
        info["sha256"] = hashlib.sha256(data).hexdigest()
    return info


__all__ = ["FORBIDDEN_NAMES", "ScriptedRAVE", "StreamingResampler", "build_scripted_rave",
           "describe", "export_torchscript", "file_format_version", "resampling_filter",
           "script", "torchscript_bytes"]
