"""The RAVE VST (acids-ircam/rave_vst): a JUCE plugin that loads RAVE TorchScript files.

What it reads (host contracts 13-16): top-level ``sr`` / ``sampling_rate`` and
``full_latent_size`` through ``toInt()`` (a float or tensor crashes it), ``encode_params``
and ``decode_params`` as tensors, ``stereo`` through ``toBool()``. It buffers between
``R`` (the ratio) and 32768 samples, so ``R`` must be a power of two in 512..32768: BRAVE
(128) cannot run there. It is mono in, stereo out: in stereo mode it fills the cut latent
dimensions with two noises and decodes a batch of 2, expecting both decodes as channels of
one row. If ``encode_amortized`` exists it samples ``mean + std * noise`` itself.

Our file starts in stereo mode (``stereo = True``); ``set_stereo_mode`` switches it.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch

from rave_core.models.rave import RAVE

from .base import ExportOptions, register
from ._torchscript import TorchScriptTarget
from ._torchscript_calls import (attr, call, named, output_problems, params, reset,
                                 set_deterministic)

MIN_RATIO, MAX_RATIO = 512, 32768


@register
class VSTTarget(TorchScriptTarget):
    """RAVE VST 2.x (mono in, stereo out)."""

    name = "vst"
    description = "TorchScript for the RAVE VST (ratio 512..32768, mono)"
    host = "the RAVE VST"
    stereo_default = True
    host_latency_note = ("the RAVE VST adds its buffer size (its latency mode, which it reports "
                         "to the DAW; the range: sidecar host_latency_samples): host contracts "
                         "13-16 state no figure")
    onednn_unsupported = ("the RAVE VST 2.0.1 bundles a libtorch older than nn~'s (host contract "
                          "1), older than the oneDNN linear ops (torch 2.0): export the vst "
                          "target with --cpu-kernels portable")

    def unsupported_reason(self, model: RAVE, options: ExportOptions) -> Optional[str]:
        reason = super().unsupported_reason(model, options)
        if reason:
            return reason
        factor = 1
        if options.sr and int(options.sr) != int(model.sr):
            factor = int(options.sr) // int(model.sr)
        ratio = int(model.ratio) * factor
        if ratio < MIN_RATIO:
            # the RAVE UGens are mono: a multichannel model goes through NN.ar there
            others = ("nn~ or SuperCollider" if int(model.n_channels) == 1
                      else "nn~ (or NN.ar in SuperCollider)")
            return (f"ratio {ratio} is below the RAVE VST's minimum of {MIN_RATIO} (its buffer "
                    f"runs from the ratio up to {MAX_RATIO} samples): use {others} for this "
                    "model")
        if ratio > MAX_RATIO:
            return f"ratio {ratio} is above the RAVE VST's maximum of {MAX_RATIO}"
        if ratio & (ratio - 1):
            return f"ratio {ratio} is not a power of two, which the RAVE VST requires"
        if int(model.n_channels) != 1:
            return (f"the RAVE VST takes mono models only; this model has {model.n_channels} "
                    "channels (n_channels != 1)")
        if options.channels and int(options.channels) > 2:
            return (f"--channels {options.channels}: the RAVE VST plays at most 2 channels "
                    "(it makes its own stereo: leave --channels out)")
        return None

    def host_fields(self, ratio: int) -> Dict[str, object]:
        # The plugin's buffer ("latency mode", 2^9..2^15 samples, default 8192) is the
        # latency it reports to the DAW; it must be at least the ratio.
        return {"host_latency_samples": {"plugin_buffer_min": max(ratio, MIN_RATIO),
                                         "plugin_buffer_default": max(ratio, 8192),
                                         "plugin_buffer_max": MAX_RATIO}}

    def host_checks(self) -> List[Callable]:
        return [self._check_vst_attributes, self._check_vst_ratio, self._check_vst_mono,
                self._check_vst_stereo, self._check_vst_amortized]

    @named("contract.13_attributes")
    def _check_vst_attributes(self, report, module, ctx) -> None:
        problems = []
        for name in ("sr", "full_latent_size"):
            v = attr(module, name)
            if not isinstance(v, int) or isinstance(v, bool):
                problems.append(f"`{name}` is {type(v).__name__} ({v!r}), not an int: the VST "
                                "calls toInt() on it and crashes")
            elif v <= 0:
                problems.append(f"`{name}` = {v}")
        sampling_rate = attr(module, "sampling_rate")
        if sampling_rate is not None and (not isinstance(sampling_rate, int)
                                          or isinstance(sampling_rate, bool)):
            problems.append(f"top-level `sampling_rate` is {type(sampling_rate).__name__}: the "
                            "VST calls toInt() on it")
        for name in ("encode_params", "decode_params"):
            if not isinstance(attr(module, name), torch.Tensor):
                problems.append(f"`{name}` is not a tensor")
        stereo = attr(module, "stereo")
        if stereo is not None and not isinstance(stereo, bool):
            problems.append(f"`stereo` is {type(stereo).__name__}, not a bool (toBool())")
        full = attr(module, "full_latent_size")
        expected = int(ctx.sidecar.get("full_latent_size") or ctx.model.latent_size)
        if isinstance(full, int) and full != expected:
            problems.append(f"full_latent_size = {full}, the model's is {expected}")
        report.add_contract("contract.13_attributes", problems,
                            f"int sr = {attr(module, 'sr')}, int "
                            f"full_latent_size = {full}, bool stereo = {stereo}, "
                            "tensor encode/decode_params")


    @named("contract.14_ratio")
    def _check_vst_ratio(self, report, module, ctx) -> None:
        r = ctx.ratio
        ok = MIN_RATIO <= r <= MAX_RATIO and r & (r - 1) == 0
        report.add("contract.14_ratio", ok,
                   f"host contract 14: ratio {r} "
                   + ("is a power of two in 512..32768" if ok else
                      f"is outside the RAVE VST's powers of two {MIN_RATIO}..{MAX_RATIO}"),
                   value=float(r), threshold=f"power of two in [{MIN_RATIO}, {MAX_RATIO}]")


    @named("contract.15_mono")
    def _check_vst_mono(self, report, module, ctx) -> None:
        c = params(module, "encode")[0]
        report.add("contract.15_mono", c == 1,
                   f"host contract 15: encode takes {c} channel(s)"
                   + ("" if c == 1 else ": the RAVE VST sends mono input only"))


    @named("contract.15_stereo_mode")
    def _check_vst_stereo(self, report, module, ctx) -> None:
        problems = []
        if not module._c._has_method("set_stereo_mode"):
            report.add("contract.15_stereo_mode", False,
                       "host contract 15: no set_stereo_mode(Tensor) method")
            return
        set_deterministic(module)
        full = attr(module, "full_latent_size")
        r, latent = ctx.ratio, ctx.latent
        try:
            module.set_stereo_mode(torch.tensor([[True]]))
            reset(module)
            y = call(module, "decode", torch.randn(2, int(full), 2))
            if y.dim() != 3 or y.shape[0] != 1 or y.shape[1] < 2 or y.shape[2] != 2 * r:
                problems.append(f"stereo decode (2, {full}, 2) -> {tuple(y.shape)}, expected "
                                f"(1, >= 2, {2 * r})")
            reset(module)
            y = call(module, "decode", torch.randn(1, latent, 2))
            problems += [f"stereo-mode decode (1, {latent}, 2): {p}"
                         for p in output_problems(y, (1, y.shape[1], 2 * r))]
            reset(module)
            z = call(module, "encode", torch.randn(1, 1, 2 * r) * 0.3)
            problems += [f"stereo-mode encode (1, 1, {2 * r}): {p}"
                         for p in output_problems(z, (1, latent, 2))]
        except Exception as exc:
            problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            module.set_stereo_mode(torch.tensor([[False]]))
            reset(module)
        report.add_contract("contract.15_stereo_mode", problems,
                            "set_stereo_mode(tensor([[True]])): decode of "
                            f"(2, {full}, T) returns (1, 2, T * {r}); mono decode "
                            "and encode still work")


    @named("contract.16_encode_amortized")
    def _check_vst_amortized(self, report, module, ctx) -> None:
        if not module._c._has_method("encode_amortized"):
            report.add("contract.16_encode_amortized", True,
                       "host contract 16: no encode_amortized (the VST calls encode)")
            return
        set_deterministic(module)
        x = torch.randn(1, 1, 2 * ctx.ratio, generator=torch.Generator().manual_seed(0)) * 0.3
        problems = []
        reset(module)
        out = call(module, "encode_amortized", x)
        if not (isinstance(out, tuple) and len(out) == 2):
            problems.append(f"returns {type(out).__name__}, not (mean, std)")
        else:
            mean, std = out
            if mean.shape != std.shape or tuple(mean.shape) != (1, ctx.latent, 2):
                problems.append(f"mean {tuple(mean.shape)} and std {tuple(std.shape)}: expected "
                                f"both (1, {ctx.latent}, 2)")
            elif not (torch.isfinite(mean).all() and torch.isfinite(std).all()) or (std < 0).any():
                problems.append("non-finite values or negative std")
            else:
                reset(module)
                z = call(module, "encode", x)
                err = float((z - mean).abs().max()) / (float(z.abs().max()) or 1.0)
                if err > 1e-5:
                    problems.append(f"mean differs from deterministic encode by {err:.2g}")
        reset(module)
        report.add_contract("contract.16_encode_amortized", problems,
                            "encode_amortized returns (mean, std) of equal shapes; "
                            "mean is the deterministic encode")

