"""The target every TorchScript host shares (nn~, SuperCollider, RAVE VST): not a target
itself (the leading underscore keeps it out of target discovery).

The file is :class:`~rave_deploy.torchscript.ScriptedRAVE`, scripted. ``check`` loads it
with ``torch.jit.load`` as the hosts do and runs the host contract checks of
:mod:`._torchscript_contracts` (points 1-12 and 25 of ``host-contracts.md``), each guarded
so that a check that crashes fails under its own name.

Then the generic checks of :mod:`rave_deploy.check.harness` (parity, causality, block
sizes, latency, real-time factor) through :class:`~rave_deploy.check.runner.TorchScriptRunner`
runners, against :class:`~._torchscript_reference.HostReference`, with the module's runtime
``deterministic`` switch on.

The nn~, SuperCollider and RAVE VST targets extend :class:`TorchScriptTarget` with
their host's own points (:meth:`TorchScriptTarget.host_checks`), written with the helpers
of :mod:`._torchscript_calls`.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence

import torch

from rave_core.models.rave import RAVE
from rave_core.text import clipped

from ..nn_tilde_emulation import nn_tilde_latency
from ..sidecar import host_block_sizes
from ..torchscript import export_torchscript
from ._torchscript_calls import (METHODS, CheckContext, attr, deterministic, error_line, params,
                                 reset, set_deterministic)
from ._torchscript_contracts import (BUILD_SPECIFIC_OPS, check_file_format, check_ops,
                                     contract_checks)
from ._torchscript_reference import HostChannels, HostReference
from .base import CheckOptions, ExportOptions, Target

if TYPE_CHECKING:  # (annotations only; the checks import the harness when they run)
    from ..check.result import CheckReport

#: Checks that compare two runs of the same input.
_COMPARES_RUNS = ("contract.4_streaming", "contract.9_nn_tilde_emulation", "contract.11_batch",
                  "contract.25_noncontiguous")


def nn_tilde_adds(ratio: int, blocks: Sequence[int]) -> Dict[str, Dict[str, int]]:
    """What nn~'s buffering adds at each host block of ``blocks`` (host contract 28:
    :func:`rave_deploy.nn_tilde_emulation.nn_tilde_latency`), ``{str(block): {"threaded":
    int, "unthreaded": int}}``: the figures of nn~ and of the hosts that buffer as it does."""
    return {str(n): nn_tilde_latency(n, ratio) for n in sorted({int(b) for b in blocks})}


class TorchScriptTarget(Target):
    """Shared export and checks of the TorchScript hosts (nn~, SuperCollider, RAVE VST)."""

    suffix = ".ts"
    chooses_cpu_kernels = True
    #: the file starts in the RAVE VST's stereo mode
    stereo_default = False
    #: the host's name in messages
    host = "nn~"
    #: what the host does with a file its libtorch cannot load (host contract 31)
    load_failure = " (nn~ takes PureData down with it)"
    #: why this host cannot load a ``--cpu-kernels onednn`` file (None: it can, x86-64)
    onednn_unsupported: Optional[str] = None

    # ------------------------------------------------------------------ export
    def unsupported_reason(self, model: RAVE, options: ExportOptions) -> Optional[str]:
        if not options.streaming:
            return (f"{self.host} calls the model block by block: only streaming exports are "
                    "supported (drop --no-streaming)")
        if options.cpu_kernels == "onednn" and self.onednn_unsupported:
            return f"--cpu-kernels onednn: {self.onednn_unsupported}"
        if options.cpu_kernels == "onednn" and not torch.backends.mkldnn.is_available():
            return ("--cpu-kernels onednn: this torch was built without oneDNN, so the file "
                    "could not be checked: export with --cpu-kernels portable, or from a torch "
                    "with oneDNN (PyTorch's x86-64 builds)")
        sr = int(model.sr)
        if options.sr and int(options.sr) != sr and (options.sr < sr or options.sr % sr):
            return (f"--sr {options.sr} is not an integer multiple of the model's sample "
                    f"rate ({sr} Hz): use --sr {2 * sr}, or run the host at {sr} Hz")
        return None

    def export(self, model: RAVE, options: ExportOptions, path: Path) -> Dict[str, object]:
        module, info = export_torchscript(
            model, path, fidelity=options.fidelity, deterministic=options.deterministic,
            channels=options.channels, host_sr=options.sr, stereo=self.stereo_default,
            tuned_block=options.block_size, cpu_kernels=options.cpu_kernels)
        info.update(self.host_fields(module.ratio))
        info["_core"] = module.core
        if module.core.cpu_kernels == "onednn":
            # a file a libtorch cannot load terminates PureData (host contract 31)
            needs = BUILD_SPECIFIC_OPS["mkldnn"]
            warnings.warn(f"--cpu-kernels onednn: this file loads only in {needs}; not on "
                          f"Apple silicon or in older hosts, where {self.host} cannot load "
                          f"it{self.load_failure}: export with --cpu-kernels portable for "
                          "those", stacklevel=2)
        return info

    def host_fields(self, ratio: int) -> Dict[str, object]:
        """Sidecar fields about the host (nn~: the latency its buffering adds)."""
        return {"host_latency_samples": {
            "unthreaded": nn_tilde_latency(ratio, ratio)["unthreaded"],
            "threaded": {str(n): nn_tilde_latency(n, ratio)["threaded"]
                         for n in host_block_sizes(ratio)}}}

    # ------------------------------------------------------------------ check
    def check(self, artifact: Path, sidecar: Dict[str, object], model: RAVE,
              options: CheckOptions) -> "CheckReport":
        from ..check.result import CheckReport

        artifact = Path(artifact)
        report = CheckReport(artifact, self.name)
        report.summary["size_bytes"] = artifact.stat().st_size
        try:
            module = torch.jit.load(str(artifact), map_location="cpu")
        except Exception as exc:
            report.add("contract.1_load", False,
                       f"host contract 1: torch.jit.load fails ({type(exc).__name__}: "
                       f"{clipped(str(exc).strip().splitlines()[0], 300)}); {self.host} would not load "
                       "it (nn~ takes PureData down with it)")
            return report
        report.add("contract.1_load", True, "host contract 1: loads with torch.jit.load on CPU")
        check_file_format(report, artifact)
        check_ops(report, module, sidecar)

        try:
            enc, _ = params(module, "encode"), params(module, "decode")  # both must read
            ratio, latent = enc[3], enc[2]
        except Exception as exc:
            report.add("contract.6_methods", False,
                       f"host contract 6: encode_params / decode_params unreadable "
                       f"({type(exc).__name__}: {exc})")
            return report
        blocks = [int(b) for b in (options.block_sizes or sidecar.get("block_sizes")
                                   or host_block_sizes(ratio))]
        # what the host reads off the file (contract 7 compares them with the model)
        file_sr = attr(module, "sr")
        report.summary.update(ratio=int(ratio),
                              sample_rate=file_sr if isinstance(file_sr, int) else None)
        latency = attr(module, "latency_samples")
        ctx = CheckContext(artifact, sidecar, model, options, ratio, latent, sorted(set(blocks)),
                           model_latency=int(latency) if isinstance(latency, int) else 0)
        stereo0 = attr(module, "stereo")
        if isinstance(stereo0, bool) and stereo0 and module._c._has_method("set_stereo_mode"):
            module.set_stereo_mode(torch.tensor([[False]]))   # host-neutral for the checks
        deterministic0 = deterministic(module)

        # One intra-op thread: small blocks run faster, and results do not depend on
        # what else the machine is doing.
        from ..check.harness import torch_threads

        with torch_threads(1), torch.random.fork_rng(devices=[]):
            self._run_checks(report, module, ctx)

        if deterministic0 is not None and module._c._has_method("set_deterministic"):
            module.set_deterministic(deterministic0)
        if isinstance(stereo0, bool) and stereo0 and module._c._has_method("set_stereo_mode"):
            module.set_stereo_mode(torch.tensor([[True]]))
        return report

    def _run_checks(self, report: "CheckReport", module, ctx: CheckContext) -> None:
        checks: List[Callable] = contract_checks() + self.host_checks()
        # Contract checks make few calls, each with new shapes: the JIT's profiling runs
        # and re-optimisation would dominate their cost (seconds per method). They check
        # shapes, types and state, which optimisation does not change; the generic checks
        # below run the optimised executor, as hosts do.
        with torch.jit.optimized_execution(False):
            for fn in checks:
                self._guard(report, fn, module, ctx)
        self._generic_checks(report, module, ctx)

    def host_checks(self) -> List[Callable]:
        """Checks of this target's own host (added by subclasses)."""
        return []

    @staticmethod
    def _guard(report: "CheckReport", fn: Callable, module, ctx: CheckContext) -> None:
        start = len(report.results)
        try:
            fn(report, module, ctx)
            missing = [f"{m}()" for m in ("set_deterministic", "reset")
                       if not module._c._has_method(m)]
            if missing:  # e.g. a file exported by acids-rave, checked with --run
                for r in report.results[start:]:
                    if not r.passed and r.name in _COMPARES_RUNS:
                        r.message += (f" (this file has no {' or '.join(missing)}: runs start "
                                      "from other states or random draws, so outputs cannot "
                                      "be compared exactly)")
        except Exception as exc:  # a crash inside a check is that check failing
            name = getattr(fn, "check_name", fn.__name__)  # (every check is named())
            point = name.split(".", 1)[-1].split("_", 1)[0]
            label = f"host contract {point}" if name.startswith("contract.") else name
            report.add(name, False, f"{label}: the check could not run "
                       f"({error_line(exc, 300)})")

    # ------------------------------------------------------------------ generic checks
    def _generic_checks(self, report: "CheckReport", module, ctx: CheckContext) -> None:
        from ..check.harness import run_method_checks
        from ..check.latency import nn_tilde_total_latency
        from ..check.runner import TorchScriptRunner
        from ..check.timing import run_forward_timing
        if not set_deterministic(module):
            report.add("parity.forward", False, "the file has no set_deterministic: parity "
                       "cannot switch randomness off")
            return
        sc = ctx.sidecar
        factor = int(sc.get("resample_factor") or 1)
        delays = {"encode": int(sc.get("encode_latency_samples",
                                       attr(module, "encode_latency_samples") or 0)),
                  "decode": int(sc.get("decode_latency_samples",
                                       attr(module, "decode_latency_samples") or 0)),
                  "forward": int(sc.get("latency_samples",
                                        attr(module, "latency_samples") or 0))}
        fidelity = float(sc.get("fidelity") or 0.95)
        out_channels = params(module, "forward")[2]
        mix = attr(module, "channel_mix")
        mixed = out_channels < int(ctx.model.n_channels) and isinstance(mix, torch.Tensor)
        reference = HostReference(ctx.model, fidelity, factor, delays,
                                  mix=mix.numpy() if mixed else None)
        blocks = [n for n in ctx.blocks if n % reference.ratio == 0] or [reference.ratio]
        runners = {}
        for m in METHODS:
            runner = TorchScriptRunner(module, m, params(module, m),
                                       lambda batch: reset(module, batch))
            if runner.out_ratio == 1 and runner.out_channels != reference.n_channels:
                runner = HostChannels(runner, reference.n_channels)
            runners[m] = runner
            run_method_checks(report, runner, reference, m, blocks, ctx.options)
        if report.summary.get("latency_samples") is not None:  # latency.forward ran
            # nn~ loads any TorchScript file: its total latency there, per host block
            report.summary["host_latency"] = nn_tilde_total_latency(
                report.summary["latency_samples"], blocks, reference.ratio, reference.sr)
        run_forward_timing(report, runners["forward"], reference, blocks, ctx.options)
