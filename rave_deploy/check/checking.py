"""Checking one artefact against the eager model of the run it was exported from
(:func:`check_artifact`), that run loaded once for every artefact exported from it
(:func:`open_reference`)."""
from __future__ import annotations

import json
from typing import Dict, Optional

from rave_core.run import RunError, open_run

from ..sidecar import shown_path, sidecar_file_of
from ..targets import CheckOptions, get_target
from .artifacts import CheckPlan, CheckUsageError, prepare_check
from .result import SUMMARY_KEYS, TARGET_SPECIFIC, CheckReport, documented_summary


def open_reference(plan: CheckPlan, run: Optional[str] = None):
    """The run ``plan`` checks against, loaded (:func:`rave_core.run.open_run`).
    ``rave-deploy check`` loads each run once before any check, so that a run that cannot
    be loaded (a broken config, a damaged checkpoint) is refused before the checks of the
    other artefacts have run, not after.

    Raises:
        RunError: the message names the sidecar the run came from, when it did.
    """
    try:
        return open_run(plan.source, ema=plan.ema_weights)
    except RunError as err:
        if run:
            raise
        # The checkpoint named in the sidecar moved or changed since the export.
        raise RunError(f"{err} (the run named in {sidecar_file_of(plan.artifact)}); pass --run "
                       "RUN to check against the run it was exported from") from None


def check_artifact(artifact, run: Optional[str] = None,
                   options: Optional[CheckOptions] = None, loaded=None) -> CheckReport:
    """Check ``artifact`` against the eager model of its run (``run``, else the
    checkpoint named in its sidecar). ``loaded``: that run, already opened by
    :func:`open_reference` (every check copies the model it is given, so one run serves
    the artefacts exported from it)."""
    plan = prepare_check(artifact, run)
    artifact, sidecar = plan.artifact, plan.sidecar
    options = options or CheckOptions()
    loaded = loaded or open_reference(plan, run)
    # the weights loaded, not only the file on disk, are those the artefact was exported
    # from (the file could change between the two: training saving over it)
    expected = (sidecar.get("source") or {}).get("checkpoint_sha256") \
        if isinstance(sidecar.get("source"), dict) else None
    if isinstance(expected, str) and expected and loaded.checkpoint_sha256 != expected.lower():
        raise CheckUsageError(f"the checkpoint {loaded.checkpoint_path} changed while it was "
                              "being read (SHA-256 differs from the export's): check again "
                              "once nothing writes it, or pass --run with the checkpoint it "
                              "was exported from")
    model = loaded.model
    style = sidecar.get("style") if isinstance(sidecar.get("style"), dict) else None
    style_audio = plan.style  # found unchanged by prepare_check, with the paths to read
    if style_audio is not None:
        model = _taught_as_exported(model, style_audio, sidecar, loaded.checkpoint_sha256)
    report = get_target(plan.target).check(artifact, sidecar, model, options)
    # which checkpoint it was checked against, as the user knows it (in --json and the
    # HTML report): relative to here, or as the sidecar (or --run) gives it, not absolute
    report.summary["checkpoint"] = shown_path(loaded.checkpoint_path,
                                              plan.recorded or str(loaded.checkpoint_path))
    if sidecar:
        check_sidecar_facts(report, sidecar)
    if style:  # which audio the file, and so its reference, was taught from, as for the run
        report.summary["style"] = {side: shown_path(getattr(style_audio, side),
                                                    str(style[side]["path"]))
                                   for side in ("target", "source")
                                   if isinstance(style.get(side), dict)}
    # one shape for every target (rave_deploy.check.result's docstring), for --json and
    # the report page alike
    report.summary = documented_summary(report.summary)
    return report


#: Keys of ``report.summary`` (``check --json``'s ``summary``) that every artefact has, so
#: a script reads them without knowing the target (:data:`~.result.SUMMARY_KEYS`; each
#: documented in :mod:`rave_deploy.check.result`), then ``target_specific``.
COMMON_SUMMARY = SUMMARY_KEYS + (TARGET_SPECIFIC,)


#: Sidecar fields a host integrator builds on, which a check also establishes (in
#: ``report.summary``): the latency to compensate, the rate, the block, the ratio.
SIDECAR_FACTS = ("latency_samples", "sample_rate", "block_size", "ratio")


def check_sidecar_facts(report: CheckReport, sidecar: Dict[str, object]) -> None:
    """``contract.sidecar``: the sidecar states what the check found, for each of
    :data:`SIDECAR_FACTS` both give. An edited sidecar, or another export's, misleads the
    people who compensate latency or set the host's rate from it."""
    found = {k: report.summary[k] for k in SIDECAR_FACTS
             if k in sidecar and report.summary.get(k) is not None}
    if not found:
        return
    wrong = [f"{k} {sidecar[k]} (the check found {v})" for k, v in found.items()
             if str(sidecar[k]) != str(v)]
    if wrong:
        message = (f"{sidecar_file_of(report.artifact).name} states " + "; ".join(wrong)
                   + ": re-export, or mend the sidecar")
    else:
        message = ("the sidecar states what the check found: "
                   + ", ".join(f"{k} {v}" for k, v in found.items()))
    report.add("contract.sidecar", not wrong, message)


#: the last model taught by ``_taught_as_exported``: ``rave-deploy check exports/*``
#: checks every target of one export, all taught alike (teaching takes seconds a file)
_LAST_TAUGHT: Dict[str, object] = {}


def _taught_as_exported(model, style, sidecar, checkpoint_sha256: str):
    """The run's model taught ``style`` (``CheckPlan.style``), as the sidecar says it was,
    so the reference computes what the file was taught."""
    from ..style_teaching import teach_style

    origin = sidecar.get("source")
    key = json.dumps([checkpoint_sha256, origin.get("ema_weights") if isinstance(origin, dict) else None,
                      sidecar["style"]], sort_keys=True)
    if _LAST_TAUGHT.get("key") != key:
        _LAST_TAUGHT.update(key=key, model=teach_style(model, style))
    return _LAST_TAUGHT["model"]


__all__ = ["COMMON_SUMMARY", "SIDECAR_FACTS", "check_artifact", "check_sidecar_facts",
           "open_reference"]
