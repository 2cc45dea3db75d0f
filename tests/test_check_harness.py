"""The generic checks of ``rave-deploy check`` pass a perfect artefact and catch broken ones.

A "perfect artefact" is the streaming :class:`~rave_deploy.model.DeployModel` itself,
called block by block in-process. The broken runners are the bugs real exports have:
an op that reads future input, an output shifted by one sample, and processing that
depends on the host's block size. Each must fail the check that names that bug.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rave_deploy.check.harness import run_method_checks
from rave_deploy.check.latency import best_lag
from rave_deploy.check.report import format_table, reports_to_json, write_html_report
from rave_deploy.check.result import CheckReport
from rave_deploy.check.runner import EagerReference, Runner
from rave_deploy.check.signals import musical_signal
from rave_deploy.check.timing import run_forward_timing
from rave_deploy.check.tolerances import Tolerances
from rave_deploy.model import DeployModel
from rave_deploy.targets import CheckOptions
from tests.conftest import small_model

BLOCKS = [256, 1024]          # brave's ratio is 128; small blocks cost the most time
OPTIONS = CheckOptions(block_sizes=BLOCKS, seconds=2.0, rtf_seconds=0.5)
FAST = [1024]                 # broken runners: one block size is enough to fail them


class CoreRunner(Runner):
    """A perfect artefact: the streaming DeployModel, one method, block by block."""

    def __init__(self, core: DeployModel, method: str):
        self.core, self.method = core, method
        r, c, latent = core.ratio, core.n_channels, core.latent_size
        self.in_channels, self.in_ratio, self.out_channels, self.out_ratio = {
            "forward": (c, 1, c, 1), "encode": (c, 1, latent, r), "decode": (latent, r, c, 1)}[method]
        self._fn = getattr(core, method)

    def reset(self, batch: int = 1) -> None:
        self.core.reset(batch)

    def process(self, block: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self._fn(torch.from_numpy(block)).numpy()


class LookaheadRunner(CoreRunner):
    """Non-causal: its output at time t depends on the input at t + ``ahead`` (it reads
    the signal ahead of the host, as a layer with right padding left in would)."""

    def __init__(self, core, ahead: int):
        super().__init__(core, "forward")
        self.ahead = ahead

    def run(self, signal: np.ndarray, block_size: int) -> np.ndarray:
        future = np.concatenate([signal[..., self.ahead:], np.zeros_like(signal[..., :self.ahead])], -1)
        return super().run(future, block_size)


class ZeroLatencyCheat(CoreRunner):
    """Returns the eager output of the whole signal, undelayed: zero latency by reading
    the future."""

    def __init__(self, core, reference):
        super().__init__(core, "forward")
        self.reference = reference

    def run(self, signal: np.ndarray, block_size: int) -> np.ndarray:
        return self.reference("forward", signal)[..., :signal.shape[-1]]


class ShiftedRunner(CoreRunner):
    """Streams correctly but delays its output by one more sample than it reports."""

    def reset(self, batch: int = 1) -> None:
        super().reset(batch)
        self.tail = None

    def process(self, block: np.ndarray) -> np.ndarray:
        y = super().process(block)
        tail = self.tail if self.tail is not None else np.zeros_like(y[..., :1])
        self.tail = y[..., -1:]
        return np.concatenate([tail, y[..., :-1]], -1)


class BlockDependentRunner(CoreRunner):
    """Exact at the host block of 512 (audio samples), but larger blocks go through a
    path with another output gain (as a runtime whose kernels differ by input size might)."""

    def process(self, block: np.ndarray) -> np.ndarray:
        y = super().process(block)
        return y * np.float32(1.0 + 1e-3 * (block.shape[-1] * self.in_ratio // 512 - 1))


def _model():
    model = small_model(("brave",)).set_noise(False)
    latent = model.latent_size
    with torch.no_grad():
        model.fidelity.copy_(torch.linspace(0.3, 1, latent))
        q, _ = torch.linalg.qr(torch.randn(latent, latent, generator=torch.Generator().manual_seed(1)))
        model.latent_pca.copy_(q)
    return model


@pytest.fixture(scope="module")
def brave():
    model = _model()
    reference = EagerReference(model, 0.95)
    core = DeployModel(model, fidelity=0.95, deterministic=True, streaming=True)
    return reference, core


@pytest.fixture(scope="module")
def perfect_report(brave):
    reference, core = brave
    report = CheckReport(Path("perfect.ts"), "in-process")
    for method in ("forward", "encode", "decode"):
        run_method_checks(report, CoreRunner(core, method), reference, method, BLOCKS, OPTIONS)
    run_forward_timing(report, CoreRunner(core, "forward"), reference, [1024], OPTIONS)
    return report


def _forward_report(runner, reference, name="broken.ts", blocks=FAST,
                    target="in-process") -> CheckReport:
    report = CheckReport(Path(name), target)
    run_method_checks(report, runner, reference, "forward", blocks, OPTIONS)
    return report


@pytest.fixture(scope="module")
def shifted(brave):
    reference, core = brave
    return _forward_report(ShiftedRunner(core, "forward"), reference, "shifted.ts")


def _result(report, name):
    found = [r for r in report.results if r.name == name]
    assert found, f"no {name} in {[r.name for r in report.results]}"
    return found[0]


# --------------------------------------------------------------------------- perfect
def test_perfect_artefact_passes_every_generic_check(perfect_report):
    names = {r.name for r in perfect_report.results}
    expected = {f"{c}.{m}" for c in ("parity", "blocks") for m in ("forward", "encode", "decode")}
    expected |= {"causality.forward", "causality.encode", "latency.forward"}
    assert expected <= names
    failures = [(r.name, r.message) for r in perfect_report.results
                if not r.passed and not r.name.startswith("rtf.")]
    assert not failures, failures
    for method in ("forward", "encode", "decode"):
        parity = _result(perfect_report, f"parity.{method}")
        assert parity.details["snr_db"] >= 80 and parity.details["max_rel_error"] <= 1e-4
        assert "dB" in parity.threshold and parity.details["compared"] > 0


def test_perfect_artefact_latency_is_exact_at_every_position(perfect_report, brave):
    reference, _ = brave
    d = reference.delay_of("forward")
    lat = _result(perfect_report, "latency.forward")
    jitter = perfect_report.signals["jitter"]
    assert len(jitter["latencies"]) == 16 and set(jitter["latencies"]) == {d}
    assert sorted(jitter["positions"]) == [i * BLOCKS[0] // 16 for i in range(16)]
    assert lat.details["jitter_samples"] == 0 and lat.value == d
    # no target, so no host: the model's latency alone (not nn~'s, as for every target)
    assert lat.details["host"] is None and "nn_tilde_adds" not in lat.details
    assert lat.message.startswith(f"model {d} samples (") and "nn~" not in lat.message
    assert perfect_report.summary["latency_samples"] == d


def test_latency_states_what_the_targets_host_adds(brave):
    """latency.forward states what the host of the report's target adds (the target's
    host_latency): nn~'s buffering at Pd's vector of 64 (host contract 28) for nn~, where
    unthreaded is buffer argument 0, which runs at the ratio whatever the host block; a
    host whose contract states no figure (Minifusion) gets the model's latency and the
    target's note, not nn~'s figures (every target had them)."""
    reference, core = brave
    d, ratio = reference.delay_of("forward"), reference.ratio
    assert ratio < 256
    nn = _result(_forward_report(CoreRunner(core, "forward"), reference, blocks=BLOCKS,
                                 target="nn_tilde"), "latency.forward")
    assert nn.details["nn_tilde_adds"] == {"256": {"threaded": 2 * 256 - 64,
                                                   "unthreaded": ratio - 64},
                                           "1024": {"threaded": 2 * 1024 - 64,
                                                    "unthreaded": ratio - 64}}
    host = nn.details["host"]
    assert host["name"] == "nn~" and host["key"] == "nn_tilde_adds"
    assert "host contract 28" in host["source"]
    ms = 1000 * (d + 2 * 256 - 64) / reference.sr
    assert (f"; in nn~: {d + 2 * 256 - 64} samples threaded at block 256 ({ms:.2f} ms), "
            f"{d + ratio - 64} unthreaded (buffer argument 0)") in nn.message
    mini = _result(_forward_report(CoreRunner(core, "forward"), reference, target="minifusion"),
                   "latency.forward")
    assert mini.passed and mini.details["host"] is None
    assert not [k for k in mini.details if "nn_tilde" in k or k == "host_adds"]
    assert "nn~" not in mini.message and "; in " not in mini.message
    assert "host contracts 20-21 state no figure" in mini.message


def test_impulse_response_starts_at_the_reported_latency(perfect_report, brave):
    reference, _ = brave
    imp = perfect_report.signals["impulse"]
    d = reference.delay_of("forward")
    assert imp["onset"] - imp["click"] >= d           # brave is causal: nothing before t + latency
    # exact: the eager response (which itself rises a little after the click), delayed
    assert imp["onset"] == imp["eager_onset"] + d
    assert "impulse response starts" in _result(perfect_report, "causality.forward").message


def test_timing_table(perfect_report):
    row = perfect_report.summary["rtf"]["1024"]
    assert row["budget_ms"] == pytest.approx(1000 * 1024 / 44100)
    assert row["rtf"] > 0 and row["p99_ms"] >= row["mean_ms"] > 0
    rtf = _result(perfect_report, "rtf.forward")
    realtime = [int(b) for b, r in perfect_report.summary["rtf"].items() if r["p99_ms"] < r["budget_ms"]]
    assert rtf.passed == bool(realtime)
    if realtime:
        assert rtf.details["smallest_realtime_block"] == min(realtime)


def test_a_runner_slower_than_real_time_fails_timing_and_says_what_p99_means(brave):
    """The message read "not real time ... 1.84x" when the mean kept up and the p99 did
    not: it says what was measured, and that a loaded machine may be the cause."""
    import time as _time

    reference, core = brave

    class Slow(CoreRunner):
        def process(self, block):
            _time.sleep(1.5 * block.shape[-1] / reference.sr)   # half as fast as real time
            return super().process(block)

    report = CheckReport(Path("slow.ts"), "in-process")
    run_forward_timing(report, Slow(core, "forward"), reference, FAST,
                       CheckOptions(block_sizes=FAST, rtf_seconds=0.3))
    result = _result(report, "rtf.forward")
    assert not result.passed and report.summary["realtime_block"] is None
    assert "the slowest 1% of calls (p99) took longer than the block lasts" in result.message
    assert "check again on a quiet machine" in result.message
    assert f"{FAST[0]}: " in result.message


def test_signals_for_the_report(perfect_report, brave):
    reference, _ = brave
    w = perfect_report.signals["waveforms"]["forward"]
    d, warm = w["delay"], w["warmup"]
    assert w["exported"].shape == w["aligned"].shape == w["input"].shape
    np.testing.assert_allclose(w["aligned"][:, d:], w["eager"][:, :-d])
    peak = np.abs(w["aligned"][:, warm:]).max()
    assert np.abs(w["exported"][:, warm:] - w["aligned"][:, warm:]).max() < 1e-4 * peak
    z = perfect_report.signals["waveforms"]["decode"]["input"]
    assert z.shape[0] == reference.latent_size


# --------------------------------------------------------------------------- broken
def test_lookahead_fails_causality_and_parity(brave):
    reference, core = brave
    report = _forward_report(LookaheadRunner(core, ahead=reference.ratio), reference)
    causality = _result(report, "causality.forward")
    assert not causality.passed and "looks ahead" in causality.message
    # reads 128 samples ahead with a 112-sample latency: 16 samples into the future
    assert causality.value == reference.ratio
    assert not _result(report, "parity.forward").passed
    lat = _result(report, "latency.forward")
    assert not lat.passed and lat.value == reference.delay_of("forward") - reference.ratio


def test_zero_latency_cheat_fails_causality(brave):
    reference, core = brave
    report = _forward_report(ZeroLatencyCheat(core, reference), reference)
    causality = _result(report, "causality.forward")
    assert not causality.passed and "looks ahead" in causality.message
    assert "impulse response starts" in causality.message
    assert not _result(report, "parity.forward").passed


def test_output_shifted_by_one_sample_fails_parity_and_latency_shows_it(brave, shifted):
    reference, core = brave
    d = reference.delay_of("forward")
    report = shifted
    parity = _result(report, "parity.forward")
    assert not parity.passed and "shifted by +1 sample(s)" in parity.message
    assert parity.details["best_lag"] == d + 1
    lat = _result(report, "latency.forward")
    assert not lat.passed and lat.value == d + 1 and "off by +1" in lat.message
    assert set(report.signals["jitter"]["latencies"]) == {d + 1}
    assert _result(report, "causality.forward").passed     # late is not non-causal


def test_block_size_dependent_runner_fails_blocks(brave):
    reference, core = brave
    report = _forward_report(BlockDependentRunner(core, "forward"), reference, blocks=[512, 2048])
    blocks = _result(report, "blocks.forward")
    assert not blocks.passed and "depends on the block size" in blocks.message and "2048" in blocks.message
    assert blocks.value == pytest.approx(3e-3, rel=1e-2)
    assert _result(report, "parity.forward").passed


def test_tolerances_are_stated_and_configurable(brave):
    reference, core = brave
    report = CheckReport(Path("x.ts"), "in-process")
    loose = Tolerances(parity_max_rel=1e-2, parity_min_snr_db=20, blocks_max_rel=1e-2)
    run_method_checks(report, BlockDependentRunner(core, "encode"), reference, "encode", [512, 2048],
                      OPTIONS, tolerances=loose)
    assert _result(report, "blocks.encode").passed
    assert "0.01 of peak" in _result(report, "parity.encode").threshold


def test_wrong_output_size_is_a_failure_not_a_crash(brave):
    reference, core = brave

    class Short(CoreRunner):
        def process(self, block):
            return super().process(block)[..., :-1]

    report = CheckReport(Path("x.ts"), "in-process")
    run_method_checks(report, Short(core, "encode"), reference, "encode", FAST, OPTIONS)
    parity = _result(report, "parity.encode")
    assert not parity.passed and "shape" in parity.message


# --------------------------------------------------------------------------- pieces
def test_best_lag_finds_an_integer_shift():
    x = musical_signal(44100, 8192)[None][0]
    y = np.concatenate([np.zeros((1, 37), np.float32), x[:, :-37]], -1)
    lag, err = best_lag(y, x, 1000, 4096, -100, 100, 0)
    assert lag == 37 and err < 1e-6


def test_receptive_field_of_a_causal_model_is_one_sided(perfect_report, brave):
    reference, _ = brave
    parity = _result(perfect_report, "parity.forward").details
    assert parity["lookahead"] == 0 and parity["memory"] > reference.delay_of("forward")
    assert parity["warmup"] >= parity["delay"] + parity["memory"]


def test_musical_signal_is_deterministic_and_bounded():
    a, b = musical_signal(44100, 44100, 2), musical_signal(44100, 44100, 2)
    assert a.shape == (2, 44100) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() == pytest.approx(0.7)


# --------------------------------------------------------------------------- report
def test_text_table_and_json(perfect_report, shifted):
    broken = shifted
    table = format_table([perfect_report, broken])
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["target", "file"]
    assert "perfect.ts" in lines[2] and "FAIL" in lines[3] and "2.54 ms" in lines[2]
    assert any("parity.forward" in line for line in lines[4:])
    data = reports_to_json([perfect_report, broken])
    json.dumps(data, allow_nan=False)
    assert data["passed"] is False and len(data["reports"]) == 2


def test_table_gives_sizes_in_the_units_export_prints(tmp_path):
    """Decimal megabytes, as `rave-deploy export` prints them (the table once showed
    127.6 MB for a file the export called 133.8 MB)."""
    artifact = tmp_path / "model.ts"
    artifact.write_bytes(b"\0" * 13_006_383)
    folder = tmp_path / "model.anira"
    folder.mkdir()
    (folder / "a.onnx").write_bytes(b"\0" * 1500)
    table = format_table([CheckReport(artifact, "nn_tilde"), CheckReport(folder, "anira")])
    assert "model.ts     13.0 MB" in table, table
    assert "model.anira  1.5 KB" in table, table


def test_table_rtf_is_at_the_smallest_block_that_keeps_up(tmp_path):
    """The RTF column is at the smallest host block whose p99 is under budget, as
    ``rtf.forward`` says (it showed 0.64x @128 beside PASS when 128 was too small)."""
    artifact = tmp_path / "model.ts"
    artifact.write_bytes(b"\0" * 100)
    report = CheckReport(artifact, "nn_tilde")
    report.summary["rtf"] = {
        str(n): {"block": n, "rtf": rtf, "passed": ok}
        for n, rtf, ok in ((128, 0.64, False), (256, 0.9, False), (1024, 2.69, True),
                           (2048, 4.1, True))}
    assert "2.69x @1024" in format_table([report])
    for row in report.summary["rtf"].values():
        row["passed"] = False  # nothing keeps up: the smallest block, below real time
    assert "0.64x @128" in format_table([report])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(args, tmp_path):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def test_html_report_renders_in_chromium(perfect_report, shifted, tmp_path):
    start = time.perf_counter()
    page = write_html_report([perfect_report, shifted], tmp_path / "report.html")
    print(f"report written in {time.perf_counter() - start:.1f} s")
    text = page.read_text()
    assert text.count("<img") >= 8 and text.count("<audio") >= 5
    assert "src=\"http" not in text and "<script" not in text       # self-contained, static
    for name in ("parity.forward", "causality.forward", "blocks.decode", "latency.forward"):
        assert name in text
    sr, ratio = perfect_report.summary["sample_rate"], perfect_report.summary["ratio"]
    assert f"<dt>sample rate</dt><dd>{sr} Hz, ratio {ratio}</dd>" in text
    if CHROMIUM is None:
        print("chromium not installed: skipping the browser rendering (apt-get install chromium)")
        pytest.skip(reason="chromium not installed (apt-get install chromium)")

    # A copy of the page with a probe script that writes what the browser decoded into
    # the DOM (the report itself has no script).
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", """<pre id=probe>pending</pre><script>
window.addEventListener('load', () => {   // fires once every image has loaded or failed
  const imgs = [...document.images], audios = [...document.querySelectorAll('audio')];
  document.getElementById('probe').textContent = JSON.stringify({imgs: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length, audios: audios.length,
    wav: audios.filter(a => a.src.startsWith('data:audio/wav;base64,')).length,
    fails: document.querySelectorAll('table.checks tr.fail').length});
});
</script></body>"""))
    out = _chromium(["--virtual-time-budget=20000", "--dump-dom", probe.as_uri()], tmp_path)
    match = re.search(r'<pre id="probe">(\{.*?\})</pre>', out.stdout)
    assert match, f"no probe result in chromium output: {out.stdout[-300:]} {out.stderr[-1000:]}"
    seen = json.loads(match.group(1))
    assert seen["imgs"] >= 8 and seen["decoded"] == seen["imgs"], seen
    assert seen["audios"] >= 5 and seen["wav"] == seen["audios"], seen
    assert seen["fails"] == len(shifted.failures()) + len(perfect_report.failures()), seen

    shot = tmp_path / "report.png"
    _chromium([f"--screenshot={shot}", "--window-size=1200,3000", "--hide-scrollbars", page.as_uri()],
              tmp_path)
    assert shot.exists() and shot.stat().st_size > 10_000
    if os.environ.get("RAVE_KEEP_REPORT"):   # to look at it: RAVE_KEEP_REPORT=/some/dir
        keep = Path(os.environ["RAVE_KEEP_REPORT"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(page, keep / "report.html")
        shutil.copy(shot, keep / "report.png")
