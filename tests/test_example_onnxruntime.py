"""targets/onnx/example_onnxruntime.py, the ONNX Runtime loop of the onnx_streaming
README: it streams an onnx_streaming graph, and refuses another graph (the offline one,
which it ran block by block without state, writing wrong audio with exit 0)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from .runs import export_quietly, make_run

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "targets" / "onnx" / "example_onnxruntime.py"


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    root = tmp_path_factory.mktemp("example_onnx")
    run = make_run(root / "runs", ("brave",), name="brave", unit_gains=True)
    files = export_quietly(run, ["onnx", "onnx_streaming"], root / "exports")
    wav = root / "in.wav"
    t = np.arange(44100 // 2)
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 220 * t / 44100)).astype(np.float32), 44100)
    return {**{k: Path(v) for k, v in files.items()}, "wav": wav}


def _example(*args, cwd: Path):
    return subprocess.run([sys.executable, str(EXAMPLE), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_the_example_refuses_the_offline_graph_and_names_the_streaming_one(graphs, tmp_path):
    offline, out = graphs["onnx"], tmp_path / "out.wav"
    done = _example(offline, graphs["wav"], out, cwd=tmp_path)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert (f"{offline} is the offline graph (-t onnx: the whole signal in one call, no "
            "state inputs)") in done.stderr
    assert f"give {graphs['onnx_streaming']} (rave-deploy export RUN -t onnx_streaming)" \
        in done.stderr
    assert not out.exists()


def test_the_example_streams_the_streaming_graph(graphs, tmp_path):
    out = tmp_path / "out.wav"
    done = _example(graphs["onnx_streaming"], graphs["wav"], out, "--block", 512, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    audio, sr = sf.read(out)
    assert sr == 44100 and len(audio) >= 44100 // 2 and np.isfinite(audio).all()
    assert sf.info(out).subtype == "FLOAT"   # the graph's samples, not 16-bit PCM


def test_the_example_names_an_anira_graph():
    spec = importlib.util.spec_from_file_location("example_onnxruntime", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    problem = example.not_streaming({"graph": "flat_state", "streaming": "true"},
                                    ["audio_in", "state_in"], "brave.anira/forward.onnx")
    assert problem.startswith("brave.anira/forward.onnx is a graph of an anira export")
    assert example.not_streaming({"graph": "streaming"}, ["audio_in", "state_in_0"], "x") is None
    # no metadata: told by its inputs
    assert example.not_streaming({}, ["audio_in"], "x.onnx.onnx").endswith(
        "give x.onnx_streaming.onnx (rave-deploy export RUN -t onnx_streaming)")


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("example_onnxruntime_main", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(example, monkeypatch, *args):
    """The example's main() in this process, as `python example_onnxruntime.py ARGS`."""
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), *map(str, args)])
    example.main()


def test_the_example_refuses_bad_arguments_before_processing(graphs, example, tmp_path,
                                                             monkeypatch, capsys):
    """A missing graph, a TorchScript file, an anira folder, a missing or non-audio
    input, an input at another rate, an output in a missing folder or not named as
    audio, a negative block or one that is no multiple of the ratio: one `error:` line,
    exit 2, before a block is run (onnxruntime and soundfile tracebacks before, some
    after all the processing; the rate and block refusals exited 1 without `error:`)."""
    streaming, wav = graphs["onnx_streaming"], graphs["wav"]
    ts = tmp_path / "m.nn_tilde.ts"
    ts.write_bytes(b"PK\x03\x04" + bytes(60))
    anira = tmp_path / "m.anira"
    anira.mkdir()
    (anira / "forward.onnx").write_bytes(bytes(8))
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    at48 = tmp_path / "in48.wav"
    sf.write(at48, np.zeros(4800, np.float32), 48000)
    out = tmp_path / "out.wav"
    give = "give NAME.onnx_streaming.onnx (rave-deploy export RUN -t onnx_streaming)"

    def processed(*args, **kwargs):
        raise AssertionError("a block was run")
    monkeypatch.setattr(example.ort.InferenceSession, "run", processed)
    for args, expect in (
            ((tmp_path / "none.onnx", wav, out), f"{tmp_path / 'none.onnx'}: no such file; {give}"),
            ((ts, wav, out), f"{ts} is a TorchScript file (a zip archive; -t nn_tilde or "
                             f"supercollider), not an ONNX graph: {give}"),
            ((anira, wav, out), f"{anira} is an anira export (a folder), not an "
                                f"onnx_streaming graph: {give}"),
            ((streaming, tmp_path / "none.wav", out),
             f"input {tmp_path / 'none.wav'}: no such file"),
            ((streaming, text, out), f"input {text} is not an audio file soundfile can read"),
            ((streaming, at48, out), f"input {at48} is at 48000 Hz; the model runs at 44100 "
                                     "Hz: resample it first"),
            ((streaming, wav, tmp_path / "no" / "o.wav"),
             f"output {tmp_path / 'no' / 'o.wav'}: no folder {tmp_path / 'no'}; create it first"),
            ((streaming, wav, tmp_path / "o.txt"),
             f"output {tmp_path / 'o.txt'}: .txt is not an audio format soundfile writes"),
            ((streaming, wav, out, "--block", "-128"),
             "--block -128: a block is a number of samples above 0"),
            ((streaming, wav, out, "--block", "100"),
             "--block 100: the graph takes a multiple of 128 samples")):
        with pytest.raises(SystemExit) as exited:
            _run(example, monkeypatch, *args)
        err = capsys.readouterr().err
        assert exited.value.code == 2, (args, err)
        assert f"error: {expect}" in err, err
        assert not out.exists() and not (tmp_path / "o.txt").exists()


