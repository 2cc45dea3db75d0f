"""The checks every TorchScript host shares (nn~, SuperCollider, RAVE VST): not a target
itself (the leading underscore keeps it out of target discovery).

The file is :class:`~rave_deploy.torchscript.ScriptedRAVE`, scripted. ``check`` loads it
with ``torch.jit.load`` as the hosts do and verifies the host contracts
(``host-contracts.md`` of the reference material, points 1-12 and 25) one named check each,
``contract.<point>_<what>``:

* loading, the archive's file-format version, no lazy state (1, 2);
* exact output shapes, dtype, contiguity, finiteness for every method and host block
  size, streaming continuity (3, 4), forbidden top-level names (5);
* methods, ``*_params``, labels, ratios (6-8), attributes and setters (10), batches of
  1, 4 and 64 (11), non-contiguous input (25);
* :class:`~rave_deploy.nn_tilde_emulation.NnTildeHost`, an emulation of nn~'s buffering (64-sample vectors, circular
  buffers, input decimation, output hold, threaded and unthreaded processing), whose
  output must equal the module called directly, delayed by the latency nn~ adds (9, 12).

Then the generic checks of :mod:`rave_deploy.check.harness` (parity, causality, block
sizes, latency, real-time factor) through :class:`~rave_deploy.check.runner.TorchScriptRunner`
runners, with the module's runtime ``deterministic`` switch on.

The nn~, SuperCollider and RAVE VST targets extend :class:`TorchScriptTarget` with
their host's own points.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from rave_core.models.rave import RAVE
from rave_core.text import clipped

from ..nn_tilde_emulation import PD_VECTOR, NnTildeHost, nn_tilde_latency
from ..sidecar import host_block_sizes
from ..torchscript import (FORBIDDEN_NAMES, STYLE_ATTRIBUTES, StreamingResampler,
                           export_torchscript, file_format_version)
from .base import CheckOptions, ExportOptions, Target

if TYPE_CHECKING:  # (annotations only; the checks import the harness when they run)
    from ..check.result import CheckReport

#: Highest TorchScript file-format version libtorch 2.5.1 (nn~ 1.6) reads
#: (caffe2/serialize/versions.h: kMaxSupportedFileFormatVersion).
LIBTORCH_2_5_MAX_FILE_FORMAT = 10
METHODS = ("encode", "decode", "forward")
#: Checks that compare two runs of the same input.
_COMPARES_RUNS = ("contract.4_streaming", "contract.9_nn_tilde_emulation", "contract.11_batch",
                  "contract.25_noncontiguous")


# --------------------------------------------------------------------------- reference
class HostReference:
    """The eager reference of a scripted file with host options: duck-types
    :class:`~rave_deploy.check.runner.EagerReference` at the host's rate.

    ``__call__`` chains the offline resampler (if any), the eager deterministic model and,
    for fewer host channels than the model's, the file's mixing matrix (the mixed channels
    repeated up to the model's channel count, as :class:`_HostChannels` repeats the
    file's). The delays are those the artefact reports (its sidecar), which the parity
    and latency checks then verify.
    """

    def __init__(self, model: RAVE, fidelity: float, factor: int, delays: Dict[str, int],
                 mix: Optional[np.ndarray] = None) -> None:
        from ..check.runner import EagerReference

        self.base = EagerReference(model, fidelity)
        self.factor = int(factor)
        self.resampler = StreamingResampler(self.factor).eval() if self.factor > 1 else None
        self.ratio = self.base.ratio * self.factor
        self.sr = self.base.sr * self.factor
        self.latent_size = self.base.latent_size
        self.n_channels = self.base.n_channels
        self.discrete = self.base.discrete
        self.delays = dict(delays)
        self.mix = None if mix is None else np.asarray(mix, np.float32)

    def __call__(self, method: str, signal: np.ndarray) -> np.ndarray:
        return self._to_host(method, self.base(method, self._from_host(method, signal)))

    def near_tie_outputs(self, method: str, signal: np.ndarray, context: int = 0
                         ) -> List[Tuple[int, np.ndarray]]:
        """The base reference's near-tie segments (a discrete model), as the host sees
        them; none through the resampler (a segment cannot be resampled alone)."""
        if self.resampler is not None:
            return []
        return [(start, self._to_host(method, values[None])[0]) for start, values in
                self.base.near_tie_outputs(method, signal, context)]

    def _from_host(self, method: str, signal: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(signal, dtype=np.float32)
        if self.resampler is not None and method in ("encode", "forward"):
            with torch.inference_mode():
                x = self.resampler.down(torch.from_numpy(x)).numpy()
        return x

    def _to_host(self, method: str, y: np.ndarray) -> np.ndarray:
        if self.resampler is not None and method in ("decode", "forward"):
            with torch.inference_mode():
                y = self.resampler.up(torch.from_numpy(y)).numpy()
        if self.mix is not None and method in ("decode", "forward"):
            y = np.einsum("oc,bct->bot", self.mix, y)
            y = y[:, [i % y.shape[1] for i in range(self.n_channels)]]
        return np.ascontiguousarray(y, dtype=np.float32)

    def delay_of(self, method: str) -> int:
        if method == "encode":
            return self.delays["encode"] // self.ratio
        return self.delays[method]


class _HostChannels:
    """A runner seen with the model's channel count: extra host channels (replicated
    decodes) are cut, fewer (mixed down) are repeated cyclically."""

    def __init__(self, inner, channels: int) -> None:
        self.inner, self.method = inner, inner.method
        self.in_channels, self.in_ratio = inner.in_channels, inner.in_ratio
        self.out_channels, self.out_ratio = channels, inner.out_ratio
        self._index = [i % inner.out_channels for i in range(channels)]

    def reset(self, batch: int = 1) -> None:
        self.inner.reset(batch)

    def process(self, block: np.ndarray) -> np.ndarray:
        return self.inner.process(block)[:, self._index]

    def run(self, signal: np.ndarray, block_size: int) -> np.ndarray:
        return self.inner.run(signal, block_size)[:, self._index]


# --------------------------------------------------------------------------- helpers
def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _params(module, method: str) -> List[int]:
    return [int(v) for v in getattr(module, f"{method}_params")]


def _call(module, method: str, x: torch.Tensor):
    with torch.inference_mode():
        return getattr(module, method)(x)


#: Op namespaces every libtorch build has; other namespaces are in some builds only.
PORTABLE_OP_NAMESPACES = ("aten", "prim")
#: What a file whose ops are in these namespaces needs of the host's libtorch.
BUILD_SPECIFIC_OPS = {
    "mkldnn": "a libtorch 2.0 or later built with oneDNN (PyTorch's x86-64 builds for "
              "Linux, Windows and Intel macOS)",
}


def op_namespaces(module) -> Dict[str, List[str]]:
    """The ops a scripted module's code calls, by namespace (``{"aten": ["aten::mm",
    ...]}``): every method of the module and its submodules, nested blocks included."""
    found: Dict[str, set] = {}

    def visit(block) -> None:
        for node in block.nodes():
            kind = node.kind()
            found.setdefault(kind.split("::", 1)[0], set()).add(kind)
            for inner in node.blocks():
                visit(inner)

    for _, sub in module.named_modules():
        for name in sub._c._method_names():
            visit(sub._c._get_method(name).graph)
    return {ns: sorted(kinds) for ns, kinds in found.items()}


#: How a check that runs a second copy of a file says it could not compare outputs.
NOT_COMPARED = "; outputs not compared: the file has no deterministic switch"


def _copy_problems(method: str, copy: str, run_copy: Callable[[], torch.Tensor],
                   ref: torch.Tensor, dtype: torch.dtype, comparable: bool) -> List[str]:
    """What is wrong with a second copy of a file (moved, or run by another executor)
    running ``method``: ``run_copy()`` raises, returns other than finite ``dtype`` values
    of ``ref``'s shape, or (when ``comparable``: both copies deterministic) an output
    other than the file's ``ref``, to 1e-5 of its peak."""
    try:
        y = run_copy()
    except Exception as exc:
        lines = str(exc).strip().splitlines() or [""]
        return [f"{method}: {type(exc).__name__}: {lines[-1][:200]}"]
    if y.dtype != dtype or y.shape != ref.shape or not bool(y.isfinite().all()):
        return [f"{method}: {copy} returns {y.dtype} {tuple(y.shape)}, not finite {dtype} "
                f"{tuple(ref.shape)}"]
    err = float((y.to(ref.dtype) - ref).abs().max())
    if comparable and err > 1e-5 * float(ref.abs().max() + 1e-12):
        return [f"{method}: {copy}'s output is not the file's (max difference {err:.3g})"]
    return []


