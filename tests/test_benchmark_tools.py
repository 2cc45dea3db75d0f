"""benchmarks/*.py on real exports and tiny configs: what they print, what they refuse,
their exit codes (0, 1 a failure, 2 bad usage in one line, 130 Ctrl-C with the partial
table)."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from .conftest import SMALL
from .runs import export_quietly, make_run

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import export_time  # noqa: E402
import profile_block  # noqa: E402
import streaming_rtf  # noqa: E402
import train_speed  # noqa: E402


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """``(run, {target: export})``: a small BRAVE at 48 kHz (so that a script reading 44.1
    kHz anywhere shows), its anira folder at a fixed block of 512 samples."""
    from rave_deploy.targets import ExportOptions

    root = tmp_path_factory.mktemp("profile")
    run = make_run(root, ("brave",), extra=["SAMPLING_RATE = 48000"])
    exports = export_quietly(run, ["nn_tilde", "onnx_streaming", "onnx"], root / "out")
    exports.update(export_quietly(run, ["anira"], root / "out",
                                  ExportOptions(block_size=512)))
    return run, exports


@pytest.fixture(scope="module")
def exports(small):
    return small[1]


@pytest.fixture(scope="module")
def tiny_gin(tmp_path_factory):
    """A gin file of a small BRAVE (``--configs`` takes gin files): seconds to build."""
    from rave_core.config import parse_config
    path = tmp_path_factory.mktemp("gin") / "tiny.gin"
    path.write_text(parse_config(["brave"], SMALL))
    return path


@pytest.fixture
def quick_rtf(small, monkeypatch):
    """streaming_rtf given the module's exports instead of exporting again, and ``run``."""
    run, files = small
    monkeypatch.setattr(streaming_rtf, "export_in_subprocess",
                        lambda _run, targets, _out: {t: files[t] for t in targets})
    return run


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    """The folder every ``tempfile`` folder goes in during the test (empty when the
    scripts clean up after themselves)."""
    root = tmp_path / "temp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def rtf_rows(out: str):
    """The rows of streaming_rtf's plain table: ``{(target, block): cells after block}``
    (RTF, mean ms, p99 ms, calls, budget, /eager, /acids)."""
    lines = out.split("\n\n")[0].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("config ")) + 2
    return {(" ".join(c[1:-8]), int(c[-8])): c[-7:]
            for c in (line.split() for line in lines[start:] if line.strip())}


def answers_then_ctrl_c(*results):
    """A stand-in for ``subprocess.run``: ``results`` in turn, then Ctrl-C."""
    queue = list(results)

    def run(cmd, **_):
        if not queue:
            raise KeyboardInterrupt
        return queue.pop(0)
    return run


def no_ctrl_c(fn, *args):
    """``fn(*args)``; a KeyboardInterrupt escaping it fails the test (not the session)."""
    try:
        return fn(*args)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped main(): traceback, no table")


# ------------------------------------------------------------------ all four scripts
@pytest.mark.parametrize("script", ["streaming_rtf", "export_time", "train_speed",
                                    "profile_block"])
