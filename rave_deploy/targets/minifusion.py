"""Minifusion: BRAVE's low-latency plugin, which reads the model's weights from HDF5.

The plugin (https://minifusion.live, closed source) runs BRAVE's causal architecture in
C++ from an ``.h5`` that BRAVE's ``scripts/export_brave_plugin.py`` writes: one dataset
per state-dict tensor after weight-norm removal, named by its key, without the training
modules (``discriminator*``, ``audio*``, ``multiband*``) nor cache/padding buffers
(host contracts 20-21). We write the same datasets, all float32, plus root attributes
with what the weights' shapes cannot tell (sample rate, strides, dilations, latency); the
plugin reads datasets by name, so the attributes are for other readers.

``check`` verifies the file against the model's state dict, then streams it with
:mod:`rave_deploy.minifusion_numpy` (an independent NumPy implementation that reads the
``.h5`` only, as the plugin does) and compares the result with our eager model through
the posterior mean, delayed by the model's latency.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import h5py
import numpy as np
import torch
import torch.nn as nn

import rave_core
from rave_core.models.encoders import Encoder, VariationalEncoder
from rave_core.models.generators import (Generator, ResidualBlock, ResidualLayer,
                                         ResidualStack, UpsampleLayer)
from rave_core.models.layers import Branches, Residual
from rave_core.models.pqmf import CachedPQMF
from rave_core.models.rave import RAVE
from rave_core.nn.conv import Conv1d, ConvTranspose1d, Delay
from rave_core.nn.streaming import set_streaming
from rave_core.nn.weight_norm import copy_model, remove_weight_norm

from ..check.runner import Runner
from ..minifusion_numpy import (ARCHITECTURE, FORMAT, MinifusionFileError, MinifusionModel,
                                MinifusionStream)
from ..model import DeployModel
from .base import (CheckOptions, ExportOptions, Target, TargetUnsupported, register,
                   usable_block_sizes)

if TYPE_CHECKING:
    from ..check.result import CheckReport

DROP_PREFIXES = ("discriminator", "audio", "multiband")
DROP_SUFFIXES = ("pad", "cache")
# float32 NumPy vs float64 eager, of the peak: float32 rounding through ~60 layers (a
# misread layer gives errors of order 1).
FLOAT32_PRECISION = 1e-3
# float64 NumPy vs float64 eager (outputs compared as float32): rounding only.
FLOAT64_PARITY = 1e-6
# HDF5 1.8's file format (superblock 0): any HDF5 library a plugin links can read it, as
# it reads BRAVE's own exports (h5py defaults). No timestamps: byte-reproducible.
LIBVER = ("earliest", "v108")

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.Identity, Branches, Residual, ResidualLayer,
               ResidualBlock, ResidualStack, UpsampleLayer, Encoder, Generator,
               VariationalEncoder, Delay)


def keeps_key(key: str) -> bool:
    """Whether a state-dict key belongs in the plugin's file (contract 20)."""
    return not key.startswith(DROP_PREFIXES) and not key.endswith(DROP_SUFFIXES)


def plugin_state_dict(model: RAVE) -> Dict[str, np.ndarray]:
    """The plugin's datasets: the state dict after weight-norm removal, filtered, float32,
    in state-dict order (integer buffers such as ``num_batches_tracked`` as float32)."""
    folded = remove_weight_norm(copy_model(model))
    return {k: v.detach().cpu().numpy().astype(np.float32)
            for k, v in folded.state_dict().items() if keeps_key(k)}


