"""What `rave-deploy check` states about each artefact, and the work it does to know it.

- every artefact's ``summary`` (``check --json``) has one shape whatever its target: the
  keys documented in :mod:`rave_deploy.check.result`, null where a thing does not apply,
  and what only one target measures under ``target_specific`` (speeds that are not a
  host's streaming speed kept out of ``rtf``; nn~'s latency only for files nn~ loads);
- the methods of one report are checked against one reference (its rate and ratio);
- a discrete model's checks measure the decoder's reach once and run its encoder once
  per signal, with every result as it was.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

import rave_deploy.check.harness as harness
import rave_deploy.check.near_ties as near_ties
import rave_deploy.check.plan as plan
import rave_deploy.check.result as result_module
from rave_deploy.check import COMMON_SUMMARY, check_artifact
from rave_deploy.check.harness import run_method_checks
from rave_deploy.check.report import format_table, reports_to_json, write_html_report
from rave_deploy.check.result import CheckReport
from rave_deploy.check.runner import EagerReference
from rave_deploy.export import export_run
from rave_deploy.model import DeployModel
from rave_deploy.nn_tilde_emulation import nn_tilde_latency
from rave_deploy.targets import CheckOptions, ExportOptions, registry

from .conftest import small_model
from .runs import export_quietly, make_run
from .test_check_harness import CoreRunner, _model
from .test_discrete_export import spread_codebooks

pytestmark = pytest.mark.usefixtures("one_thread")

TARGET_SPECIFIC = "target_specific"

FAST = dict(seconds=2.0, rtf_seconds=0.2)
#: the files nn~ loads: the TorchScript targets' (nn_tilde, supercollider, vst)
TORCHSCRIPT = {name for name, t in registry().items() if t.suffix == ".ts"}
#: what each target puts under ``target_specific`` (and nothing else): the TorchScript
#: files nn~'s buffering; a target not named here puts nothing there (a new target that
#: does fails test_every_targets_summary_has_the_documented_keys: name it here, and
#: document its keys in rave_deploy/check/result.py)
TARGET_SPECIFIC_KEYS = {
    **{name: {"nn_tilde_host_latency"} for name in TORCHSCRIPT},
    "onnx": {"rtf_offline"}, "minifusion": {"rtf_numpy_emulation", "float32_max_rel_error"}}
#: the run each target is exported from for :func:`reports`, with the host blocks it is
#: checked at: BRAVE, and v2 for the targets BRAVE's export skips (the VST: BRAVE's ratio
#: is below its minimum)
RUN_BLOCKS = {"brave": [512, 2048], "v2": [2048, 4096]}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A folder with a tiny BRAVE run, ``runs/brave``."""
    root = tmp_path_factory.mktemp("check_summary")
    make_run(root / "runs", ("brave",), name="brave", unit_gains=True)
    return root


@pytest.fixture(scope="module")
def reports(root):
    """Every registered target's check of a tiny run's export, by target: a BRAVE run's
    for the targets that serve it, a v2 run's for the others (the VST: BRAVE's ratio is
    below its minimum). A target neither serves fails here, naming it."""
    runs = {"brave": root / "runs" / "brave",
            "v2": make_run(root / "runs", ("v2",), name="v2", unit_gains=True)}
    files, run_of = {}, {}
    for which, run in runs.items():
        left = [t for t in registry() if t not in files]
        if not left:
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = export_run(run, left, root / "ex", ExportOptions(), explicit=False)
        for r in results:
            if r.path is not None:
                files[r.target], run_of[r.target] = r.path, which
    assert set(files) == set(registry()), (
        f"no run here serves {sorted(set(registry()) - set(files))}: add one to RUN_BLOCKS")
    return {t: check_artifact(p, options=CheckOptions(block_sizes=RUN_BLOCKS[run_of[t]],
                                                      **FAST))
            for t, p in sorted(files.items())}


