"""targets/nn_tilde/run_in_pd.py: the Pd patch it writes and its comparison with the nn~
emulation. (Pd itself is not run here: nn~'s external is not in any registry CI reaches;
the README of targets/nn_tilde says where it was run.)"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rave_deploy.check.harness import musical_signal
from rave_deploy.nn_tilde_emulation import NnTildeHost

from .runs import export_quietly, make_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "targets" / "nn_tilde"))
import run_in_pd  # noqa: E402


def test_patch_plays_through_nn_tilde_after_setting_it_up():
    """Every connection joins existing objects; the signal goes tabplay~ -> nn~ ->
    tabwrite~; bufsize and set deterministic reach nn~; the trigger (right to left)
    reads the file, sets nn~ up and turns DSP on before it starts playing."""
    text = run_in_pd.batch_patch("model.ts", 128, 1000, 22.6)
    objects = [line for line in text.splitlines() if line.startswith(("#X obj", "#X msg"))]
    edges = [tuple(map(int, m.groups())) for m in
             re.finditer(r"#X connect (\d+) (\d+) (\d+) (\d+);", text)]
    assert all(a < len(objects) and b < len(objects) for a, _, b, _ in edges)
    index = {name: i for i, line in enumerate(objects) for name in
             ("tabplay~", "nn~", "tabwrite~", "bufsize", "set deterministic", "pd dsp 1",
              "read -resize", "t b b b b b", "delay", "pd quit") if name in line}
    assert "nn~ model.ts forward 128;" in objects[index["nn~"]]
    assert "bufsize 128;" in objects[index["bufsize"]]
    assert "delay 22.6;" in objects[index["delay"]]
    into = {(a, b) for a, _, b, _ in edges}
    assert {(index["tabplay~"], index["nn~"]), (index["nn~"], index["tabwrite~"]),
            (index["bufsize"], index["nn~"]), (index["set deterministic"], index["nn~"])} <= into
    trigger = index["t b b b b b"]
    order = {b: o for a, o, b, _ in edges if a == trigger}  # higher outlets fire first
    assert (order[index["read -resize"]] > order[index["set deterministic"]]
            > order[index["bufsize"]] > order[index["pd dsp 1"]] > min(order.values()))


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    root = tmp_path_factory.mktemp("pd")
    exported = export_quietly(make_run(root, ("brave",)), ["nn_tilde"], root / "out")
    return torch.jit.load(str(exported["nn_tilde"]))


def test_comparison_passes_the_emulated_output_and_fails_others(module):
    """The emulation's own output (deterministic, from silence) agrees exactly, also after
    the module has streamed (it starts again from zero states, as Pd's fresh load does);
    the same output one Pd vector late, a changed sample and silence do not."""
    sr, block = 44100, 256
    signal = musical_signal(sr, 64 * 200, 1, seed=1)[0]
    module.set_deterministic(True)
    module.reset()
    with torch.inference_mode():
        emulated = NnTildeHost(module, "forward", block).run(signal[None, None])[0, 0]
    same = run_in_pd.compare_with_emulation(module, block, signal, emulated)
    assert same.agrees(0.0) and same.max_error == 0 and same.host_delay == 2 * block - 64
    assert same.first_sound_host == same.first_sound_expected is not None
    assert "identical samples" in same.lines()[0]

    late = np.concatenate([np.zeros(64, np.float32), emulated[:-64]])
    assert not run_in_pd.compare_with_emulation(module, block, signal, late).agrees(1e-3)
    changed = emulated.copy()
    changed[-100] += 0.01 * np.abs(emulated).max()
    result = run_in_pd.compare_with_emulation(module, block, signal, changed)
    assert result.agrees(0.02) and not result.agrees(0.005)
    assert "dB below the peak" in result.lines()[0]
    silent = run_in_pd.compare_with_emulation(module, block, signal, np.zeros_like(emulated))
    assert silent.host_peak == 0 and silent.first_sound_host is None
    assert not silent.agrees(1.0)  # even where any difference would be tolerated