# ------------------------------------------------------------------ architecture
def inspect_architecture(model: RAVE) -> Tuple[List[str], Dict[str, object]]:
    """Compare ``model`` with BRAVE's causal architecture.

    Returns the properties that differ (empty if the plugin can run the model) and the
    hyper-parameters written as root attributes of the ``.h5``.
    """
    problems: List[str] = []
    attrs: Dict[str, object] = {}
    if int(model.n_channels) != 1:
        problems.append(f"{model.n_channels} audio channels: the plugin is mono "
                        "(train with n_channels = 1)")
    pqmf = model.pqmf
    if not isinstance(pqmf, CachedPQMF) or pqmf.n_band < 2:
        problems.append("no multi-band PQMF: BRAVE splits audio into 16 PQMF bands")

    encoder = model.encoder
    if not isinstance(encoder, VariationalEncoder):
        problems.append(f"encoder is {type(encoder).__name__}, not a VariationalEncoder: the "
                        "plugin decodes BRAVE's posterior mean")
    elif type(encoder.encoder) is not Encoder:
        problems.append(f"encoder is {type(encoder.encoder).__name__}, not the v1 Encoder "
                        "BRAVE uses (rave.blocks.Encoder)")
    else:
        attrs.update(_encoder_layout(encoder.encoder.net, problems))

    decoder = model.decoder
    if type(decoder) is not Generator:
        problems.append(f"decoder is {type(decoder).__name__}, not the v1 Generator BRAVE uses "
                        "(rave.blocks.Generator)")
    else:
        if decoder.use_noise:
            problems.append("noise branch present (rave.blocks.Generator.use_noise = True): "
                            "the plugin synthesises no noise; BRAVE sets it False")
        if decoder.loud_stride != 1:
            problems.append(f"loud_stride = {decoder.loud_stride}: BRAVE uses 1")
        if int(decoder.latent_size) != int(model.latent_size):
            problems.append(f"decoder takes {decoder.latent_size} channels for a latent of "
                            f"{model.latent_size} (noise augmentation): BRAVE has none")
        attrs.update(_generator_layout(decoder, problems))

    # Causal padding everywhere (cached_conv.convs.get_padding.mode = 'causal').
    not_causal = [(n, m.padding_lr) for n, m in model.named_modules()
                  if isinstance(m, Conv1d) and n.startswith(("pqmf", "encoder", "decoder"))
                  and m.padding_lr != ((m.kernel_size[0] - 1) * m.dilation[0], 0)]
    if not_causal:
        name, pad = not_causal[0]
        problems.append(f"not causal: {name} pads {pad} (centered padding, {len(not_causal)} "
                        "layers); BRAVE trains with cached_conv.convs.get_padding.mode = 'causal'")
    if not problems:   # same classes as BRAVE: any layer a gin binding swapped in?
        foreign: Dict[str, str] = {}
        for name, m in model.named_modules():
            if not name.startswith(("encoder", "decoder")) or isinstance(m, _CONTAINERS):
                continue
            if isinstance(m, nn.LeakyReLU):
                if abs(m.negative_slope - 0.2) > 1e-12:
                    foreign.setdefault(f"LeakyReLU({m.negative_slope})", name)
            elif not isinstance(m, (Conv1d, ConvTranspose1d, nn.BatchNorm1d)):
                foreign.setdefault(type(m).__name__, name)
        problems += [f"{kind} layers (e.g. {name}) are not in BRAVE's architecture, which "
                     "uses LeakyReLU(0.2)" for kind, name in foreign.items()]
    if problems:
        return problems, attrs

    delays = model.streaming_delays()
    if delays.encode != 0:
        problems.append(f"not causal: the encoder's streaming delay is {delays.encode} samples "
                        "(BRAVE's is 0)")
    attrs.update({
        "format": FORMAT,
        "architecture": ARCHITECTURE,
        "sample_rate": int(model.sr),
        "n_channels": 1,
        "n_band": int(pqmf.n_band),
        "pqmf_attenuation": float(pqmf.attenuation),
        "ratio": int(model.ratio),
        "latent_size": int(model.latent_size),
        "latent": "posterior mean: the first latent_size channels of the encoder's output",
        "latency_samples": int(delays.forward),
        "latency_ms": 1000.0 * delays.forward / model.sr,
        "encode_latency_samples": int(delays.encode),
        "decode_latency_samples": int(delays.decode),
        "leaky_relu_slope": 0.2,
        "loud_stride": 1,
        "producer": f"rave-deploy {rave_core.__version__}",
    })
    return problems, dict(sorted(attrs.items()))