@pytest.mark.parametrize("target", sorted(registry()))
def test_every_registered_target_is_exported_and_checked(reports, target):
    """Each target of the registry, a new one too without a word here, is exported from a
    small run and checked (:func:`reports`: the export and check every test of this file
    reads, so no time is added), and its checks pass (speed aside: a shared machine's)."""
    report = reports[target]
    assert report.results, target
    failed = [(r.name, r.message) for r in report.failures() if not r.name.startswith("rtf.")]
    assert not failed, (target, failed)


def _documented(indent: str):
    """The keys the summary's schema (rave_deploy.check.result's docstring) documents at
    ``indent``: top level (``""``) or in ``target_specific`` (four spaces)."""
    return set(re.findall(rf"^{indent}``(\w+)`` \(", result_module.__doc__, re.M))


def test_the_schema_documents_every_key():
    keys = result_module.SUMMARY_KEYS
    assert _documented("") == set(keys) | {TARGET_SPECIFIC}
    assert _documented("    ") == set().union(*TARGET_SPECIFIC_KEYS.values())
    assert COMMON_SUMMARY == keys + (TARGET_SPECIFIC,)


def test_every_targets_summary_has_the_documented_keys(reports):
    assert set(reports) == set(registry())
    data = json.loads(json.dumps(reports_to_json(list(reports.values())), allow_nan=False))
    for target, artefact in zip(reports, data["reports"]):
        # (speed depends on this machine's load: rtf.forward may fail on a busy one)
        failed = [(c["name"], c["message"]) for c in artefact["checks"]
                  if not c["passed"] and not c["name"].startswith("rtf.")]
        assert not failed, (target, failed)
        s = artefact["summary"]
        assert list(s) == list(COMMON_SUMMARY), target   # every key, in the documented order
        assert set(s[TARGET_SPECIFIC]) == TARGET_SPECIFIC_KEYS.get(target, set()), target
        assert list(reports[target].summary) == list(COMMON_SUMMARY)   # the page reads it too
        for key in ("size_bytes", "sample_rate", "ratio", "latency_samples"):
            assert isinstance(s[key], int), (target, key)
        assert isinstance(s["latency_ms"], float) and isinstance(s["checkpoint"], str)
        assert s["style"] is None and isinstance(s["parity"], dict) and s["parity"], target
        # null exactly where the documentation says it does not apply
        assert (s["block_size"] is not None) == (target == "anira"), target
        assert (s["latency_measured"] is None) == (target == "onnx"), target
        assert (s["host_latency"] is not None) == (target in TORCHSCRIPT), target
        # rtf is a host's streaming speed: not the offline graph's, not our emulation's
        assert (s["rtf"] is None) == (target in ("onnx", "minifusion")), target
        if s["rtf"] is None:
            assert s["realtime_block"] is None, target
        else:
            kept_up = [int(b) for b, row in s["rtf"].items() if row["passed"]]
            assert s["realtime_block"] == (min(kept_up) if kept_up else None), target
    by_target = {a["target"]: a["summary"] for a in data["reports"]}
    anira = Path(reports["anira"].artifact) / "rave-deploy.json"
    assert by_target["anira"]["block_size"] == json.loads(anira.read_text())["block_size"]
    assert by_target["onnx"][TARGET_SPECIFIC]["rtf_offline"] > 0
    numpy_speed = by_target["minifusion"][TARGET_SPECIFIC]["rtf_numpy_emulation"]
    assert set(numpy_speed) == {"512", "2048"} and numpy_speed["512"]["rtf"] > 0
    assert 0 <= by_target["minifusion"][TARGET_SPECIFIC]["float32_max_rel_error"] < 1e-3
    assert by_target["nn_tilde"][TARGET_SPECIFIC]["nn_tilde_host_latency"] == {
        "forward unthreaded": 64, "forward threaded 512": 2 * 512 - 64}
    # the total latency in nn~ is the model's plus what the emulation of nn~ measured
    # (unthreaded: buffer argument 0, at the ratio, one figure whatever the host block)
    nn_tilde = by_target["nn_tilde"]
    added = nn_tilde[TARGET_SPECIFIC]["nn_tilde_host_latency"]
    assert nn_tilde["host_latency"]["threaded"]["512"]["samples"] == \
        nn_tilde["latency_samples"] + added["forward threaded 512"]
    assert nn_tilde["host_latency"]["unthreaded"]["samples"] == \
        nn_tilde["latency_samples"] + added["forward unthreaded"]