def test_help_shows_the_examples_and_defaults(script):
    done = subprocess.run([sys.executable, str(BENCHMARKS / f"{script}.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"python benchmarks/{script}.py" in done.stdout  # the docstring's usage examples
    assert "(default:" in done.stdout and "Exit status" in done.stdout


def test_export_time_answers_help_and_a_wrong_target_without_torch():
    script = BENCHMARKS / "export_time.py"
    code = ("import runpy, sys\nsys.argv = ['export_time.py'] + sys.argv[1:]\n"
            f"try:\n    runpy.run_path({str(script)!r}, run_name='__main__')\n"
            "except SystemExit as e:\n    print('rc', e.code, 'torch' in sys.modules)\n")
    for args, rc in ((["--help"], 0), (["--targets", "nope"], 2)):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                              text=True, timeout=60)
        assert done.stdout.splitlines()[-1] == f"rc {rc} False", (args, done.stdout, done.stderr)


# ------------------------------------------------------------------ profile_block
@pytest.mark.parametrize("target,product", [("nn_tilde", "aten::mm"),
                                            ("onnx_streaming", "Conv")])
def test_profile_names_the_products(exports, target, product, capsys):
    assert profile_block.main([str(exports[target]), "--block", "256", "--calls", "3",
                               "--top", "40"]) == 0
    out = capsys.readouterr().out
    assert f"{exports[target].name} @ block 256:" in out and "ms per block unprofiled" in out
    assert "real time at 48 kHz" in out  # the sidecar's sample rate, not 44.1 kHz
    table = out.split("heaviest products")[0]
    assert any(line.split()[0] == product for line in table.splitlines()[2:] if line.strip())
    assert "heaviest products" in out and product in out.split("heaviest products")[1]


def test_profile_runs_onnx_as_hosts_do_after_a_warm_up(exports, monkeypatch, capsys):
    """The unprofiled time and the profiled calls go through BoundStreamingSession (states
    bound in place, as check and streaming_rtf run the graph); the profiled session runs
    its warm-up first, and the table counts the profiled calls only."""
    from rave_deploy import onnx_runtime

    streams = []

    class Counted(onnx_runtime.BoundStreamingSession):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.calls = 0
            streams.append(self)

        def __call__(self, block):
            self.calls += 1
            return super().__call__(block)

    monkeypatch.setattr(onnx_runtime, "BoundStreamingSession", Counted)
    counts = {}
    for calls in (1, 3):
        streams.clear()
        assert profile_block.main([str(exports["onnx_streaming"]), "--block", "256",
                                   "--calls", str(calls), "--top", "100"]) == 0
        timed, profiled = streams
        assert timed.calls > profile_block.WARMUP
        assert profiled.calls == profile_block.WARMUP + calls
        table = capsys.readouterr().out.split("heaviest products")[0].splitlines()[2:]
        counts[calls] = {c[0]: c[1] for c in (line.split() for line in table if line.strip())}
    assert counts[1] == counts[3]  # calls per block: the warm-up is not in the profile


def test_profile_takes_a_fixed_block_graph_at_its_block(exports, capsys):
    forward = exports["anira"] / "forward.onnx"
    assert profile_block.main([str(forward), "--block", "128", "--calls", "2"]) == 0
    out = capsys.readouterr().out
    assert "forward.onnx: a fixed-block graph: profiled at its block 512, not --block 128" in out
    assert "forward.onnx @ block 512:" in out and "@ block 128" not in out


def test_profile_refuses_what_it_cannot_read(exports, tmp_path, capsys):
    odd = tmp_path / "model.h5"
    odd.write_bytes(b"not a model")
    cases = [([str(odd)], "expected a .ts (TorchScript) or .onnx"),
             ([str(tmp_path / "missing.ts")], "no such file"),
             ([str(exports["onnx"])], "offline graph (one input, no states): profile an "
                                      "onnx_streaming export"),
             ([str(exports["anira"] / "decode.onnx")], "its input latent_in is not audio")]
    for suffix in (".ts", ".onnx"):  # the right suffix, the wrong content
        wrong = tmp_path / f"wrong{suffix}"
        wrong.write_bytes(b"not a model")
        cases.append(([str(wrong)], f"wrong{suffix}: cannot be loaded as "))
    ts = str(exports["nn_tilde"])
    cases += [([ts, "--block", "0"], "--block 0: give at least 1"),
              ([ts, "--block", "-128"], "--block -128: give at least 1"),
              ([ts, "--block", "100"], "--block 100: run.nn_tilde.ts takes multiples of its "
                                       "ratio 128"),
              ([ts, "--calls", "0"], "--calls 0: give at least 1")]
    for args, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            profile_block.main(args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, args
        assert expected in err and err.count("\n") == 1 and err.startswith("error: "), err


# ------------------------------------------------------------------ streaming_rtf
@pytest.mark.parametrize("args, expected", [
    (["--configs", "nosuch"], "--configs nosuch: not a config of rave_core"),
    (["--seconds", "0"], "--seconds 0.0: give the seconds of audio"),
    (["--repeats", "0"], "--repeats 0: give at least 1"),
    (["--targets", "bogus"], "--targets bogus: benchmarked targets are nn_tilde"),
    (["--blocks", "0"], "block sizes are positive"),
    (["--configs", "brave", "--reference-ts", "brave=/nonexistent.ts"],
     "/nonexistent.ts does not exist"),
    (["--configs", "brave", "--run", "v2=x"], "v2 is not among --configs (brave)"),
    (["--configs", "brave", "--run", "brave"], "give CONFIG=PATH, e.g. --run brave=runs/brave"),
    (["--configs", "brave", "--reference-ts", "brave"],
     "give CONFIG=PATH, e.g. --reference-ts brave=brave_streaming.ts"),
])
def test_streaming_rtf_refuses_bad_options_before_building_anything(args, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        streaming_rtf.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and err.count("\n") == 1, err


def test_streaming_rtf_refuses_a_reference_that_is_not_acids_rave_torchscript(small, tmp_path,
                                                                               capsys):
    """--reference-ts is loaded up front: a wav, a run, a checkpoint, our own export (its
    sidecar beside it) are refused in one line (they failed late, or timed ours as
    acids-rave's)."""
    run, files = small
    wav = tmp_path / "take.wav"
    wav.write_bytes(b"RIFF\0\0\0\0WAVE")
    cases = {wav: "not TorchScript", run: "a folder",
             run / "version_0" / "checkpoints" / "best.ckpt": "a training checkpoint",
             files["nn_tilde"]: "run.nn_tilde.ts.json beside it says it is a rave-deploy export"}
    for path, expected in cases.items():
        with pytest.raises(SystemExit) as exit_info:  # cheap options: the old code ran them
            streaming_rtf.main(["--configs", "brave", "--run", f"brave={run}", "--blocks",
                                "128", "--targets", "nn_tilde", "--seconds", "0.05",
                                "--repeats", "1", "--reference-ts", f"brave={path}"])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, path
        assert f"--reference-ts brave={path}: {expected}" in err, err
        assert "rave export --streaming" in err and err.count("\n") == 1, err


def test_streaming_rtf_needs_a_block_the_ratio_allows(small, capsys):
    with pytest.raises(SystemExit) as exit_info:
        streaming_rtf.main(["--configs", "brave", "--run", f"brave={small[0]}", "--blocks",
                            "100", "64", "--targets", "nn_tilde", "--seconds", "0.05",
                            "--repeats", "1"])
    assert exit_info.value.code == 2
    assert ("error: --blocks 100 64: none is a multiple of brave's ratio 128"
            in capsys.readouterr().err)


def test_make_full_run_stays_in_its_folder(tiny_gin, tmp_path, monkeypatch):
    """A --configs gin path with ``..`` or absolute named the run folder ``root / path``:
    outside the temporary folder, or NotADirectoryError."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    root = tmp_path / "root"
    root.mkdir()
    relative = f"../{tiny_gin.parent.name}/../{tiny_gin.parent.name}/tiny.gin"
    (tmp_path / tiny_gin.parent.name).symlink_to(tiny_gin.parent)
    first = streaming_rtf.make_full_run(root, relative)
    second = streaming_rtf.make_full_run(root, str(tiny_gin))
    assert first.parent == root and second.parent == root and first != second
    assert (first / "config.gin").is_file() and (second / "config.gin").is_file()
    assert sorted(p.name for p in tiny_gin.parent.iterdir()) == ["tiny.gin"]


def test_streaming_rtf_prints_phase_and_table(small, capsys):
    """benchmarks/streaming_rtf.py end to end on a small run (exported as users export):
    the machine's phase line, then a row per target and floor with a positive real-time
    factor, budgets at the model's 48 kHz, and with ``--markdown`` the README's table:
    its 8 columns, no floors."""
    run = small[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert streaming_rtf.main(["--configs", "brave", "--run", f"brave={run}",
                                   "--blocks", "100", "128", "--targets", "nn_tilde",
                                   "onnx_streaming", "--seconds", "0.1",
                                   "--repeats", "1", "--markdown"]) == 0
    captured = capsys.readouterr()
    assert "brave: block(s) 100 skipped: not a multiple of its ratio 128" in captured.err
    out = captured.out
    table, markdown = out.split("\n\n")
    lines = table.splitlines()
    assert lines[0].startswith("machine phase, one thread reading: 8 MB at ")
    assert lines[0].count("GB/s") == 6
    rows = rtf_rows(out)
    assert {t for t, _ in rows} == {"nn_tilde", "onnx_streaming", "floor: read weights",
                                    "floor: folded (ONNX)"}
    for (name, block), cells in rows.items():
        assert block == 128 and float(cells[0]) > 0, name
        assert cells[4] == "2.67"  # 128 samples at 48 kHz
        assert cells[2] == "-"     # p99 of 0.1 s at 128 (37 calls): not a 99th percentile
    md = [line.split("|")[1:-1] for line in markdown.strip().splitlines()]
    assert [c.strip() for c in md[0]] == ["config", "target", "block", "RTF", "mean ms",
                                          "p99 ms", "budget ms", "/acids"]
    assert {c[1].strip(): float(c[3]) for c in md[2:]} == pytest.approx(
        {t: float(cells[0]) for (t, _), cells in rows.items() if not t.startswith("floor")},
        abs=0.006)


def test_streaming_rtf_p99_pools_every_repetition(quick_rtf, monkeypatch, capsys):
    """p99 is taken over the calls of all repetitions (stated in the calls column), and
    shown only from 100 calls; RTF and mean stay the median repetition's."""
    times = iter([np.full(60, 0.001), np.full(60, 0.003), np.full(60, 0.002)])
    monkeypatch.setattr(streaming_rtf, "time_blocks", lambda *args: next(times))
    args = ["--configs", "brave", "--run", f"brave={quick_rtf}", "--blocks", "128",
            "--targets", "nn_tilde", "--seconds", "0.05"]
    assert streaming_rtf.main(args + ["--repeats", "3"]) == 0
    rtf, mean, p99, calls = rtf_rows(capsys.readouterr().out)[("nn_tilde", 128)][:4]
    assert (mean, p99, calls) == ("2.00", "3.00", "180")
    times = iter([np.full(60, 0.001)])
    assert streaming_rtf.main(args + ["--repeats", "1"]) == 0
    assert rtf_rows(capsys.readouterr().out)[("nn_tilde", 128)][2:4] == ["-", "60"]


def test_streaming_rtf_failing_reference_gives_no_ratio(quick_rtf, tmp_path, capsys):
    """A reference that fails at a block has no RTF: the /acids cells say ``-`` (NaN was
    true for ``if base:``, every cell read ``nanx``)."""
    class Fails(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] < 100000:
                raise RuntimeError("no such block size here")
            return x

    reference = tmp_path / "acids.ts"
    torch.jit.script(Fails()).save(str(reference))
    assert streaming_rtf.main(["--configs", "brave", "--run", f"brave={quick_rtf}",
                               "--blocks", "128", "--targets", "nn_tilde", "--seconds",
                               "0.05", "--repeats", "1", "--reference-ts",
                               f"brave={reference}", "--markdown"]) == 0
    captured = capsys.readouterr()
    assert "brave acids-rave .ts @128: " in captured.err
    assert "no such block size here" in captured.err
    assert "nan" not in captured.out
    rows = rtf_rows(captured.out)
    assert rows[("acids-rave .ts", 128)][0] == "-"
    assert all(cells[-1] == "-" for cells in rows.values())


def test_streaming_rtf_ctrl_c_prints_the_partial_table(quick_rtf, temp_root, monkeypatch,
                                                       capsys):
    real = streaming_rtf.time_blocks

    def interrupted_at_256(step, block, *rest):
        if block == 256:
            raise KeyboardInterrupt
        return real(step, block, *rest)

    monkeypatch.setattr(streaming_rtf, "time_blocks", interrupted_at_256)
    assert no_ctrl_c(streaming_rtf.main, [
        "--configs", "brave", "--run", f"brave={quick_rtf}", "--blocks", "128", "256",
        "--targets", "nn_tilde", "--seconds", "0.05", "--repeats", "1"]) == 130
    out = capsys.readouterr().out
    assert "interrupted: partial table" in out
    assert set(rtf_rows(out)) == {("nn_tilde", 128), ("floor: read weights", 128)}
    assert list(temp_root.iterdir()) == []


def test_eager_ceiling_is_a_median_of_several_calls():
    class Core:
        sr, ratio, n_channels, calls = 48000, 4, 1, 0

        def __call__(self, x):
            self.calls += 1

    core = Core()
    assert streaming_rtf.eager_ceiling(core, 0.01) > 0
    assert core.calls >= 4  # a warm-up, then several timed calls


# ------------------------------------------------------------------ export_time
@pytest.mark.parametrize("args, expected", [
    (["--configs", "nope"], "--configs nope: not a config of rave_core nor a gin file"),
    (["--configs", "brave", "--targets", "nope"], "--targets nope: not a target (targets: "),
])
def test_export_time_refuses_bad_options(args, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_time.main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith(f"error: {expected}") and err.count("\n") == 1, err


def test_export_time_exports_a_gin_config(tiny_gin, temp_root, capsys):
    assert export_time.main(["--configs", str(tiny_gin), "--targets", "onnx"]) == 0
    row = capsys.readouterr().out.splitlines()[-1].split()
    assert row[:2] == [str(tiny_gin), "onnx"] and float(row[2]) > 0 and float(row[4]) > 0
    assert list(temp_root.iterdir()) == []


def test_export_time_reports_failures_in_full(tiny_gin, monkeypatch, capsys):
    """A failed export is a failure (exit 1), an empty stderr included; reasons are
    printed whole, below the table."""
    reason = "minifusion takes " + "a causal architecture, " * 6 + "not this one"
    skipped = json.dumps({"skipped": reason})
    results = {"nn_tilde": subprocess.CompletedProcess([], 1, "", ""),
               "minifusion": subprocess.CompletedProcess([], 0, skipped, "")}
    monkeypatch.setattr(export_time.subprocess, "run", lambda cmd, **_: results[cmd[4]])
    assert export_time.main(["--configs", str(tiny_gin), "--targets", "nn_tilde",
                             "minifusion"]) == 1
    out = capsys.readouterr().out
    assert "nn_tilde: failed: exit code 1, no message" in out
    assert f"minifusion: not supported: {reason}" in out


def test_export_time_ctrl_c_prints_the_partial_table(tiny_gin, temp_root, monkeypatch, capsys):
    done = json.dumps({"seconds": 1.5, "skipped": None, "size_mb": 2.0, "peak_mb": 300.0})
    monkeypatch.setattr(export_time.subprocess, "run",
                        answers_then_ctrl_c(subprocess.CompletedProcess([], 0, done, "")))
    assert no_ctrl_c(export_time.main, ["--configs", str(tiny_gin), "--targets", "onnx",
                                        "nn_tilde"]) == 130
    out = capsys.readouterr().out
    assert "interrupted: partial table" in out and "onnx" in out and "nn_tilde" not in out
    assert list(temp_root.iterdir()) == []


# ------------------------------------------------------------------ train_speed
def test_timed_window_takes_whole_discriminator_cycles():
    # v2 at the defaults: phase 2 from step 1000000, 1 warm-up, 3 steps, a discriminator
    # step every 4th: the timed window is 1000004-1000007, one discriminator step in it
    start, count = train_speed.timed_window(1000000, 1, 3, 4)
    assert (start, count) == (1000004, 4)
    assert [s % 4 == 0 for s in range(start, start + count)] == [True, False, False, False]
    assert train_speed.timed_window(0, 1, 3, 1) == (1, 3)  # phase 1: as asked


@pytest.mark.parametrize("flag, value, expected", [
    ("--threads", "0", "--threads 0: give at least 1"),
    ("--batch", "0", "--batch 0: give at least 1"),
    ("--steps", "0", "--steps 0: give at least 1"),
    ("--device", "tpu", "--device tpu: give cpu, cuda or cuda:N"),
    ("--configs", "nope", "--configs nope: not a config of rave_core nor a gin file"),
])
def test_train_speed_refuses_bad_options(tiny_gin, flag, value, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:  # a tiny config: the old code ran it
        train_speed.main(["--configs", str(tiny_gin), "--n_signal", "8192", flag, value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith(f"error: {expected}") and err.count("\n") == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_train_speed_refuses_cuda_without_cuda(tiny_gin, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_speed.main(["--configs", str(tiny_gin), "--device", "cuda"])
    assert exit_info.value.code == 2
    assert "--device cuda: this machine's torch sees 0 CUDA device(s)" in capsys.readouterr().err


def test_train_speed_times_cycles_and_names_failures(tmp_path, capsys):
    """v2 (a discriminator step every 4th) at 3 steps: 4 timed, mix 3:1; a config that
    fails in its process is one line, and the run exits 1."""
    from rave_core.config import parse_config
    v2 = tmp_path / "tiny_v2.gin"
    v2.write_text(parse_config(["v2"], SMALL))
    broken = tmp_path / "broken.gin"
    broken.write_text("rave.model.RAVE.no_such_setting = 1\n")
    assert train_speed.main(["--configs", str(broken), str(v2), "--n_signal", "98304",
                             "--batch", "1", "--threads", "1", "--steps", "3"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"{broken}: failed: ") and captured.err.count("\n") == 1
    row = json.loads(captured.out.splitlines()[0])
    assert row["config"] == str(v2) and row["phase2_mix"] == "3:1"
    assert captured.out.splitlines()[-1].split()[4] == "3:1"


def test_train_speed_ctrl_c_prints_the_partial_table(monkeypatch, capsys):
    row = {"config": "v2_small", "phase1_steps_per_s": 0.5, "phase2_steps_per_s": 0.25,
           "phase2_mix": "1:1", "peak_mb": 900.0, "params_m": 12.0}
    monkeypatch.setattr(train_speed.subprocess, "run", answers_then_ctrl_c(
        subprocess.CompletedProcess([], 0, json.dumps(row), "")))
    assert no_ctrl_c(train_speed.main, ["--configs", "v2_small", "brave"]) == 130
    out = capsys.readouterr().out
    assert "interrupted: partial table" in out
    assert out.splitlines()[-1].split()[0] == "v2_small" and "brave" not in out.split("partial")[1]