def _encoder_layout(net: nn.Sequential, problems: List[str]) -> Dict[str, object]:
    """v1 encoder: conv, (BatchNorm, LeakyReLU, strided conv) x n, LeakyReLU, conv."""
    layers = list(net)
    n = (len(layers) - 3) // 3
    ok = (len(layers) == 3 * n + 3 and isinstance(layers[0], Conv1d)
          and isinstance(layers[-2], nn.LeakyReLU) and isinstance(layers[-1], Conv1d)
          and all(isinstance(layers[1 + 3 * i], nn.BatchNorm1d)
                  and isinstance(layers[2 + 3 * i], nn.LeakyReLU)
                  and isinstance(layers[3 + 3 * i], Conv1d) for i in range(n)))
    if not ok:
        kinds = ", ".join(type(m).__name__ for m in layers)
        hint = " (sample_norm = True: BRAVE uses BatchNorm)" if "SampleNorm" in kinds else ""
        problems.append(f"encoder layers ({kinds}) are not BRAVE's conv / BatchNorm / "
                        f"LeakyReLU sequence{hint}")
        return {}
    norms = [layers[1 + 3 * i] for i in range(n)]
    if any(not (bn.affine and bn.track_running_stats) for bn in norms):
        problems.append("encoder BatchNorm without affine weights or running statistics")
    eps = {float(bn.eps) for bn in norms}
    if len(eps) > 1:
        problems.append(f"encoder BatchNorms with different eps {sorted(eps)}")
    if layers[-1].groups != 2:
        problems.append(f"the encoder's last conv has {layers[-1].groups} groups: BRAVE's "
                        "variational head has 2 (mean, scale)")
    return {"encoder_ratios": np.array([layers[3 + 3 * i].stride[0] for i in range(n)], np.int64),
            "batchnorm_eps": eps.pop() if eps else 1e-5}


def _generator_layout(decoder: Generator, problems: List[str]) -> Dict[str, object]:
    """v1 generator: conv, (upsampling, residual stack) x n; waveform and loudness convs."""
    layers = list(decoder.net)
    n = (len(layers) - 1) // 2
    if not (len(layers) == 2 * n + 1 and isinstance(layers[0], Conv1d) and all(
            isinstance(layers[1 + 2 * i], UpsampleLayer)
            and isinstance(layers[2 + 2 * i], ResidualStack) for i in range(n))):
        problems.append("decoder layers are not BRAVE's conv / (upsampling, residual stack) "
                        "sequence")
        return {}
    ratios, paddings, kernels, dilations = [], [], set(), set()
    for i in range(n):
        up = list(layers[1 + 2 * i].net)[-1]
        if isinstance(up, ConvTranspose1d):
            if up.kernel_size[0] != 2 * up.stride[0]:
                problems.append(f"decoder.net.{1 + 2 * i}: transposed conv kernel "
                                f"{up.kernel_size[0]} != 2 x stride {up.stride[0]}")
            ratios.append(up.stride[0])
            paddings.append(up.padding[0])   # offline crop = streaming delay
        else:
            ratios.append(1)
            paddings.append(0)
        for block in layers[2 + 2 * i].net.branches:   # one block per kernel size
            convs = [[c for c in layer.modules() if isinstance(c, Conv1d)] for layer in block.net]
            kernels.add(int(convs[0][0].kernel_size[0]))
            dilations.add(tuple(tuple(int(c.dilation[0]) for c in layer) for layer in convs))
    if len(dilations) != 1 or len({len(d) for d in next(iter(dilations))}) != 1:
        problems.append(f"residual stacks with differing dilations {sorted(dilations)}: BRAVE "
                        "uses one dilations_list of equal-length entries")
        return {}
    synth = decoder.synth.branches
    if len(synth) < 2 or not all(isinstance(b, Conv1d) for b in list(synth)[:2]):
        problems.append("decoder.synth is not BRAVE's waveform and loudness convolutions")
    return {"decoder_ratios": np.array(ratios, np.int64),
            "upsample_paddings": np.array(paddings, np.int64),
            "residual_dilations": np.array(next(iter(dilations)), np.int64),
            "residual_kernel_sizes": np.array(sorted(kernels), np.int64)}