def test_a_streaming_graph_with_a_fixed_block_states_it(root):
    from rave_deploy.targets import ExportOptions

    path = export_quietly(root / "runs" / "brave", ["onnx_streaming"], root / "fixed",
                          ExportOptions(block_size=256))["onnx_streaming"]
    report = check_artifact(path, options=CheckOptions(block_sizes=[512], **FAST))
    assert report.summary["block_size"] == 256
    assert not [r for r in report.failures() if not r.name.startswith("rtf.")]


def test_the_table_and_the_page_read_the_summary(reports, tmp_path):
    from rave_deploy.check.report import _row

    table = format_table(list(reports.values()))
    for target, report in reports.items():
        row, s = _row(report), report.summary
        assert "  ".join(row[k] for k in ("size", "latency")) in table
        assert row["latency"] == f"{s['latency_ms']:.2f} ms"
        if s["rtf"] is None:   # no host speed to show: not the offline or emulated one
            assert row["rtf"] == "-", target
        else:
            timed = s["rtf"][str(s["realtime_block"] or min(map(int, s["rtf"])))]
            assert row["rtf"] == f"{timed['rtf']:.2f}x @{timed['block']}", target
    page = write_html_report([reports["nn_tilde"], reports["anira"]], tmp_path / "r.html")
    text = page.read_text()
    # nn~'s latency table for the file nn~ loads, not for the anira folder
    assert text.count("total latency in nn~") == 1
    assert text.index("total latency in nn~") < text.index('id="artifact-1"')


def test_latency_names_the_host_that_loads_the_artefact(reports, tmp_path):
    """latency.forward stated nn~'s buffering for every target, ONNX graphs, anira
    folders and Minifusion's file included (nn~ loads none of them): it states what the
    artefact's own host adds where that host's contract states it, nn~'s figures for the
    nn~ file as before, and the page's latency table names that host."""
    lat = {t: next(r for r in report.results if r.name == "latency.forward")
           for t, report in reports.items() if t != "onnx"}   # offline: no host block
    nn = lat["nn_tilde"]
    d, ratio = nn.details["structural_samples"], reports["nn_tilde"].summary["ratio"]
    assert nn.details["nn_tilde_adds"] == {str(n): nn_tilde_latency(n, ratio)
                                           for n in (512, 2048)}
    assert (f"; in nn~: {d + 2 * 512 - 64} samples threaded at block 512 (" in nn.message
            and f"{d + ratio - 64} unthreaded (buffer argument 0)" in nn.message)
    for target in ("onnx_streaming", "anira", "minifusion", "vst"):
        result = lat[target]
        assert "nn~" not in result.message and "; in " not in result.message, target
        assert result.details["host"] is None and result.details["host_note"], target
        assert not [k for k in result.details if "nn_tilde" in k or k == "host_adds"], target
        assert result.message.startswith(f"model {result.details['structural_samples']} "
                                         "samples (")
        assert "state no figure" in result.message or "states no figure" in result.message
    # SuperCollider: NN.ar buffers as nn~ (contracts 12, 28); the RAVE UGens add R - 64
    sc = lat["supercollider"]
    assert sc.details["host"]["name"] == "SuperCollider" and "nn_tilde_adds" not in sc.details
    assert sc.details["host_adds"]["512"] == {"nn_ar_threaded": 2 * 512 - 64,
                                              "nn_ar_unthreaded": ratio - 64,
                                              "rave_ugens": ratio - 64}
    assert "in SuperCollider: " in sc.message and "nn~" not in sc.message
    page = write_html_report(list(reports.values()), tmp_path / "all.html").read_text()
    sections = dict(zip(reports, page.split('<section class="card"')[1:]))
    assert page.count("total latency in nn~") == 1
    assert "total latency in nn~" in sections["nn_tilde"]
    assert "total latency in SuperCollider" in sections["supercollider"]
    for target in ("onnx", "onnx_streaming", "anira", "minifusion"):   # the VST's file
        assert "nn~" not in sections[target], target    # is checked as nn~ loads it too
    assert "the RAVE VST adds its buffer size" in sections["vst"]


