"""SuperCollider: the RAVE UGens (rave-supercollider) and NN.ar.

NN.ar runs nn~'s backend, so the nn~ contract (points 1-12, 25) applies as is. The older
RAVE UGens read the module directly (host contracts 17-19):

* ``named_buffers()`` must hold ``decode_params`` (``[0]`` latent size, ``[1]`` ratio),
  and a top-level ``model`` attribute would be loaded *instead* of the file (point 5);
* an ``int`` attribute ``sr`` > 0 (the UGens' resampling branch);
* ``forward(1, 1, R) -> (1, C, R)``, ``encode(1, 1, R) -> (1, L, 1)``,
  ``decode(1, L, 1) -> (1, C, R)``: one latent frame per call, read through
  ``data_ptr`` (contiguous, channel 0 first);
* a prior only if a buffer ``last_z`` (or ``_prior.previous_step``) exists: our files
  have none, so ``RAVEPrior`` and ``RAVE.new(..., prior: 1)`` output silence;
* the UGens switch libtorch to its legacy graph executor (profiling off, optimisation
  on) when their first model loads, for the whole scsynth process, NN.ar included: the
  file must stream the same output under it (``executor.legacy``).

The server's sample rate must equal the file's ``sr`` (export with ``--sr`` for a server
at a multiple of the model's rate).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch

from rave_core.models.rave import RAVE

from .base import ExportOptions, HostLatency, register
from ._torchscript import TorchScriptTarget, nn_tilde_adds
from ._torchscript_calls import (METHODS, NOT_COMPARED, attr, call, copy_problems, input_for,
                                 named, output_problems, params, reset, set_deterministic)

#: scsynth's default block (``z``), against which the hosts' buffering is counted
SERVER_BLOCK = 64


def rave_ugens_latency(ratio: int) -> int:
    """Samples the RAVE UGens add at scsynth's block of 64: they run one model block of
    ``ratio`` samples as soon as it is complete (targets/supercollider/README.md, "Latency";
    ``run_in_scsynth.py`` compares a real scsynth with that)."""
    return max(ratio - SERVER_BLOCK, 0)


@contextlib.contextmanager
def legacy_graph_executor() -> Iterator[None]:
    """libtorch as the RAVE UGens set it (``getProfilingMode() = false``,
    ``setGraphExecutorOptimize(true)``): the legacy graph executor, optimising. Methods
    first called inside take that executor for good; the process-wide flags are restored
    on exit."""
    mode = torch._C._jit_set_profiling_mode(False)
    executor = torch._C._jit_set_profiling_executor(False)
    try:
        with torch.jit.optimized_execution(True):
            yield
    finally:
        torch._C._jit_set_profiling_executor(executor)
        torch._C._jit_set_profiling_mode(mode)


@register
class SuperColliderTarget(TorchScriptTarget):
    """RAVE UGens and NN.ar in scsynth."""

    name = "supercollider"
    description = "TorchScript for SuperCollider (RAVE UGens, NN.ar)"
    host = "SuperCollider"
    load_failure = " (the RAVE UGens then play their input through)"
    style_learning = "the RAVE UGens send no attributes; NN.ar can set them"

    def unsupported_reason(self, model: RAVE, options: ExportOptions) -> Optional[str]:
        reason = super().unsupported_reason(model, options)
        if reason is None and int(model.n_channels) != 1:
            # host contract 18: the UGens call forward(1, 1, R) with their one input
            reason = (f"the RAVE UGens feed the model one audio channel, and this model takes "
                      f"{model.n_channels}: export --target nn_tilde and load it with NN.ar in "
                      "SuperCollider (nn~'s backend takes every channel)")
        return reason

    def host_fields(self, ratio: int) -> Dict[str, object]:
        # NN.ar buffers as nn~ does
        fields = super().host_fields(ratio)
        return {"host_latency_samples": {"rave_ugens": rave_ugens_latency(ratio),
                                         "nn_ar": fields["host_latency_samples"]}}

    def host_latency(self, ratio: int, blocks: Sequence[int]) -> Optional[HostLatency]:
        ugens = rave_ugens_latency(ratio)
        added = {n: {"nn_ar_threaded": a["threaded"], "nn_ar_unthreaded": a["unthreaded"],
                     "rave_ugens": ugens} for n, a in nn_tilde_adds(ratio, blocks).items()}
        return HostLatency(
            self.host, "at scsynth's block of 64: NN.ar buffers as nn~ does (its backend: "
            "host contracts 12 and 28), threaded 2N − 64 (buffer N), unthreaded R − 64; the "
            "RAVE UGens add R − 64 (one R-sample block, run once complete: "
            "targets/supercollider/README.md, checked in scsynth by run_in_scsynth.py)",
            {"nn_ar_threaded": "with NN.ar threaded at block {block}",
             "nn_ar_unthreaded": "with NN.ar unthreaded (buffer argument 0)",
             "rave_ugens": "with the RAVE UGens"},
            added)

    def host_checks(self) -> List[Callable]:
        return [self._check_sc_buffers, self._check_sc_sr, self._check_sc_one_frame,
                self._check_sc_prior, self._check_legacy_executor]

    @named("contract.17_decode_params")
    def _check_sc_buffers(self, report, module, ctx) -> None:
        buffers = dict(module.named_buffers())
        p = buffers.get("decode_params")
        problems = []
        if p is None:
            problems.append("no top-level buffer `decode_params` in named_buffers(): the "
                            "UGens fail to load the model")
        else:
            enc = params(module, "encode")
            if int(p[0]) != enc[2] or int(p[1]) != enc[3]:
                problems.append(f"decode_params = {[int(v) for v in p]}: [0] must be the latent "
                                f"size {enc[2]} and [1] the ratio {enc[3]}")
        report.add_contract("contract.17_decode_params", problems,
                            f"buffer decode_params = {[int(v) for v in p]} "
                            "(latent size, block size)")


    @named("contract.17_sr")
    def _check_sc_sr(self, report, module, ctx) -> None:
        sr = attr(module, "sr")
        expected = int(ctx.sidecar.get("sample_rate") or ctx.model.sr)
        if not isinstance(sr, int) or isinstance(sr, bool):
            ok, msg = False, (f"`sr` is {type(sr).__name__} ({sr!r}), not an int: the UGens "
                              "read it as an integer sample rate")
        elif sr <= 0 or sr != expected:
            ok, msg = False, f"`sr` = {sr}, expected {expected} > 0"
        else:
            ok, msg = True, (f"int `sr` = {sr}: run scsynth at {sr} Hz (the UGens do not "
                             "resample the model)")
        report.add("contract.17_sr", ok, "host contract 17: " + msg)


    @named("contract.18_one_frame")
    def _check_sc_one_frame(self, report, module, ctx) -> None:
        set_deterministic(module)
        r = ctx.ratio
        latent, channels = params(module, "encode")[2], params(module, "forward")[2]
        problems = []
        x = torch.randn(1, 1, r, generator=torch.Generator().manual_seed(0)) * 0.3
        z = torch.randn(1, latent, 1, generator=torch.Generator().manual_seed(1))
        for method, arg, expected in (("forward", x, (1, channels, r)),
                                      ("encode", x, (1, latent, 1)),
                                      ("decode", z, (1, channels, r))):
            reset(module)
            try:
                y = call(module, method, arg)
            except Exception as exc:
                problems.append(f"{method}{tuple(arg.shape)} fails: {type(exc).__name__}: {exc}")
                continue
            problems += [f"{method}{tuple(arg.shape)}: {p}"
                         for p in output_problems(y, expected)]
        reset(module)
        report.add_contract("contract.18_one_frame", problems,
                            f"forward (1, 1, {r}) -> (1, {channels}, {r}), encode "
                            f"-> (1, {latent}, 1), decode (1, {latent}, 1) -> "
                            f"(1, {channels}, {r}), contiguous")


    @named("contract.19_prior")
    def _check_sc_prior(self, report, module, ctx) -> None:
        names = {n for n, _ in module.named_buffers()}
        prior_buffers = sorted(names & {"last_z", "_prior.previous_step"})
        has_method = module._c._has_method("prior")
        if prior_buffers and not has_method:
            ok, msg = False, (f"buffer {prior_buffers[0]} makes the UGens call `prior`, which "
                              "the file lacks")
        elif prior_buffers:
            ok, msg = True, f"prior present ({prior_buffers[0]})"
        else:
            ok, msg = True, ("no prior (no `last_z` buffer): RAVEPrior and RAVE with prior > 0 "
                             "output silence; use encode/decode or forward")
        report.add("contract.19_prior", ok, "host contract 19: " + msg)

    @named("executor.legacy")
    def _check_legacy_executor(self, report, module, ctx) -> None:
        """A fresh copy of the file, loaded and called under the legacy executor as the
        UGens run it (one latent frame per call, several calls so that the executor
        optimises), gives the file's output under the default executor."""
        comparable = set_deterministic(module)
        calls = 6
        inputs = {m: input_for(module, m, ctx.past_latency(calls), seed=5) for m in METHODS}

        def stream(mod, method: str) -> torch.Tensor:
            reset(mod)
            x = inputs[method]
            step = x.shape[-1] // calls
            return torch.cat([call(mod, method, x[..., i * step:(i + 1) * step])
                              for i in range(calls)], -1)

        reference = {m: stream(module, m) for m in METHODS}
        problems = []
        with legacy_graph_executor():
            legacy = torch.jit.load(str(ctx.artifact), map_location="cpu")
            legacy.eval()
            if comparable:
                set_deterministic(legacy)
            for m in METHODS:
                problems += copy_problems(m, "the legacy executor's copy",
                                          lambda: stream(legacy, m), reference[m],
                                          torch.float32, comparable)
        reset(module)
        compared = "" if comparable else NOT_COMPARED
        report.add("executor.legacy", not problems,
                   ("streams under libtorch's legacy graph executor, as the RAVE UGens set it "
                    f"for all of scsynth (NN.ar included){compared}" if not problems else
                    "the file fails under libtorch's legacy graph executor, which the RAVE "
                    "UGens set for all of scsynth (NN.ar included): " + "; ".join(problems[:3])
                    + ". Load it with NN.ar in a server without the RAVE UGens, and report "
                    "it with the file"))