# ------------------------------------------------------------------ file
def write_h5(path: Path, weights: Dict[str, np.ndarray], attrs: Dict[str, object]) -> None:
    """Write the datasets (in the order given) and root attributes, reproducibly.

    The file is built in memory and written in one go: libhdf5 meeting a full disk
    printed dozens of tracebacks, then crashed the process (a segmentation fault) as it
    closed the file. The bytes are those HDF5 writes to disk (the core driver's image)."""
    # backing_store=False: no file of that name is read or written
    with h5py.File("minifusion.h5", "w", libver=LIBVER, driver="core",
                   backing_store=False) as f:
        for key, value in attrs.items():
            f.attrs[key] = value
        for key, value in weights.items():
            f.create_dataset(key, data=value, track_times=False)
        f.flush()
        image = f.id.get_file_image()
    Path(path).write_bytes(image)


# ------------------------------------------------------------------ check pieces
class MinifusionRunner(Runner):
    """The NumPy plugin emulation as a harness runner (``forward`` only: the plugin takes
    audio in and gives audio out)."""

    method = "forward"

    def __init__(self, artifact: Path, dtype=np.float32) -> None:
        self.stream = MinifusionStream(MinifusionModel(artifact, dtype=dtype))
        self.ratio = self.stream.model.ratio
        self.sr = self.stream.model.sample_rate
        self.latency_samples = self.stream.model.latency_samples

    def reset(self, batch: int = 1) -> None:
        self.stream.reset(batch)

    def process(self, block: np.ndarray) -> np.ndarray:
        return self.stream(block)


class PosteriorMeanReference:
    """Our eager model, offline, through the posterior mean (what the plugin decodes):
    ``decode(latent_mean_of(encode(x)))`` without noise, optionally in float64. Same
    interface as :class:`rave_deploy.check.runner.EagerReference`, without PCA nor
    fidelity cut.

    Weight norm is folded first, in float32, as in the file: in float64 the reference
    then differs from a right reading of the file by rounding only (~1e-13).
    """

    #: BRAVE's latent is continuous: no codes, no near-ties (see check.near_ties)
    discrete = False

    def __init__(self, model: RAVE, dtype: torch.dtype = torch.float32) -> None:
        self.model = remove_weight_norm(copy_model(model)).eval().set_noise(False).to(dtype)
        set_streaming(self.model, False)
        self.dtype = dtype
        self.delays = self.model.streaming_delays()   # .encode, .decode, .forward
        self.ratio = int(self.model.ratio)
        self.sr = int(self.model.sr)
        self.latent_size = self.full_latent_size = int(self.model.latent_size)
        self.n_channels = int(self.model.n_channels)

    def __call__(self, method: str, signal: np.ndarray) -> np.ndarray:
        m = self.model
        x = torch.from_numpy(np.ascontiguousarray(signal)).to(self.dtype)
        with torch.inference_mode():
            if method == "encode":
                return m.latent_mean_of(m.encode(x)).numpy()
            if method == "decode":
                return m.decode(x).numpy()
            return m.decode(m.latent_mean_of(m.encode(x))).numpy()

    def delay_of(self, method: str) -> int:
        if method == "encode":
            return self.delays.encode // self.ratio
        return getattr(self.delays, method)