def _state_shapes(module) -> Dict[str, Tuple[int, ...]]:
    return {n: tuple(b.shape) for n, b in module.named_buffers()
            if n == "state" or n.endswith(".state")}


def _musical(n: int, channels: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n, dtype=torch.float32)
    tone = 0.3 * torch.sin(2 * math.pi * t * 0.013) + 0.2 * torch.sin(2 * math.pi * t * 0.0021)
    noise = 0.1 * torch.randn(batch, channels, n, generator=g)
    return (tone + noise).float()


def _latent(frames: int, channels: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.cumsum(torch.randn(batch, channels, frames, generator=g), -1)
    return (z / max(math.sqrt(frames), 1.0)).float()


def _input_for(module, method: str, n_audio: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    in_dim, in_ratio, _, _ = _params(module, method)
    if in_ratio > 1:
        return _latent(n_audio // in_ratio, in_dim, batch, seed)
    return _musical(n_audio, in_dim, batch, seed)


def _named(name: str):
    """Name a check method by the result it adds (reported if the check itself crashes)."""
    def mark(fn):
        fn.check_name = name
        return fn
    return mark


@dataclass
class _Ctx:
    """What the checks know about the artefact."""

    artifact: Path
    sidecar: Dict[str, object]
    model: RAVE
    options: CheckOptions
    ratio: int
    latent: int
    blocks: List[int]
    #: the file's ``latency_samples`` attribute (0 if it has none), for files without sidecar
    model_latency: int = 0

    def past_latency(self, calls: int = 1) -> int:
        """Samples of input, a multiple of ``calls * ratio``, that reach at least two
        frames past the model's latency: within the latency the output is the model's
        response to silence, too small to compare two copies by (a v2's can peak at
        5e-11, and rounding noise relative to that fails any tolerance)."""
        latency = int(self.sidecar.get("latency_samples") or self.model_latency or 0)
        step = calls * self.ratio
        return -(-(latency + 2 * self.ratio) // step) * step


# --------------------------------------------------------------------------- target
def nn_tilde_adds(ratio: int, blocks: Sequence[int]) -> Dict[str, Dict[str, int]]:
    """What nn~'s buffering adds at each host block of ``blocks`` (host contract 28:
    :func:`rave_deploy.nn_tilde_emulation.nn_tilde_latency`), ``{str(block): {"threaded":
    int, "unthreaded": int}}``: the figures of nn~ and of the hosts that buffer as it does."""
    return {str(n): nn_tilde_latency(n, ratio) for n in sorted({int(b) for b in blocks})}


class TorchScriptTarget(Target):
    """Shared export and checks of the TorchScript hosts (nn~, SuperCollider, RAVE VST)."""

    suffix = ".ts"
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
        self._check_file_format(report, artifact)
        self._check_ops(report, module, sidecar)

        try:
            enc, _ = _params(module, "encode"), _params(module, "decode")  # both must read
            ratio, latent = enc[3], enc[2]
        except Exception as exc:
            report.add("contract.6_methods", False,
                       f"host contract 6: encode_params / decode_params unreadable "
                       f"({type(exc).__name__}: {exc})")
            return report
        blocks = [int(b) for b in (options.block_sizes or sidecar.get("block_sizes")
                                   or host_block_sizes(ratio))]
        # what the host reads off the file (contract 7 compares them with the model)
        file_sr = self._attr(module, "sr")
        report.summary.update(ratio=int(ratio),
                              sample_rate=file_sr if isinstance(file_sr, int) else None)
        latency = self._attr(module, "latency_samples")
        ctx = _Ctx(artifact, sidecar, model, options, ratio, latent, sorted(set(blocks)),
                   model_latency=int(latency) if isinstance(latency, int) else 0)
        stereo0 = self._attr(module, "stereo")
        if isinstance(stereo0, bool) and stereo0 and module._c._has_method("set_stereo_mode"):
            module.set_stereo_mode(torch.tensor([[False]]))   # host-neutral for the checks
        deterministic0 = self._deterministic(module)

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

    def _run_checks(self, report: "CheckReport", module, ctx: _Ctx) -> None:
        checks: List[Callable] = [
            self._check_methods, self._check_ratios, self._check_forbidden_names,
            self._check_no_lazy_state, self._check_shapes, self._check_attributes,
            self._check_streaming, self._check_batches, self._check_noncontiguous,
            self._check_moves_with_module, self._check_nn_tilde_host,
            self._check_style_transfer]
        checks += self.host_checks()
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
    def _guard(report: "CheckReport", fn: Callable, module, ctx: _Ctx) -> None:
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
            name = getattr(fn, "check_name", fn.__name__.replace("_check_", "contract."))
            point = name.split(".", 1)[-1].split("_", 1)[0]
            label = f"host contract {point}" if name.startswith("contract.") else name
            report.add(name, False, f"{label}: the check could not run "
                       f"({type(exc).__name__}: {str(exc).strip()[:300]})")

    @staticmethod
    def _attr(module, name: str):
        try:
            return module._c.getattr(name) if module._c.hasattr(name) else None
        except Exception:
            return None

    @staticmethod
    def _deterministic(module) -> Optional[bool]:
        if module._c._has_method("get_deterministic"):
            return bool(module.get_deterministic()[0])
        return None

    @staticmethod
    def _set_deterministic(module) -> bool:
        if module._c._has_method("set_deterministic"):
            module.set_deterministic(True)
            return True
        return False

    @staticmethod
    def _reset(module, batch: int = 1) -> None:
        """Silence, and the same random draws for every compared run (files without a
        deterministic switch sample noise)."""
        if module._c._has_method("reset"):
            module.reset()
        torch.manual_seed(0)

    # ------------------------------------------------------------------ points 1-12, 25
    def _check_file_format(self, report: "CheckReport", artifact: Path) -> None:
        try:
            version = file_format_version(artifact)
        except Exception as exc:
            report.add("contract.1_file_format", False,
                       f"host contract 1: no readable `version` record ({exc})")
            return
        ok = version <= LIBTORCH_2_5_MAX_FILE_FORMAT
        report.add("contract.1_file_format", ok,
                   f"host contract 1: file format version {version} "
                   + ("(libtorch 2.5.1, bundled with nn~ 1.6, reads up to "
                      f"{LIBTORCH_2_5_MAX_FILE_FORMAT})" if ok else
                      f"is newer than libtorch 2.5.1 reads ({LIBTORCH_2_5_MAX_FILE_FORMAT}): "
                      "nn~ 1.6 cannot load it; avoid ops added after torch 2.5"),
                   value=float(version), threshold=f"<= {LIBTORCH_2_5_MAX_FILE_FORMAT}")

    def _check_ops(self, report: "CheckReport", module, sidecar: Dict[str, object]) -> None:
        """Host contract 1 again: the file's ops exist in the hosts' libtorch. Ops outside
        ``aten``/``prim`` exist only in some builds (the ``mkldnn`` ones of
        ``--cpu-kernels onednn``): they pass only when the sidecar declares them, so that
        what the file needs is written beside it."""
        try:
            found = op_namespaces(module)
        except Exception as exc:
            report.add("contract.1_ops", False, f"host contract 1: the file's ops could not "
                       f"be listed ({type(exc).__name__}: {str(exc)[:200]})")
            return
        extra = {ns: kinds for ns, kinds in found.items() if ns not in PORTABLE_OP_NAMESPACES}
        if not extra:
            report.add("contract.1_ops", True, "host contract 1: only aten and prim ops, "
                       "which every libtorch has")
            return
        declared = sidecar.get("cpu_kernels") == "onednn"
        problems, needs = [], []
        for ns, kinds in sorted(extra.items()):
            listed = ", ".join(kinds[:4]) + (", ..." if len(kinds) > 4 else "")
            if ns not in BUILD_SPECIFIC_OPS:
                problems.append(f"ops of namespace `{ns}` ({listed}): no host's libtorch has "
                                "them unless it loads the library that defines them; export "
                                "the model again with rave-deploy (--cpu-kernels portable)")
            elif not declared:
                problems.append(f"ops of namespace `{ns}` ({listed}) need "
                                f"{BUILD_SPECIFIC_OPS[ns]}, and the sidecar does not say so "
                                "(cpu_kernels is not \"onednn\"): export with --cpu-kernels "
                                "portable for any host")
            else:
                needs.append(f"{listed}: needs {BUILD_SPECIFIC_OPS[ns]}")
        if problems:
            report.add("contract.1_ops", False, "host contract 1: " + "; ".join(problems))
        else:
            report.add("contract.1_ops", True, "host contract 1: " + "; ".join(needs)
                       + " (exported with --cpu-kernels onednn; other hosts need "
                       "--cpu-kernels portable)")

    @_named("contract.6_methods")
    def _check_methods(self, report, module, ctx: _Ctx) -> None:
        problems = []
        methods = list(module.get_methods()) if module._c._has_method("get_methods") else []
        for m in METHODS:
            if m not in methods:
                problems.append(f"`{m}` is not listed by get_methods() ({methods})")
            if not module._c._has_method(m):
                problems.append(f"no method `{m}`")
        for m in methods:
            p = self._attr(module, f"{m}_params")
            if not isinstance(p, torch.Tensor) or p.shape != (4, ) or p.is_floating_point():
                problems.append(f"`{m}_params` must be an int tensor [in_channels, in_ratio, "
                                f"out_channels, out_ratio], got {p!r}")
                continue
            for side, idx in (("input", 0), ("output", 2)):
                labels = self._attr(module, f"{m}_{side}_labels")
                if labels is None:
                    continue
                if not (isinstance(labels, list) and all(isinstance(s, str) for s in labels)):
                    problems.append(f"`{m}_{side}_labels` is not a List[str]")
                elif len(labels) != int(p[idx]):
                    problems.append(f"`{m}_{side}_labels` has {len(labels)} labels for "
                                    f"{int(p[idx])} channels")
        report.add_contract("contract.6_methods", problems,
                            f"get_methods() lists {methods}, each with an int "
                            "`<method>_params` and matching labels")

    @_named("contract.7_ratios")
    def _check_ratios(self, report, module, ctx: _Ctx) -> None:
        enc, dec, fwd = (_params(module, m) for m in METHODS)
        problems = []
        if enc[3] != dec[1]:
            problems.append(f"encode_params[3] = {enc[3]} but decode_params[1] = {dec[1]}: "
                            "both must be the compression ratio")
        if enc[2] != dec[0]:
            problems.append(f"encode_params[2] = {enc[2]} but decode_params[0] = {dec[0]}: "
                            "both must be the latent size")
        if fwd[1] != 1 or fwd[3] != 1 or enc[1] != 1 or dec[3] != 1:
            problems.append(f"audio sides must have ratio 1 (forward {fwd}, encode {enc}, "
                            f"decode {dec})")
        if enc[0] != fwd[0] or dec[2] != fwd[2]:
            problems.append(f"channels disagree: encode {enc}, decode {dec}, forward {fwd}")
        expect_ratio = int(ctx.sidecar.get("ratio") or ctx.model.ratio)
        if enc[3] != expect_ratio:
            problems.append(f"ratio {enc[3]} in the file, {expect_ratio} for this model "
                            "and sample rate")
        expect_latent = ctx.sidecar.get("latent_size")
        if expect_latent is not None and enc[2] != int(expect_latent):
            problems.append(f"latent size {enc[2]} in the file, {expect_latent} in its sidecar")
        # hosts read the file's `sr`, integrators the sidecar: an edited sidecar misleads
        file_sr, expect_sr = self._attr(module, "sr"), ctx.sidecar.get("sample_rate")
        if isinstance(file_sr, int) and expect_sr is not None and file_sr != int(expect_sr):
            problems.append(f"sample rate {file_sr} in the file (sr), {expect_sr} in its "
                            "sidecar")
        if problems:   # the file or its sidecar was edited, or they belong to two exports
            problems[-1] += ": re-export the model"
        report.add_contract("contract.7_ratios", problems,
                            f"encode {enc}, decode {dec}, forward {fwd}")
        bad = [r for p in (enc, dec, fwd) for r in (p[1], p[3]) if not _is_pow2(r)]
        ratios = sorted({r for p in (enc, dec, fwd) for r in (p[1], p[3])})
        not_dividing = [(a, b) for a in ratios for b in ratios if a < b and b % a]
        bad_blocks = [n for n in ctx.blocks if n < max(ratios) or any(n % r for r in ratios)]
        ok = not bad and not not_dividing and not bad_blocks
        msg = (f"ratios {ratios} are powers of two and divide each other; host blocks "
               f"{ctx.blocks} are multiples of them")
        if bad:
            msg = f"ratio(s) {sorted(set(bad))} are not powers of two"
        elif not_dividing:
            msg = f"ratios {not_dividing[0]} do not divide each other"
        elif bad_blocks:
            msg = (f"host block(s) {bad_blocks} are not multiples of the ratios {ratios} "
                   "(nn~ throws on such a block)")
        report.add("contract.8_power_of_two", ok, "host contract 8: " + msg)

    @_named("contract.5_forbidden_names")
    def _check_forbidden_names(self, report, module, ctx: _Ctx) -> None:
        found = [n for n in FORBIDDEN_NAMES if module._c.hasattr(n)]
        report.add("contract.5_forbidden_names", not found,
                   "host contract 5: " + (f"top-level {found} present: hosts redirect on these "
                                          "names (rave-supercollider loads `model` instead)"
                                          if found else
                                          f"no top-level {', '.join(FORBIDDEN_NAMES)}"))

    @_named("contract.2_no_lazy_state")
    def _check_no_lazy_state(self, report, module, ctx: _Ctx) -> None:
        self._reset(module)
        before = _state_shapes(module)
        problems = [f"{n} has shape {s} (expected (batch, channels, length))"
                    for n, s in before.items() if len(s) != 3 or s[0] < 1]
        if not before:
            problems.append("no streaming state buffers (named `state`) found")
        for m in METHODS:
            in_dim, in_ratio, _, _ = _params(module, m)
            _call(module, m, _input_for(module, m, ctx.ratio))
        after = _state_shapes(module)
        changed = [n for n in before if after.get(n) != before[n]]
        if changed:
            problems.append(f"{len(changed)} state(s) changed shape on the first batch-1 call "
                            f"(e.g. {changed[0]}: {before[changed[0]]} -> {after.get(changed[0])})")
        # Hosts call methods under inference mode and setters outside it (then call again).
        try:
            for m in module.get_attributes():
                if m != "none" and module._c._has_method(f"get_{m}"):
                    values = getattr(module, f"get_{m}")()
                    values = list(values) if isinstance(values, (list, tuple)) else [values]
                    getattr(module, f"set_{m}")(*values)
            _call(module, "forward", _input_for(module, "forward", ctx.ratio))
        except Exception as exc:
            problems.append(f"a setter outside inference mode between inference calls "
                            f"fails: {type(exc).__name__}: {exc}")
        self._reset(module)
        report.add_contract("contract.2_no_lazy_state", problems,
                            f"{len(before)} streaming states exist before the "
                            "first call and keep their shape through batch-1 "
                            "calls")

    def _output_problems(self, y, expected: Tuple[int, ...]) -> List[str]:
        if not isinstance(y, torch.Tensor):
            return [f"returns {type(y).__name__}, not one tensor (nn~ fails every block)"]
        out = []
        if tuple(y.shape) != expected:
            out.append(f"shape {tuple(y.shape)} != {expected}")
        if y.dtype != torch.float32:
            out.append(f"dtype {y.dtype}")
        if not y.is_contiguous():
            out.append("not contiguous")
        if not bool(torch.isfinite(y).all()):
            out.append("non-finite values")
        return out

    @_named("contract.3_output")
    def _check_shapes(self, report, module, ctx: _Ctx) -> None:
        for m in METHODS:
            in_dim, in_ratio, out_dim, out_ratio = _params(module, m)
            problems = []
            for n in ctx.blocks:
                self._reset(module)
                y = _call(module, m, _input_for(module, m, n))
                for p in self._output_problems(y, (1, out_dim, n // out_ratio)):
                    problems.append(f"block {n}: {p}")
            msg = (f"host contract 3: {m} returns float32 (1, {out_dim}, N / {out_ratio}) "
                   f"contiguous and finite at N = {ctx.blocks}")
            if problems:
                msg = (f"host contract 3: {m}: " + "; ".join(problems[:4])
                       + " (nn~ repeats stale audio on a wrong size)")
            report.add(f"contract.3_output_{m}", not problems, msg)
        self._reset(module)

    @_named("contract.10_attributes")
    def _check_attributes(self, report, module, ctx: _Ctx) -> None:
        problems = []
        attrs = module.get_attributes() if module._c._has_method("get_attributes") else None
        if not isinstance(attrs, list) or not all(isinstance(a, str) for a in attrs):
            report.add("contract.10_attributes", False,
                       f"host contract 10: get_attributes() must return List[str], got {attrs!r}")
            return
        kinds = {0: bool, 1: int, 2: float, 3: str, 4: torch.Tensor, 5: str}
        for a in attrs:
            if a == "none":
                continue
            codes = self._attr(module, f"{a}_params")
            if not isinstance(codes, torch.Tensor) or codes.dim() != 1:
                problems.append(f"`{a}_params` missing or not a 1-D tensor")
                continue
            codes = [int(c) for c in codes]
            if any(c not in kinds for c in codes):
                problems.append(f"`{a}_params` has unknown type codes {codes}")
                continue
            if not (module._c._has_method(f"get_{a}") and module._c._has_method(f"set_{a}")):
                problems.append(f"`{a}` lacks get_{a} / set_{a}")
                continue
            values = getattr(module, f"get_{a}")()
            if not isinstance(values, (list, tuple)) or len(values) != len(codes):
                problems.append(f"get_{a}() returns {values!r}: nn~ 1.6 expects a list or tuple "
                                f"of {len(codes)} value(s)")
                continue
            wrong = [(v, kinds[c].__name__) for v, c in zip(values, codes)
                     if not (isinstance(v, kinds[c]) and not (kinds[c] is int and isinstance(v, bool)))]
            if wrong:
                problems.append(f"get_{a}() returns {wrong[0][0]!r}, type code says {wrong[0][1]}")
                continue
            result = getattr(module, f"set_{a}")(*values)
            if not isinstance(result, int) or isinstance(result, bool) or result != 0:
                problems.append(f"set_{a}(...) returned {result!r}, nn~ requires int 0")
        if module._c._has_method("set_sample_rate"):
            sr = int(ctx.sidecar.get("sample_rate") or ctx.model.sr)
            try:
                module.set_sample_rate(sr)
            except Exception as exc:
                problems.append(f"set_sample_rate({sr}) with an int fails: {exc} (nn~ aborts "
                                "loading)")
        if "deterministic" not in attrs:
            problems.append("no `deterministic` attribute (the runtime switch parity relies on)")
        else:
            # The switch must make the output repeatable.
            module.set_deterministic(True)
            x = _input_for(module, "forward", 4 * ctx.ratio)
            self._reset(module)
            y1 = _call(module, "forward", x)
            self._reset(module)
            y2 = _call(module, "forward", x)
            if not torch.equal(y1, y2):
                problems.append("set_deterministic(True) does not make forward repeatable")
        self._reset(module)
        report.add_contract("contract.10_attributes", problems,
                            f"attributes {[a for a in attrs if a != 'none']}: "
                            "typed params, getters return lists, setters return 0")

    @_named("style.transfer")
    def _check_style_transfer(self, report, module, ctx: _Ctx) -> None:
        """v3 files (acids-rave's style attributes): learning the target leaves the output
        as it is, learning a source then transfers (the output changes, stays finite, and
        the statistics survive ``reset()``), and the two resets give the plain output back.
        acids-rave 2.3.1's own v3 files have no ``reset()`` to compare runs with (and
        their attributes reach no layer: see the README)."""
        attrs = module.get_attributes() if module._c._has_method("get_attributes") else []
        if not set(STYLE_ATTRIBUTES) <= set(attrs):
            return  # no AdaIN layers: nothing to teach
        if not (module._c._has_method("reset") and self._set_deterministic(module)):
            report.add("style.transfer", False, "style transfer: the file has no reset() or "
                       "set_deterministic, so its runs cannot be compared")
            return
        # a copy of the file, untaught (a file exported with --style-* starts taught): the
        # other checks see the file as it ships
        module = torch.jit.load(str(ctx.artifact), map_location="cpu")
        self._set_deterministic(module)
        if self._attr(module, "stereo") is True and module._c._has_method("set_stereo_mode"):
            module.set_stereo_mode(torch.tensor([[False]]))   # as for the other checks
        module.set_reset_target(True)
        module.set_reset_source(True)  # both applied by the first call below
        block = ctx.blocks[0]
        source = _input_for(module, "forward", 6 * block, seed=0)
        target = 3.0 * _input_for(module, "forward", 6 * block, seed=7)

        def run(x: torch.Tensor) -> torch.Tensor:
            self._reset(module)
            return torch.cat([_call(module, "forward", x[..., i:i + block])
                              for i in range(0, x.shape[-1], block)], -1)

        plain_source, plain_target = run(source), run(target)
        problems = []
        module.set_learn_target(True)
        if not torch.equal(run(target), plain_target):
            problems.append("learning the target changed the output (it must pass through)")
        module.set_learn_target(False)
        module.set_learn_source(True)
        run(source)
        module.set_learn_source(False)
        styled = run(source)
        change = float((styled - plain_source).abs().max() / plain_source.abs().max().clamp(min=1e-12))
        if not bool(torch.isfinite(styled).all()):
            problems.append("the transferred output is not finite")
        elif change < 1e-3:
            problems.append(f"after learning a target and a source the output changed by "
                            f"{change:.1e} of its peak: the attributes reach no layer")
        module.set_reset_target(True)
        module.set_reset_source(True)
        if not torch.equal(run(source), plain_source):
            problems.append("reset_target and reset_source do not give the plain output back")
        self._reset(module)
        detail = "; ".join(problems) if problems else (
            f"learn_target passes audio through, learn_source then transfers (output changed "
            f"by {change:.2f} of its peak at block {block}), reset_target / reset_source "
            "undo it")
        report.add("style.transfer", not problems, f"style transfer: {detail}")

    @_named("contract.4_streaming")
    def _check_streaming(self, report, module, ctx: _Ctx) -> None:
        self._set_deterministic(module)
        worst = 0.0
        details = {}
        for m in METHODS:
            in_dim, in_ratio, _, _ = _params(module, m)
            n = max(ctx.blocks[0], ctx.ratio)
            x = _input_for(module, m, max(4 * n, ctx.past_latency(n // ctx.ratio)))
            self._reset(module)
            whole = _call(module, m, x)
            self._reset(module)
            step = n // in_ratio
            parts = torch.cat([_call(module, m, x[..., i:i + step])
                               for i in range(0, x.shape[-1], step)], -1)
            peak = float(whole.abs().max()) or 1.0
            err = float((whole - parts).abs().max()) / peak
            details[m] = err
            worst = max(worst, err)
        self._reset(module)
        from ..check.harness import tolerances_of
        tol = tolerances_of(ctx.options).blocks_max_rel   # the blocks.* checks' bound
        ok = worst <= tol
        report.add("contract.4_streaming", ok,
                   "host contract 4: " + (f"blocks of {ctx.blocks[0]} samples equal one call "
                                          f"(max difference {worst:.2g} of peak)" if ok else
                                          f"blocks differ from one long call by {worst:.2g} of "
                                          f"peak, more than float32 rounding ({tol:g}): "
                                          "streaming state is not carried across calls"),
                   value=worst, threshold=f"<= {tol:g} of peak", details=details)

    @_named("contract.11_batch")
    def _check_batches(self, report, module, ctx: _Ctx) -> None:
        self._set_deterministic(module)
        problems = []
        for m in METHODS:
            _, _, out_dim, out_ratio = _params(module, m)
            n = ctx.past_latency()
            x1 = _input_for(module, m, n)
            self._reset(module)
            y1 = _call(module, m, x1)
            tol = 1e-5 * float(y1.abs().max() + 1e-12)
            for b in (4, 64):
                self._reset(module)
                y = _call(module, m, x1.expand(b, -1, -1).contiguous())
                ps = self._output_problems(y, (b, out_dim, n // out_ratio))
                if ps:
                    problems.append(f"{m} batch {b}: {'; '.join(ps)}")
                elif not torch.allclose(y, y1.expand_as(y), rtol=1e-4, atol=tol):
                    problems.append(f"{m} batch {b}: rows differ from the batch-1 output")
        self._reset(module)
        report.add("contract.11_batch", not problems,
                   "host contract 11: " + ("; ".join(problems[:3]) if problems else
                                           "batches of 4 and 64 (mc.nn~ voices) give the batch-1 "
                                           "output on every row, for every method"))

    @_named("contract.25_noncontiguous")
    def _check_noncontiguous(self, report, module, ctx: _Ctx) -> None:
        self._set_deterministic(module)
        problems = []
        for m in METHODS:
            in_dim, in_ratio, _, _ = _params(module, m)
            x = _input_for(module, m, ctx.past_latency())
            # nn~'s tensor: (in_dim, batch, T) permuted to (batch, in_dim, T)
            view = x.permute(1, 0, 2).contiguous().permute(1, 0, 2)
            if in_dim > 1 and view.is_contiguous():
                view = x.transpose(0, 1).contiguous().transpose(0, 1)
            strided = torch.zeros(x.shape[0], x.shape[1], x.shape[2] * 2)
            strided[..., ::2] = x
            strided = strided[..., ::2]
            self._reset(module)
            ref = _call(module, m, x)
            for name, v in (("permuted", view), ("strided", strided)):
                self._reset(module)
                try:
                    y = _call(module, m, v)
                except Exception as exc:
                    problems.append(f"{m} ({name} view): {type(exc).__name__}: {exc}")
                    continue
                if not torch.allclose(y, ref, rtol=0, atol=1e-6 * float(ref.abs().max() + 1e-12)):
                    problems.append(f"{m} ({name} view): output differs from a contiguous input")
        self._reset(module)
        report.add_contract("contract.25_noncontiguous", problems,
                            "non-contiguous inputs (as nn~ passes them) give the "
                            "same output as contiguous ones")

    @_named("device.moves_with_module")
    def _check_moves_with_module(self, report, module, ctx: _Ctx) -> None:
        """Hosts move a model with ``Module.to``: nn~'s ``gpu`` message calls
        ``model.to(cuda)`` (or mps) and feeds it blocks on that device. A tensor that does
        not move (a graph constant, a plain list) then meets the block on another device;
        nn~ prints the error and plays silence. Without a GPU this is checked through the
        same path with a dtype: a copy of the file moved ``.to(torch.float64)`` must take
        float64 blocks and give the float32 file's output (a file that cannot be made
        deterministic, such as acids-rave's: finite float64 blocks of the right shape)."""
        moved = torch.jit.load(str(ctx.artifact), map_location="cpu")
        moved.to(torch.float64)
        stuck = sorted({str(t.dtype) for t in list(moved.parameters()) + list(moved.buffers())
                        if t.is_floating_point() and t.dtype != torch.float64})
        problems = [f"tensors left in {', '.join(stuck)}"] if stuck else []
        # a file that samples (no deterministic switch) draws other numbers in float64:
        # then only the moved copy's output type, shape and values' finiteness are checked
        comparable = self._set_deterministic(module) and self._set_deterministic(moved)
        for m in METHODS:
            x = _input_for(module, m, ctx.past_latency())
            self._reset(module)
            ref = _call(module, m, x)
            self._reset(moved)
            problems += _copy_problems(m, "the moved copy", lambda: _call(moved, m, x.double()),
                                       ref, torch.float64, comparable)
        self._reset(module)
        compared = "" if comparable else NOT_COMPARED
        report.add("device.moves_with_module", not problems,
                   ("every weight moves with .to() (checked as .to(torch.float64): no GPU "
                    f"here), as nn~'s gpu message needs{compared}" if not problems else
                    "the file does not move with .to() (checked as .to(torch.float64)), so "
                    "nn~'s gpu message would leave it silent: " + "; ".join(problems[:3])
                    + ". Export it again with this rave-deploy (its files keep every weight "
                    "as a buffer), or keep nn~'s gpu off for it"))

    @_named("contract.9_nn_tilde_emulation")
    def _check_nn_tilde_host(self, report, module, ctx: _Ctx) -> None:
        """Points 9 and 12: the emulated host equals direct calls delayed by its latency."""
        self._set_deterministic(module)
        problems, latencies = [], {}
        configs = [(0, "unthreaded"), (ctx.blocks[0], f"threaded {ctx.blocks[0]}")]
        for m in METHODS:
            in_dim, in_ratio, out_dim, out_ratio = _params(module, m)
            for buffer_size, label in configs:
                host = NnTildeHost(module, m, buffer_size)
                n = host.buffer
                total = 3 * n + host.latency + PD_VECTOR
                total = -(-total // n) * n
                x = _input_for(module, m, total, seed=3)
                held = np.repeat(x.numpy(), in_ratio, -1) if in_ratio > 1 else x.numpy()
                self._reset(module)
                emulated = host.run(held)
                self._reset(module)
                step = n // in_ratio
                direct = np.concatenate([_call(module, m, x[..., i:i + step]).numpy()
                                         for i in range(0, x.shape[-1], step)], -1)
                direct = np.repeat(direct, out_ratio, -1) if out_ratio > 1 else direct
                lat = host.latency
                expected = np.zeros_like(emulated)
                expected[..., lat:] = direct[..., :total - lat]
                peak = float(np.abs(direct).max()) or 1.0
                err = float(np.abs(emulated - expected).max()) / peak
                latencies[f"{m} {label}"] = lat
                if host.errors:
                    problems.append(f"{m} ({label}): nn~ reports '{host.errors[0]}'")
                elif err > 1e-6:
                    problems.append(f"{m} ({label}, buffer {n}): nn~'s output is not the model's "
                                    f"delayed by {lat} samples (error {err:.2g} of peak)")
        self._reset(module)
        report.add("contract.9_nn_tilde_emulation", not problems,
                   "host contract 9: " + ("; ".join(problems[:3]) if problems else
                                          "in an emulation of nn~ (64-sample vectors, input "
                                          "decimation keeping the last sample of each group, "
                                          "output hold), every method gives the direct output"),
                   details={"host_latency_samples": latencies})
        fwd = {k: v for k, v in latencies.items() if k.startswith("forward")}
        r_high = max(max(_params(module, mm)[1], _params(module, mm)[3]) for mm in METHODS)
        model_latency = int(ctx.sidecar.get("latency_samples") or 0)
        sr = int(ctx.sidecar.get("sample_rate") or ctx.model.sr)
        table = ", ".join(f"{k.split(' ', 1)[1]}: {v} (+{model_latency} model = "
                          f"{1000 * (v + model_latency) / sr:.1f} ms)" for k, v in fwd.items())
        report.target_specific["nn_tilde_host_latency"] = fwd
        ok = not problems and all(
            v == (nn_tilde_latency(r_high, r_high)["unthreaded"] if "unthreaded" in k else
                  nn_tilde_latency(int(k.rsplit(" ", 1)[1]), r_high)["threaded"])
            for k, v in fwd.items())
        report.add("contract.12_host_latency", ok,
                   f"host contract 12: nn~ adds, for forward, {table}; threaded 2N-64, "
                   f"unthreaded R-64 with R = {r_high} (the largest ratio of all methods)",
                   details={"host_latency_samples": fwd, "model_latency_samples": model_latency})

    # ------------------------------------------------------------------ generic checks
    def _generic_checks(self, report: "CheckReport", module, ctx: _Ctx) -> None:
        from ..check.harness import nn_tilde_total_latency, run_forward_timing, run_method_checks
        from ..check.runner import TorchScriptRunner
        if not self._set_deterministic(module):
            report.add("parity.forward", False, "the file has no set_deterministic: parity "
                       "cannot switch randomness off")
            return
        sc = ctx.sidecar
        factor = int(sc.get("resample_factor") or 1)
        delays = {"encode": int(sc.get("encode_latency_samples",
                                       self._attr(module, "encode_latency_samples") or 0)),
                  "decode": int(sc.get("decode_latency_samples",
                                       self._attr(module, "decode_latency_samples") or 0)),
                  "forward": int(sc.get("latency_samples",
                                        self._attr(module, "latency_samples") or 0))}
        fidelity = float(sc.get("fidelity") or 0.95)
        out_channels = _params(module, "forward")[2]
        mix = self._attr(module, "channel_mix")
        mixed = out_channels < int(ctx.model.n_channels) and isinstance(mix, torch.Tensor)
        reference = HostReference(ctx.model, fidelity, factor, delays,
                                  mix=mix.numpy() if mixed else None)
        blocks = [n for n in ctx.blocks if n % reference.ratio == 0] or [reference.ratio]
        runners = {}
        for m in METHODS:
            runner = TorchScriptRunner(module, m, _params(module, m),
                                       lambda batch: self._reset(module, batch))
            if runner.out_ratio == 1 and runner.out_channels != reference.n_channels:
                runner = _HostChannels(runner, reference.n_channels)
            runners[m] = runner
            run_method_checks(report, runner, reference, m, blocks, ctx.options)
        if report.summary.get("latency_samples") is not None:  # latency.forward ran
            # nn~ loads any TorchScript file: its total latency there, per host block
            report.summary["host_latency"] = nn_tilde_total_latency(
                report.summary["latency_samples"], blocks, reference.ratio, reference.sr)
        run_forward_timing(report, runners["forward"], reference, blocks, ctx.options)
