"""The host contract checks every TorchScript host shares (nn~, SuperCollider, RAVE VST):
not a target (the leading underscore keeps it out of target discovery).

:class:`~._torchscript.TorchScriptTarget` loads the file with ``torch.jit.load`` as the
hosts do (``contract.1_load``) and runs these, which verify the host contracts
(``host-contracts.md`` of the reference material, points 1-12 and 25) one named check
each, ``contract.<point>_<what>``:

* loading, the archive's file-format version, no lazy state (1, 2);
* exact output shapes, dtype, contiguity, finiteness for every method and host block
  size, streaming continuity (3, 4), forbidden top-level names (5);
* methods, ``*_params``, labels, ratios (6-8), attributes and setters (10), batches of
  1, 4 and 64 (11), non-contiguous input (25);
* :class:`~rave_deploy.nn_tilde_emulation.NnTildeHost`, an emulation of nn~'s buffering (64-sample vectors, circular
  buffers, input decimation, output hold, threaded and unthreaded processing), whose
  output must equal the module called directly, delayed by the latency nn~ adds (9, 12).

Besides: ``style.transfer`` (a v3 file's style attributes) and ``device.moves_with_module``
(``Module.to``, as nn~'s ``gpu`` message calls it). Each check of :func:`contract_checks`
takes ``(report, module, ctx)``; :func:`check_file_format` and :func:`check_ops` (point 1)
run before the file's parameters are read.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Sequence

import numpy as np
import torch

from ..nn_tilde_emulation import PD_VECTOR, NnTildeHost, nn_tilde_latency
from ..torchscript import FORBIDDEN_NAMES, STYLE_ATTRIBUTES, file_format_version
from ._torchscript_calls import (METHODS, NOT_COMPARED, CheckContext, attr, call, copy_problems,
                                 error_line, input_for, named, output_problems, params,
                                 reset, set_deterministic, state_shapes)

if TYPE_CHECKING:  # (annotations only; the checks import the harness when they run)
    from ..check.result import CheckReport

#: Highest TorchScript file-format version libtorch 2.5.1 (nn~ 1.6) reads
#: (caffe2/serialize/versions.h: kMaxSupportedFileFormatVersion).
LIBTORCH_2_5_MAX_FILE_FORMAT = 10
#: Op namespaces every libtorch build has; other namespaces are in some builds only.
PORTABLE_OP_NAMESPACES = ("aten", "prim")
#: What a file whose ops are in these namespaces needs of the host's libtorch.
BUILD_SPECIFIC_OPS = {
    "mkldnn": "a libtorch 2.0 or later built with oneDNN (PyTorch's x86-64 builds for "
              "Linux, Windows and Intel macOS)",
}


def contract_checks() -> List[Callable]:
    """The checks run with a :class:`~._torchscript_calls.CheckContext`, in the order
    they run (a host's own checks follow them)."""
    return [check_methods, check_ratios, check_forbidden_names, check_no_lazy_state,
            check_shapes, check_attributes, check_streaming, check_batches,
            check_noncontiguous, check_moves_with_module, check_nn_tilde_host,
            check_style_transfer]


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


def _is_pow2(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


# ------------------------------------------------------------------ points 1-12, 25
def check_file_format(report: "CheckReport", artifact: Path) -> None:
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


def check_ops(report: "CheckReport", module, sidecar: Dict[str, object]) -> None:
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


@named("contract.6_methods")
def check_methods(report, module, ctx: CheckContext) -> None:
    problems = []
    methods = list(module.get_methods()) if module._c._has_method("get_methods") else []
    for m in METHODS:
        if m not in methods:
            problems.append(f"`{m}` is not listed by get_methods() ({methods})")
        if not module._c._has_method(m):
            problems.append(f"no method `{m}`")
    for m in methods:
        p = attr(module, f"{m}_params")
        if not isinstance(p, torch.Tensor) or p.shape != (4, ) or p.is_floating_point():
            problems.append(f"`{m}_params` must be an int tensor [in_channels, in_ratio, "
                            f"out_channels, out_ratio], got {p!r}")
            continue
        for side, idx in (("input", 0), ("output", 2)):
            labels = attr(module, f"{m}_{side}_labels")
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


@named("contract.7_ratios")
def check_ratios(report, module, ctx: CheckContext) -> None:
    enc, dec, fwd = (params(module, m) for m in METHODS)
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
    file_sr, expect_sr = attr(module, "sr"), ctx.sidecar.get("sample_rate")
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
    bad_blocks = _blocks_off_ratios(ratios, ctx.blocks)
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


def _blocks_off_ratios(ratios: Sequence[int], blocks: Sequence[int]) -> List[int]:
    """The host blocks contract 8 refuses: smaller than, or not a multiple of, one of the
    methods' ``ratios``."""
    return [n for n in blocks if n < max(ratios) or any(n % r for r in ratios)]


@named("contract.5_forbidden_names")
def check_forbidden_names(report, module, ctx: CheckContext) -> None:
    found = [n for n in FORBIDDEN_NAMES if module._c.hasattr(n)]
    report.add("contract.5_forbidden_names", not found,
               "host contract 5: " + (f"top-level {found} present: hosts redirect on these "
                                      "names (rave-supercollider loads `model` instead)"
                                      if found else
                                      f"no top-level {', '.join(FORBIDDEN_NAMES)}"))


@named("contract.2_no_lazy_state")
def check_no_lazy_state(report, module, ctx: CheckContext) -> None:
    reset(module)
    before = state_shapes(module)
    problems = [f"{n} has shape {s} (expected (batch, channels, length))"
                for n, s in before.items() if len(s) != 3 or s[0] < 1]
    if not before:
        problems.append("no streaming state buffers (named `state`) found")
    for m in METHODS:
        in_dim, in_ratio, _, _ = params(module, m)
        call(module, m, input_for(module, m, ctx.ratio))
    after = state_shapes(module)
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
        call(module, "forward", input_for(module, "forward", ctx.ratio))
    except Exception as exc:
        problems.append(f"a setter outside inference mode between inference calls "
                        f"fails: {type(exc).__name__}: {exc}")
    reset(module)
    report.add_contract("contract.2_no_lazy_state", problems,
                        f"{len(before)} streaming states exist before the "
                        "first call and keep their shape through batch-1 "
                        "calls")


@named("contract.3_output")
def check_shapes(report, module, ctx: CheckContext) -> None:
    try:
        off_ratios = _blocks_off_ratios([params(module, m)[i] for m in METHODS for i in (1, 3)],
                                        ctx.blocks)
    except Exception:  # (contract.7/8 report unreadable *_params)
        off_ratios = []
    for m in METHODS:
        in_dim, in_ratio, out_dim, out_ratio = params(module, m)
        problems, raised, failed_blocks = [], False, []
        for n in ctx.blocks:
            reset(module)
            x = input_for(module, m, n)
            try:
                y = call(module, m, x)
            except Exception as exc:  # a call that raises: which call, and the error's line
                problems.append(f"block {n}: {m}(float32 {tuple(x.shape)}) raised "
                                f"{error_line(exc)}")
                raised = True
                failed_blocks.append(n)
                continue
            found = output_problems(y, (1, out_dim, n // out_ratio))
            problems += [f"block {n}: {p}" for p in found]
            if found:
                failed_blocks.append(n)
        msg = (f"host contract 3: {m} returns float32 (1, {out_dim}, N / {out_ratio}) "
               f"contiguous and finite at N = {ctx.blocks}")
        if problems:
            why = (" (the host's call fails)" if raised else
                   " (nn~ repeats stale audio on a wrong size)")
            if failed_blocks and set(failed_blocks) <= set(off_ratios):
                why = (f" (follows from contract.8: block(s) {sorted(set(failed_blocks))} "
                       "are not multiples of the ratios)")
            msg = f"host contract 3: {m}: " + "; ".join(problems[:4]) + why
        report.add(f"contract.3_output_{m}", not problems, msg)
    reset(module)


@named("contract.10_attributes")
def check_attributes(report, module, ctx: CheckContext) -> None:
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
        codes = attr(module, f"{a}_params")
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
        x = input_for(module, "forward", 4 * ctx.ratio)
        reset(module)
        y1 = call(module, "forward", x)
        reset(module)
        y2 = call(module, "forward", x)
        if not torch.equal(y1, y2):
            problems.append("set_deterministic(True) does not make forward repeatable")
    reset(module)
    report.add_contract("contract.10_attributes", problems,
                        f"attributes {[a for a in attrs if a != 'none']}: "
                        "typed params, getters return lists, setters return 0")


@named("style.transfer")
def check_style_transfer(report, module, ctx: CheckContext) -> None:
    """v3 files (acids-rave's style attributes): learning the target leaves the output
    as it is, learning a source then transfers (the output changes, stays finite, and
    the statistics survive ``reset()``), and the two resets give the plain output back.
    acids-rave 2.3.1's own v3 files have no ``reset()`` to compare runs with (and
    their attributes reach no layer: see docs/style-transfer.md)."""
    attrs = module.get_attributes() if module._c._has_method("get_attributes") else []
    if not set(STYLE_ATTRIBUTES) <= set(attrs):
        return  # no AdaIN layers: nothing to teach
    if not (module._c._has_method("reset") and set_deterministic(module)):
        report.add("style.transfer", False, "style transfer: the file has no reset() or "
                   "set_deterministic, so its runs cannot be compared")
        return
    # a copy of the file, untaught (a file exported with --style-* starts taught): the
    # other checks see the file as it ships
    module = torch.jit.load(str(ctx.artifact), map_location="cpu")
    set_deterministic(module)
    if attr(module, "stereo") is True and module._c._has_method("set_stereo_mode"):
        module.set_stereo_mode(torch.tensor([[False]]))   # as for the other checks
    module.set_reset_target(True)
    module.set_reset_source(True)  # both applied by the first call below
    block = ctx.blocks[0]
    source = input_for(module, "forward", 6 * block, seed=0)
    target = 3.0 * input_for(module, "forward", 6 * block, seed=7)

    def run(x: torch.Tensor) -> torch.Tensor:
        reset(module)
        return torch.cat([call(module, "forward", x[..., i:i + block])
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
    reset(module)
    detail = "; ".join(problems) if problems else (
        f"learn_target passes audio through, learn_source then transfers (output changed "
        f"by {change:.2f} of its peak at block {block}), reset_target / reset_source "
        "undo it")
    report.add("style.transfer", not problems, f"style transfer: {detail}")


@named("contract.4_streaming")
def check_streaming(report, module, ctx: CheckContext) -> None:
    set_deterministic(module)
    worst = 0.0
    details = {}
    for m in METHODS:
        in_dim, in_ratio, _, _ = params(module, m)
        n = max(ctx.blocks[0], ctx.ratio)
        x = input_for(module, m, max(4 * n, ctx.past_latency(n // ctx.ratio)))
        reset(module)
        whole = call(module, m, x)
        reset(module)
        step = n // in_ratio
        parts = torch.cat([call(module, m, x[..., i:i + step])
                           for i in range(0, x.shape[-1], step)], -1)
        peak = float(whole.abs().max()) or 1.0
        err = float((whole - parts).abs().max()) / peak
        details[m] = err
        worst = max(worst, err)
    reset(module)
    from ..check.tolerances import tolerances_of
    tol = tolerances_of(ctx.options).blocks_max_rel   # the blocks.* checks' bound
    ok = worst <= tol
    report.add("contract.4_streaming", ok,
               "host contract 4: " + (f"blocks of {ctx.blocks[0]} samples equal one call "
                                      f"(max difference {worst:.2g} of peak)" if ok else
                                      f"blocks differ from one long call by {worst:.2g} of "
                                      f"peak, more than float32 rounding ({tol:g}): "
                                      "streaming state is not carried across calls"),
               value=worst, threshold=f"<= {tol:g} of peak", details=details)


@named("contract.11_batch")
def check_batches(report, module, ctx: CheckContext) -> None:
    set_deterministic(module)
    problems = []
    for m in METHODS:
        _, _, out_dim, out_ratio = params(module, m)
        n = ctx.past_latency()
        x1 = input_for(module, m, n)
        reset(module)
        y1 = call(module, m, x1)
        tol = 1e-5 * float(y1.abs().max() + 1e-12)
        for b in (4, 64):
            reset(module)
            y = call(module, m, x1.expand(b, -1, -1).contiguous())
            ps = output_problems(y, (b, out_dim, n // out_ratio))
            if ps:
                problems.append(f"{m} batch {b}: {'; '.join(ps)}")
            elif not torch.allclose(y, y1.expand_as(y), rtol=1e-4, atol=tol):
                problems.append(f"{m} batch {b}: rows differ from the batch-1 output")
    reset(module)
    report.add("contract.11_batch", not problems,
               "host contract 11: " + ("; ".join(problems[:3]) if problems else
                                       "batches of 4 and 64 (mc.nn~ voices) give the batch-1 "
                                       "output on every row, for every method"))


@named("contract.25_noncontiguous")
def check_noncontiguous(report, module, ctx: CheckContext) -> None:
    set_deterministic(module)
    problems = []
    for m in METHODS:
        in_dim, in_ratio, _, _ = params(module, m)
        x = input_for(module, m, ctx.past_latency())
        # nn~'s tensor: (in_dim, batch, T) permuted to (batch, in_dim, T)
        view = x.permute(1, 0, 2).contiguous().permute(1, 0, 2)
        if in_dim > 1 and view.is_contiguous():
            view = x.transpose(0, 1).contiguous().transpose(0, 1)
        strided = torch.zeros(x.shape[0], x.shape[1], x.shape[2] * 2)
        strided[..., ::2] = x
        strided = strided[..., ::2]
        reset(module)
        ref = call(module, m, x)
        for name, v in (("permuted", view), ("strided", strided)):
            reset(module)
            try:
                y = call(module, m, v)
            except Exception as exc:
                problems.append(f"{m} ({name} view): {type(exc).__name__}: {exc}")
                continue
            if not torch.allclose(y, ref, rtol=0, atol=1e-6 * float(ref.abs().max() + 1e-12)):
                problems.append(f"{m} ({name} view): output differs from a contiguous input")
    reset(module)
    report.add_contract("contract.25_noncontiguous", problems,
                        "non-contiguous inputs (as nn~ passes them) give the "
                        "same output as contiguous ones")


@named("device.moves_with_module")
def check_moves_with_module(report, module, ctx: CheckContext) -> None:
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
    comparable = set_deterministic(module) and set_deterministic(moved)
    for m in METHODS:
        x = input_for(module, m, ctx.past_latency())
        reset(module)
        ref = call(module, m, x)
        reset(moved)
        problems += copy_problems(m, "the moved copy", lambda: call(moved, m, x.double()),
                                  ref, torch.float64, comparable)
    reset(module)
    compared = "" if comparable else NOT_COMPARED
    report.add("device.moves_with_module", not problems,
               ("every weight moves with .to() (checked as .to(torch.float64): no GPU "
                f"here), as nn~'s gpu message needs{compared}" if not problems else
                "the file does not move with .to() (checked as .to(torch.float64)), so "
                "nn~'s gpu message would leave it silent: " + "; ".join(problems[:3])
                + ". Export it again with this rave-deploy (its files keep every weight "
                "as a buffer), or keep nn~'s gpu off for it"))


@named("contract.9_nn_tilde_emulation")
def check_nn_tilde_host(report, module, ctx: CheckContext) -> None:
    """Points 9 and 12: the emulated host equals direct calls delayed by its latency."""
    set_deterministic(module)
    problems, latencies = [], {}
    configs = [(0, "unthreaded"), (ctx.blocks[0], f"threaded {ctx.blocks[0]}")]
    for m in METHODS:
        in_dim, in_ratio, out_dim, out_ratio = params(module, m)
        for buffer_size, label in configs:
            host = NnTildeHost(module, m, buffer_size)
            n = host.buffer
            total = 3 * n + host.latency + PD_VECTOR
            total = -(-total // n) * n
            x = input_for(module, m, total, seed=3)
            held = np.repeat(x.numpy(), in_ratio, -1) if in_ratio > 1 else x.numpy()
            reset(module)
            emulated = host.run(held)
            reset(module)
            step = n // in_ratio
            direct = np.concatenate([call(module, m, x[..., i:i + step]).numpy()
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
    reset(module)
    report.add("contract.9_nn_tilde_emulation", not problems,
               "host contract 9: " + ("; ".join(problems[:3]) if problems else
                                      "in an emulation of nn~ (64-sample vectors, input "
                                      "decimation keeping the last sample of each group, "
                                      "output hold), every method gives the direct output"),
               details={"host_latency_samples": latencies})
    fwd = {k: v for k, v in latencies.items() if k.startswith("forward")}
    r_high = max(max(params(module, mm)[1], params(module, mm)[3]) for mm in METHODS)
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