def default_block_sizes(ratio: int) -> List[int]:
    """Powers of two from ``max(128, ratio)`` to ``max(2048, 2 * ratio)`` (two sizes at
    least, so that block-size invariance is tested)."""
    sizes, n = [], max(128, ratio)
    while n <= max(2048, 2 * ratio):
        sizes.append(n)
        n *= 2
    return sizes


def check_contract(report: "CheckReport", artifact: Path, model: RAVE) -> bool:
    """Contract points 20-21 on the file itself. Returns whether the file can be run."""
    try:
        f = h5py.File(artifact, "r")
    except OSError as err:
        report.add("contract.hdf5", False, f"{artifact} is not a readable HDF5 file: {err}")
        return False
    with f:
        found = {k: f[k] for k in f.keys()}
        attrs = {k: f.attrs[k] for k in f.attrs.keys()}
        groups = sorted(k for k, v in found.items() if not isinstance(v, h5py.Dataset))
        datasets = {k: v for k, v in found.items() if isinstance(v, h5py.Dataset)}
        expected = plugin_state_dict(model)

        missing = [k for k in expected if k not in datasets]
        extra = sorted(k for k in datasets if k not in expected)
        misshaped = [(k, datasets[k].shape, v.shape) for k, v in expected.items()
                     if k in datasets and tuple(datasets[k].shape) != tuple(v.shape)]
        issues = ([f"missing dataset {k!r} (shape {expected[k].shape})" for k in missing]
                  + [f"dataset {k!r} has shape {got}, the model's state dict {want}"
                     for k, got, want in misshaped]
                  + [f"unexpected dataset {k!r}" for k in extra]
                  + [f"unexpected group {k!r}" for k in groups])
        report.add("contract.datasets", not issues,
                   "; ".join(issues[:8]) + (f" (and {len(issues) - 8} more)" if len(issues) > 8 else "")
                   if issues else f"{len(expected)} datasets named and shaped as the model's "
                   "state dict after weight-norm removal",
                   value=float(len(issues)), threshold="0",
                   details={"missing": missing, "unexpected": extra,
                            "misshaped": [k for k, _, _ in misshaped]})
        not_float = sorted(f"{k} ({v.dtype})" for k, v in datasets.items() if v.dtype != np.float32)
        report.add("contract.float32", not not_float,
                   f"not float32: {', '.join(not_float[:8])}" if not_float
                   else "every dataset is float32")
        forbidden = sorted(k for k in datasets if not keeps_key(k))
        report.add("contract.forbidden_keys", not forbidden,
                   f"training or cache keys present: {', '.join(forbidden[:8])}" if forbidden
                   else f"no key starts with {', '.join(DROP_PREFIXES)} or ends with "
                   f"{', '.join(DROP_SUFFIXES)}")
        worst, worst_key = 0.0, None
        for k, v in expected.items():
            if k in datasets and tuple(datasets[k].shape) == tuple(v.shape):
                got = np.asarray(datasets[k][()], dtype=np.float64)
                err = float(np.max(np.abs(got - v), initial=0.0)) / max(
                    float(np.max(np.abs(v), initial=0.0)), 1e-12)
                if not np.isfinite(err) or err > worst:
                    worst, worst_key = (err if np.isfinite(err) else float("inf")), k
        report.add("contract.values", worst <= 1e-6,
                   f"dataset {worst_key!r} differs from the model's weights by {worst:.3g} of "
                   "its peak: the file is not this run's" if worst > 1e-6
                   else "every dataset equals the model's folded weights",
                   value=worst, threshold="<= 1e-6")

    problems, want_attrs = inspect_architecture(model)
    stale = [k for k, v in want_attrs.items() if k not in ("producer", "latency_ms")
             and (k not in attrs or not _same(attrs[k], v))]
    report.add("contract.architecture", not problems and not stale,
               "; ".join(problems) if problems else
               (f"attributes differ from the model's architecture: "
                f"{', '.join(f'{k} = {_plain(attrs.get(k))} (model: {_plain(want_attrs[k])})' for k in stale)}"
                if stale else "BRAVE's causal architecture (v1 encoder and generator, no "
                "noise, causal padding, mono)"),
               details={"problems": problems, "stale_attributes": stale})
    sr = attrs.get("sample_rate")
    report.add("contract.sample_rate", sr is not None and int(sr) == int(model.sr),
               f"sample_rate attribute {_plain(sr)} Hz, the run's {model.sr} Hz"
               + ("" if sr is not None and int(sr) == int(model.sr)
                  else ": the plugin must run at the training rate"),
               value=None if sr is None else float(sr), threshold=f"== {model.sr}")
    return all(r.passed for r in report.results)