# ------------------------------------------------------------------ one reference
def test_one_report_holds_the_methods_of_one_reference_and_fills_an_unknown_rate():
    """A method checked against a reference of another rate was silently kept under the
    first method's rate (the summary kept the first, the plots' rate took the last); a
    rate the target left unknown (None) stayed unknown although the check ran at one."""
    from rave_deploy.targets._torchscript_reference import HostReference

    model = _model()
    reference = EagerReference(model, 0.95)
    core = DeployModel(model, fidelity=0.95, deterministic=True, streaming=True)
    report = CheckReport(Path("model.ts"), "in-process")
    report.summary["sample_rate"] = None   # e.g. a file whose `sr` is not an integer
    options = CheckOptions(block_sizes=[1024], **FAST)
    run_method_checks(report, CoreRunner(core, "decode"), reference, "decode", [1024], options)
    assert (report.summary["sample_rate"], report.summary["ratio"]) == (44100, 128)
    doubled = HostReference(model, 0.95, 2, {"encode": 0, "decode": 0, "forward": 0})
    with pytest.raises(ValueError, match="one report holds the checks of one model"):
        run_method_checks(report, CoreRunner(core, "forward"), doubled, "forward", [2048],
                          options)


# ------------------------------------------------------------------ repeated work
def _discrete_checks(monkeypatch, shared: bool):
    """The generic checks of every method of a tiny discrete model (near-ties counted up
    to 1e-3 of the distance scale, so there are some), and what they measured: the
    methods impulse_span ran for, and how many near-ties were found. ``shared=False``: as
    before, each span measured anew."""
    calls = {"spans": [], "ties": 0}
    span = plan.impulse_span
    ties = near_ties.tie_alternatives

    def counted_span(reference, method):
        calls["spans"].append(method)
        return span(reference, method)

    def counted_ties(core, x, tolerance=None):
        found = ties(core, x, tolerance)
        calls["ties"] += len(found)
        return found

    monkeypatch.setattr(plan, "impulse_span", counted_span)
    monkeypatch.setattr(near_ties, "tie_alternatives", counted_ties)
    monkeypatch.setattr(near_ties, "TIE_TOLERANCE", 1e-3)
    if not shared:   # the plan's and the near-ties' (harness) look-ups alike
        for module in (plan, harness):
            monkeypatch.setattr(module, "measured_span", lambda report, reference, method:
                                counted_span(reference, method))
    model = small_model(["discrete"])
    spread_codebooks(model)
    reference = EagerReference(model, 0.95)
    core = DeployModel(model, fidelity=0.95, deterministic=True, streaming=True)
    report = CheckReport(Path("discrete.ts"), "in-process")
    options = CheckOptions(block_sizes=[2048], **FAST)
    for method in ("encode", "decode", "forward"):
        run_method_checks(report, CoreRunner(core, method), reference, method, [2048], options)
    monkeypatch.undo()
    return report, calls


def test_a_discrete_model_measures_each_thing_once_with_the_same_results(monkeypatch):
    report, calls = _discrete_checks(monkeypatch, shared=True)
    # decode's reach: measured for decode's plan, not again for forward's near-ties
    assert calls["spans"] == ["encode", "decode", "forward"]
    assert calls["ties"] > 0   # the near-tie path ran (forward's uses decode's reach)
    before, old_calls = _discrete_checks(monkeypatch, shared=False)
    assert old_calls["spans"] == ["encode", "decode", "forward", "decode"]
    assert [(r.name, r.passed, r.message, r.value, r.details) for r in report.results] == \
        [(r.name, r.passed, r.message, r.value, r.details) for r in before.results]
    assert report.summary == before.summary
    assert all(r.passed for r in report.results), [(r.name, r.message)
                                                   for r in report.failures()]
