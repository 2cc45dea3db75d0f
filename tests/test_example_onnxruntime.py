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
