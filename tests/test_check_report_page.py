"""The page of ``rave-deploy check --report`` reads for a musician: each group of checks
explained in plain words, the documentation named, units on the values, the details in
UTF-8, labelled plots, and players that say which of them share a gain.

The page is written from a real check of a small model (the streaming model itself,
checked as an nn~ file); an audit of the page found each of these missing.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import rave_deploy
from rave_deploy.check import report as page_module
from rave_deploy.check.harness import run_method_checks
from rave_deploy.check.report import write_html_report
from rave_deploy.check.result import CheckReport
from rave_deploy.check.runner import EagerReference
from rave_deploy.check.timing import run_forward_timing
from rave_deploy.model import DeployModel
from rave_deploy.targets import CheckOptions
from tests.test_check_harness import CoreRunner, _model

OPTIONS = CheckOptions(block_sizes=[256, 1024], seconds=2.0, rtf_seconds=0.2)


@pytest.fixture(scope="module")
def checked():
    """Every generic check of a perfect nn~ file (nn~'s latency note in its details)."""
    model = _model()
    reference = EagerReference(model, 0.95)
    core = DeployModel(model, fidelity=0.95, deterministic=True, streaming=True)
    report = CheckReport(Path("perfect.ts"), "nn_tilde")
    for method in ("encode", "decode", "forward"):
        run_method_checks(report, CoreRunner(core, method), reference, method, OPTIONS.block_sizes,
                          OPTIONS)
    run_forward_timing(report, CoreRunner(core, "forward"), reference, [1024], OPTIONS)
    report.add("contract.sidecar", True, "the sidecar states what the check found")
    return report


@pytest.fixture(scope="module")
def page(checked, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("page") / "r.html"
    return write_html_report([checked], path).read_text(encoding="utf-8")


def _value_cell(page: str, name: str) -> str:
    match = re.search(rf">{re.escape(name)}</a></td><td>.*?</td><td class=num>(.*?)</td>", page)
    assert match, f"no row for {name}"
    return match.group(1)


def test_each_group_of_checks_is_explained_and_the_docs_named(checked, page):
    groups = {r.name.split(".")[0] for r in checked.results}
    assert groups >= {"contract", "parity", "blocks", "causality", "latency", "rtf"}
    about = page[page.index("what the checks mean"):page.index('<section class="card"')]
    for group in groups:
        entry = re.search(rf"<dt id=check-{group}>{group}\.\*</dt><dd>(.*?)</dd>", about)
        assert entry and "A failure" in entry.group(1), group
    assert "PASS means" in about and "docs/check.md in rave-deploy" in about
    for r in checked.results:   # the exact names stay, linked to their group's words
        assert f'<td class="name"><a href=#check-{r.name.split(".")[0]}>{r.name}</a></td>' in page


def test_every_prefix_the_checks_use_is_explained():
    """A check added under a new prefix gets its words on the page too."""
    names = re.compile(r'''(?:\.add|add_contract|named)\(\s*f?["']([a-z]+)\.[\w{]'''
                       r'''|\bname = f?["']([a-z]+)\.\{''')
    prefixes = {m.group(1) or m.group(2)
                for f in Path(rave_deploy.__file__).parent.rglob("*.py")
                for m in names.finditer(f.read_text(encoding="utf-8"))}
    assert {"contract", "parity", "blocks", "causality", "latency", "rtf"} <= prefixes
    assert prefixes <= set(page_module._GROUPS), prefixes - set(page_module._GROUPS)


def test_values_carry_their_units(checked, page, tmp_path):
    lat = next(r for r in checked.results if r.name == "latency.forward")
    assert _value_cell(page, "latency.forward") == (
        f"{lat.value:.4g} samples ({lat.details['mean_ms']:.2f} ms)")
    assert _value_cell(page, "parity.forward").endswith(" dB")
    assert _value_cell(page, "blocks.decode").endswith(" of peak")
    assert _value_cell(page, "causality.forward") == "0 samples"
    assert _value_cell(page, "causality.encode") == "0 latent frames"
    assert _value_cell(page, "rtf.forward").endswith("x real time")
    # no unit known: the value stays bare
    bare = CheckReport(Path("x.ts"), "nn_tilde")
    bare.add("contract.1_file_format", True, "version 3", value=3.0)
    assert _value_cell(write_html_report([bare], tmp_path / "bare.html").read_text(),
                       "contract.1_file_format") == "3"


def test_details_are_utf8_not_escapes(page):
    """latency.forward's details carry nn~'s note, ``threaded 2N − 64``."""
    assert "\\u2212" not in page and "\\u" not in page
    details = re.search(r">latency\.forward</a>.*?<pre>(.*?)</pre>", page, re.S).group(1)
    assert "2N − 64" in details


def test_impulse_plot_labels_its_axes(checked, monkeypatch):
    figures = []
    monkeypatch.setattr(page_module, "_png", lambda fig: figures.append(fig) or "")
    page_module._fig_impulse(checked.signals["impulse"], int(checked.signals["sr"]))
    response, whole = figures[0].axes[:2]
    assert "amplitude" in response.get_ylabel() and "dB" in whole.get_ylabel()


def test_players_say_which_share_a_gain():
    """A quiet model's outputs are turned up by one gain for both; the input keeps its own
    level (the heading said "both" above three players)."""
    rng = np.random.default_rng(0)
    quiet = 1e-3 * rng.standard_normal((1, 4096)).astype(np.float32)
    w = {"warmup": 0, "input": 0.9 * np.sin(np.arange(4096) / 10)[None], "aligned": quiet,
         "exported": quiet, "in_unit": "samples"}
    players = page_module._players(w, 44100, "forward")
    gain = re.search(r"eager and exported share one gain, (\+\d+ dB)", players)
    assert gain and "both" not in players
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", players)
    assert captions == ["input, at its own level", f"eager, {gain.group(1)}",
                        f"exported, {gain.group(1)}"]
