"""``rave-deploy check``: prove an exported artefact right, the way its host will use it.

>>> from rave_deploy.check import check_artifact
>>> report = check_artifact("exports/my_run.ts")     # against the run its sidecar names
>>> report.passed, [c.name for c in report.failures()]

Importing the package imports nothing else: the names below are imported from their
modules (:mod:`.artifacts`, :mod:`.checking`, :mod:`.result`; the first two import
torch: seconds) when first used (PEP 562), so that the command line imports
:mod:`.output` without torch (an error under ``--json`` prints its JSON object at once).
"""
from __future__ import annotations

from rave_core.lazy_names import lazy_names

#: Each public name, and the module of this package it comes from.
_FROM = {
    "COMMON_SUMMARY": "checking",
    "CheckPlan": "artifacts",
    "CheckReport": "result",
    "CheckResult": "result",
    "CheckUsageError": "artifacts",
    "SIDECAR_FACTS": "checking",
    "SIGNATURES": "artifacts",
    "check_artifact": "checking",
    "check_sidecar_facts": "checking",
    "expand_artifacts": "artifacts",
    "given_path": "artifacts",
    "identify": "artifacts",
    "open_reference": "checking",
    "prepare_check": "artifacts",
    "suffix_kinds": "artifacts",
    "suffix_targets": "artifacts",
}

__all__ = ["COMMON_SUMMARY", "CheckPlan", "CheckReport", "CheckResult", "CheckUsageError",
           "check_artifact", "check_sidecar_facts", "expand_artifacts", "given_path",
           "identify", "open_reference", "prepare_check"]


__getattr__, __dir__ = lazy_names(globals(), _FROM)