def _same(a, b) -> bool:
    a = a.decode() if isinstance(a, bytes) else a
    if isinstance(b, str) or isinstance(a, str):
        return str(a) == str(b)
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-9, atol=0))


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def check_streaming(report: "CheckReport", artifact: Path, model: RAVE,
                    options: CheckOptions) -> None:
    """The generic checks (:mod:`rave_deploy.check.harness`) on the NumPy plugin
    emulation, plus its float32 precision and speed.

    Parity, causality, block invariance and latency run the emulation in float64 against
    the eager model in float64, so any difference is a misreading of the file (rounding
    alone stays near 1e-13 there); ``precision.forward_float32`` then shows what float32
    arithmetic, as a plugin computes, adds.
    """
    from ..check.harness import run_method_checks
    from ..check.signals import musical_signal
    from ..check.timing import run_forward_timing
    from ..check.tolerances import tolerances_of

    runner64 = MinifusionRunner(artifact, dtype=np.float64)
    runner32 = MinifusionRunner(artifact, dtype=np.float32)
    reference = PosteriorMeanReference(model, dtype=torch.float64)
    ratio, sr = runner64.ratio, runner64.sr
    blocks = usable_block_sizes(options.block_sizes, ratio, default_block_sizes(ratio), report,
                                f"multiples of the ratio {ratio}: the plugin cannot run them")
    # Both sides in float64 with the same float32 weights: only rounding separates them.
    tol = tolerances_of(options)
    tol = replace(tol, parity_max_rel=min(tol.parity_max_rel, FLOAT64_PARITY),
                  parity_min_snr_db=max(tol.parity_min_snr_db, 120.0))
    run_method_checks(report, runner64, reference, "forward", blocks, options, tolerances=tol)

    # float32, as the plugin computes, against the float64 eager model, past the
    # receptive field (streaming starts from silence, the offline model from zero padding).
    skip = runner32.stream.model.receptive_field()
    latency, block = reference.delay_of("forward"), max(blocks)
    n = -(-max(int(options.seconds * sr), 3 * (skip + latency)) // block) * block
    x = musical_signal(sr, n)[None]
    y = runner32.run(x, block)
    ref = reference("forward", x)
    peak = max(float(np.max(np.abs(ref[..., skip:]))), 1e-30)
    err = float(np.max(np.abs(y[..., latency + skip:] - ref[..., skip:n - latency]))) / peak
    report.add("precision.forward_float32", err <= FLOAT32_PRECISION,
               f"float32 NumPy (as the plugin computes) vs the float64 eager model: max error "
               f"{err:.2g} of peak at block {block}", value=err,
               threshold=f"<= {FLOAT32_PRECISION:g}")

    # Speed of the NumPy emulation: for information only, the plugin runs C++. Kept out
    # of summary["rtf"], which is the host's streaming speed (report tables read it so).
    first = len(report.results)
    run_forward_timing(report, runner32, reference, blocks, options)
    table = report.summary.pop("rtf", {}) or {}
    report.target_specific["rtf_numpy_emulation"] = table
    report.summary["realtime_block"] = None   # the plugin's speed is not measured here
    rows = [table[k] for k in sorted(table, key=int)]
    speeds = "; ".join(f"{r['rtf']:.2f}x real time at block {r['block']} (p99 {r['p99_ms']:.2f} "
                       f"of {r['budget_ms']:.2f} ms)" for r in rows)
    for r in report.results[first:]:
        if rows and len(rows) == len(blocks):   # timing ran: speed is not a failure here
            r.passed, r.threshold = True, None
            r.value = rows[0]["rtf"]
            r.message = f"NumPy float32 emulation, report only (the plugin runs C++): {speeds}"
    report.summary.update({"latency_samples": latency, "latency_ms": 1000.0 * latency / sr,
                           "sample_rate": sr, "ratio": ratio})
    report.target_specific["float32_max_rel_error"] = err


# ------------------------------------------------------------------ target
@register
class MinifusionTarget(Target):
    name = "minifusion"
    suffix = ".h5"
    description = ("BRAVE's low-latency Minifusion plugin: weights as HDF5 datasets "
                   "(BRAVE-family causal models only)")
    host = "Minifusion"
    host_latency_note = ("the plugin's own buffering comes on top: host contracts 20-21 "
                         "state no figure")

    def unsupported_reason(self, model: RAVE, options: ExportOptions) -> Optional[str]:
        problems, _ = inspect_architecture(model)
        # a model the plugin cannot run needs another host or a (mono) BRAVE training;
        # the export options below each name their own fix
        remedy = ""
        if problems:
            mono_only = int(model.n_channels) != 1 and len(problems) == 1
            train = ("a mono one for Minifusion (rave-core preprocess --channels 1)" if mono_only
                     else "one for Minifusion with `rave-core train --config brave`")
            remedy = (". Play this model with -t nn_tilde or -t onnx_streaming instead, or "
                      f"train {train}")
        if options.sr is not None and int(options.sr) != int(model.sr):
            problems.append(f"--sr {options.sr}: the plugin runs the model at its training "
                            f"rate ({model.sr} Hz); set the host to {model.sr} Hz instead")
        if options.channels not in (None, 1):
            problems.append(f"--channels {options.channels}: the plugin is mono")
        if not options.streaming:
            problems.append("--no-streaming: the plugin runs the model block by block; the "
                            "offline graph is -t onnx")
        if not problems:
            return None
        return ("the Minifusion plugin runs mono models of BRAVE's causal architecture only: "
                + "; ".join(problems) + remedy)

    def export(self, model: RAVE, options: ExportOptions, path: Path) -> Dict[str, object]:
        reason = self.unsupported_reason(model, options)
        if reason:
            raise TargetUnsupported(reason)
        _, attrs = inspect_architecture(model)
        weights = plugin_state_dict(model)
        write_h5(Path(path), weights, attrs)
        with warnings.catch_warnings():
            # The fidelity cut does not apply here (the plugin decodes the full mean):
            # its warnings about latent statistics would mislead.
            warnings.simplefilter("ignore")
            core = DeployModel(model, fidelity=1.0, deterministic=True, streaming=False)
        return {"_core": core,
                # The plugin decodes the full posterior mean: no PCA, no cut.
                "latent_size": int(model.latent_size), "fidelity": 1.0,
                "deterministic": True,
                "minifusion": {"datasets": len(weights), "format": FORMAT,
                               "latent": "posterior mean, no PCA",
                               "sample_rate_required": int(model.sr)}}

    def check(self, artifact: Path, sidecar: Dict[str, object], model: RAVE,
              options: CheckOptions) -> "CheckReport":
        from ..check.result import CheckReport

        artifact = Path(artifact)
        report = CheckReport(artifact, self.name)
        report.summary["size_bytes"] = artifact.stat().st_size if artifact.exists() else 0
        if not check_contract(report, artifact, model):
            report.add("streaming.forward", False, "not run: the file fails its contract "
                       "checks above (fix them, or re-export)")
            return report
        try:
            check_streaming(report, artifact, model, options)
        except MinifusionFileError as err:
            report.add("streaming.forward", False, f"the NumPy plugin cannot load the file: {err}")
        return report