@pytest.fixture(scope="module")
def fixed_graph(tmp_path_factory):
    from rave_deploy.targets import ExportOptions

    root = tmp_path_factory.mktemp("example_fixed")
    run = make_run(root / "runs", ("brave",), name="brave", unit_gains=True)
    return export_quietly(run, ["onnx_streaming"], root / "exports",
                          ExportOptions(block_size=256))["onnx_streaming"]


def test_the_example_refuses_another_block_on_a_fixed_graph(graphs, fixed_graph, example,
                                                            tmp_path, monkeypatch, capsys):
    """A graph exported with --block-size 256 takes 256 samples a call: --block 512 is
    refused (it was silently ignored), no --block runs at 256."""
    out = tmp_path / "out.wav"
    with pytest.raises(SystemExit) as exited:
        _run(example, monkeypatch, fixed_graph, graphs["wav"], out, "--block", 512)
    assert exited.value.code == 2
    assert (f"error: --block 512: {fixed_graph} was exported with a fixed block of 256 "
            "samples (--block-size 256)") in capsys.readouterr().err
    assert not out.exists()
    _run(example, monkeypatch, fixed_graph, graphs["wav"], out)
    assert ", block 256, " in capsys.readouterr().out and out.exists()


def test_the_example_mixes_stereo_down_and_writes_float(graphs, example, tmp_path,
                                                        monkeypatch, capsys):
    """A stereo file into a mono model is its channels' mean, and a note says so (the
    right channel was dropped without a word); the output keeps the graph's float
    samples (it was 16-bit PCM)."""
    t = np.arange(44100 // 4) / 44100
    left, right = (0.4 * np.sin(2 * np.pi * f * t).astype(np.float32) for f in (220, 330))
    stereo, mono = tmp_path / "stereo.wav", tmp_path / "mono.wav"
    sf.write(stereo, np.stack([left, right], 1), 44100, subtype="FLOAT")
    sf.write(mono, (left + right) / 2, 44100, subtype="FLOAT")
    outs = {}
    for name, wav in (("stereo", stereo), ("mono", mono), ("left", None)):
        if wav is None:
            wav = tmp_path / "left.wav"
            sf.write(wav, left, 44100, subtype="FLOAT")
        outs[name] = tmp_path / f"out_{name}.wav"
        _run(example, monkeypatch, graphs["onnx_streaming"], wav, outs[name])
        err = capsys.readouterr().err
        assert ("has 2 channels and the model takes 1: mixed down to mono (the mean of its "
                "channels)" in err) == (name == "stereo")
    assert sf.info(outs["stereo"]).subtype == "FLOAT"
    y = {k: sf.read(v, dtype="float32")[0] for k, v in outs.items()}
    np.testing.assert_allclose(y["stereo"], y["mono"], atol=1e-6 * np.abs(y["mono"]).max())
    assert np.abs(y["stereo"] - y["left"]).max() > 1e-3 * np.abs(y["left"]).max()
    assert np.abs(y["stereo"]).max() > 1   # a random model's: 16-bit PCM clipped it


def test_the_example_leaves_nothing_half_written(graphs, example, tmp_path, monkeypatch,
                                                 capsys):
    """A write that fails half-way (a full disk) leaves no output file and no temporary
    file, and says so (exit 1)."""
    def fails(path, *args, **kwargs):
        Path(path).write_bytes(b"RIFF")   # what a write cut short leaves
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(example.sf, "write", fails)
    out = tmp_path / "out.wav"
    with pytest.raises(SystemExit) as exited:
        _run(example, monkeypatch, graphs["onnx_streaming"], graphs["wav"], out)
    assert exited.value.code == 1
    assert f"error: could not write {out}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
