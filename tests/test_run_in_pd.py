"""targets/nn_tilde/run_in_pd.py: the Pd patch it writes and its comparison with the nn~
emulation. (Pd itself is not run here: nn~'s external is not in any registry CI reaches;
the README of targets/nn_tilde says where it was run.)"""
from __future__ import annotations

import json
import re
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rave_deploy.check.signals import musical_signal
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


def _objects_and_edges(text):
    objects = [line for line in text.splitlines() if line.startswith(("#X obj", "#X msg"))]
    edges = [tuple(map(int, m.groups())) for m in
             re.finditer(r"#X connect (\d+) (\d+) (\d+) (\d+);", text)]
    assert all(a < len(objects) and b < len(objects) for a, _, b, _ in edges)
    return objects, edges


def _waits_for_every_nn_tilde_before_quitting(objects, edges, nn_objects):
    """Once out.wav is written, a trigger sends `reload` to every nn~ (its right outlet
    first) and then quits (its left outlet)."""
    write = next(i for i, line in enumerate(objects) if "write -wave" in line)
    written = next(b for a, _, b, _ in edges if a == write)   # the soundfiler that writes
    finish = next(b for a, _, b, _ in edges if a == written)
    assert "t b b" in objects[finish]
    reload = next(b for a, o, b, _ in edges if a == finish and o == 1)
    quit_ = next(b for a, o, b, _ in edges if a == finish and o == 0)
    assert "reload;" in objects[reload] and "pd quit" in objects[quit_]
    assert {b for a, _, b, _ in edges if a == reload} == set(nn_objects)
    assert not [a for a, _, b, _ in edges if b == quit_ and a != finish]


def test_patch_reloads_nn_tilde_before_quitting():
    """So that Pd never exits with a model call in flight (see batch_patch)."""
    objects, edges = _objects_and_edges(run_in_pd.batch_patch("model.ts", 2048, 1000, 22.6))
    nn = [i for i, line in enumerate(objects) if " nn~ " in line]
    assert len(nn) == 1
    _waits_for_every_nn_tilde_before_quitting(objects, edges, nn)


def test_encode_decode_patch_joins_every_latent_outlet_to_the_decoder():
    """tabplay~ -> encode; encode outlet k -> decode inlet k for every latent dimension;
    decode -> tabwrite~; both objects get bufsize and set deterministic, and reload
    before Pd quits."""
    text = run_in_pd.batch_patch("model.ts", 128, 1000, 22.6, "encode-decode", 5)
    objects, edges = _objects_and_edges(text)
    enc = next(i for i, line in enumerate(objects) if "nn~ model.ts encode 128;" in line)
    dec = next(i for i, line in enumerate(objects) if "nn~ model.ts decode 128;" in line)
    index = {name: i for i, line in enumerate(objects) for name in
             ("tabplay~", "tabwrite~", "bufsize", "set deterministic") if name in line}
    assert sorted((o, i) for a, o, b, i in edges if a == enc and b == dec) == \
        [(k, k) for k in range(5)]
    into = {(a, b) for a, _, b, _ in edges}
    assert (index["tabplay~"], enc) in into and (dec, index["tabwrite~"]) in into
    assert (enc, index["tabwrite~"]) not in into
    for message in ("bufsize", "set deterministic"):
        assert {(index[message], enc), (index[message], dec)} <= into
    _waits_for_every_nn_tilde_before_quitting(objects, edges, [enc, dec])
    with pytest.raises(ValueError, match="latent size"):
        run_in_pd.batch_patch("model.ts", 128, 1000, 22.6, "encode-decode")
    with pytest.raises(ValueError, match="one of"):
        run_in_pd.batch_patch("model.ts", 128, 1000, 22.6, "decode")


def test_stereo_patch_plays_each_channel_through_its_own_inlet_and_outlet():
    """Channel k: array in<k> -> tabplay~ -> nn~ inlet k; nn~ outlet k -> tabwrite~ ->
    array out<k>; in.wav is read into every input array and out.wav written from every
    output array; every player and recorder starts with the first channel's."""
    for methods, latent in (("forward", 0), ("encode-decode", 4)):
        text = run_in_pd.batch_patch("model.ts", 256, 1000, 22.6, methods, latent, channels=2)
        objects, edges = _objects_and_edges(text)
        find = lambda s: next(i for i, line in enumerate(objects) if line.endswith(s))
        play = [find("tabplay~ in;"), find("tabplay~ in1;")]
        write = [find("tabwrite~ out;"), find("tabwrite~ out1;")]
        first = find(f"nn~ model.ts {'forward' if latent == 0 else 'encode'} 256;")
        last = first if latent == 0 else find("nn~ model.ts decode 256;")
        for k in range(2):
            assert (play[k], 0, first, k) in edges and (last, k, write[k], 0) in edges
        start = next(a for a, _, b, _ in edges if b == play[0])
        assert {b for a, o, b, _ in edges if a == start and o == 1} == set(play + write)
        assert find("read -resize in.wav in in1;") >= 0
        assert find("write -wave -bytes 4 out.wav out out1;") >= 0
        assert find("array define in1;") >= 0 and find("array define out1 1000;") >= 0


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("pd")
    return export_quietly(make_run(root, ("brave",)), ["nn_tilde"], root / "out")["nn_tilde"]


@pytest.fixture(scope="module")
def module(exported):
    return torch.jit.load(str(exported))


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


def test_comparison_stores_what_tabwrite_stores():
    """Pd's [tabwrite~] stores values of tiny or huge exponent (PD_BIGORSMALL) as 0: a
    discrete model's output held 9.98e-20 at one sample, which Pd recorded as 0."""
    x = np.array([0.0, 9.98e-20, -2.0**-64, 2.0**-63, -2.0**-63, 0.5, -3.0, 1e-30,
                  2.0**64, 2.0**65, np.inf, np.nan], np.float32)
    stored = run_in_pd.as_tabwrite_stores(x)
    kept = np.array([1, 0, 0, 1, 1, 1, 1, 0, 1, 0, 0, 0], bool)
    assert np.array_equal(stored[kept], x[kept])
    assert not stored[~kept].any()


def test_encode_decode_comparison_chains_two_copies_of_the_file(exported):
    """With a second copy as the decoder: the emulation encodes with one nn~ and decodes
    its held latent signals with the other (from zero states each), its latency the sum
    of both objects'; its own output agrees exactly, and not with the emulation of one
    forward object (one buffer of latency less); the same output one vector late does
    not agree."""
    sr, block = 44100, 256
    signal = musical_signal(sr, 64 * 200, 1, seed=1)[0]
    enc, dec = torch.jit.load(str(exported)), torch.jit.load(str(exported))
    for m in (enc, dec):
        m.set_deterministic(True)
    with torch.inference_mode():
        latent = NnTildeHost(enc, "encode", block).run(signal[None, None])
        chained = NnTildeHost(dec, "decode", block).run(latent)[0, 0]
    assert latent.shape[1] == int(enc.encode_params[2]) > 1
    enc.reset()  # a streamed copy starts again from silence, as Pd's fresh load does
    same = run_in_pd.compare_with_emulation(enc, block, signal, chained, decoder=dec)
    assert same.agrees(0.0) and same.max_error == 0
    assert same.host_delay == 2 * (2 * block - 64)
    forward = run_in_pd.compare_with_emulation(torch.jit.load(str(exported)), block,
                                               signal, chained)
    assert not forward.agrees(1e-3)
    late = np.concatenate([np.zeros(64, np.float32), chained[:-64]])
    assert not run_in_pd.compare_with_emulation(enc, block, signal, late,
                                                decoder=dec).agrees(1e-3)


def test_stereo_comparison_keeps_the_channels_apart(tmp_path):
    """A stereo file's emulated output, channel by channel, agrees with itself; the same
    recording with its channels swapped does not."""
    run = make_run(tmp_path, ("brave",), extra=["rave.model.RAVE.n_channels = 2"],
                   unit_gains=True)
    module = torch.jit.load(str(export_quietly(run, ["nn_tilde"], tmp_path / "out")["nn_tilde"]))
    block = 256
    signal = musical_signal(44100, 64 * 200, 2, seed=1)
    module.set_deterministic(True)
    module.reset()
    with torch.inference_mode():
        emulated = NnTildeHost(module, "forward", block).run(signal[None])[0]
    assert emulated.shape == signal.shape and np.abs(emulated[0] - emulated[1]).max() > 0
    same = run_in_pd.compare_with_emulation(module, block, signal, emulated)
    assert same.agrees(0.0) and same.max_error == 0
    swapped = run_in_pd.compare_with_emulation(module, block, signal, emulated[::-1].copy())
    assert not swapped.agrees(1e-3)


def test_settings_reach_every_nn_tilde_after_deterministic():
    """`--set NAME VALUE` messages go in the set-up box after `set deterministic 1`
    (Pd's escaped comma between messages), so they reach each nn~ object it feeds."""
    settings = [("learn_source", "1"), ("reset_target", "0")]
    for methods in ("forward", "encode-decode"):
        text = run_in_pd.batch_patch("model.ts", 2048, 1000, 50.0, methods, latent_size=2,
                                     settings=settings)
        objects, edges = _objects_and_edges(text)
        box = next(i for i, line in enumerate(objects) if "set deterministic" in line)
        assert objects[box].endswith(
            "set deterministic 1 \\, set learn_source 1 \\, set reset_target 0;")
        nn = [i for i, line in enumerate(objects) if " nn~ " in line]
        assert {b for a, _, b, _ in edges if a == box} == set(nn)


def test_settings_are_typed_as_the_file_declares_them(module):
    """A bool attribute takes Pd's 0 / 1; a name the file lacks is refused with the
    names it has."""
    assert run_in_pd.attribute_value(module, "deterministic", "1") is True
    assert run_in_pd.attribute_value(module, "deterministic", "0") is False
    with pytest.raises(ValueError, match="no attribute 'learn_source'.*deterministic"):
        run_in_pd.attribute_value(module, "learn_source", "1")


def _stand_in(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\nimport sys\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.fixture
def nn_tilde_folder(tmp_path):
    folder = tmp_path / "nn_tilde"
    folder.mkdir()
    (folder / "nn~.pd_linux").write_bytes(b"")
    return folder


def _refused(argv, capsys) -> str:
    """main(argv) exits 2 as argparse does, with one line and no traceback: that line."""
    with pytest.raises(SystemExit) as exited:
        run_in_pd.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert "Traceback" not in err and "PytorchStreamReader" not in err
    return err.strip().splitlines()[-1]


def test_main_names_a_file_that_is_not_torchscript(tmp_path, nn_tilde_folder, capsys):
    """An ONNX graph, an HDF5 file, a training checkpoint or an anira folder given as the
    file is named for what it is, with the export to give instead (exit 2), before
    torch reads it (torch.jit.load's error was a traceback about a zip archive, exit 1:
    the code for "Pd's output differs")."""
    onnx = tmp_path / "m.onnx.onnx"
    onnx.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x03" + bytes(64))  # protobuf, as ONNX is
    h5 = tmp_path / "m.minifusion.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    ckpt = tmp_path / "best.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    anira = tmp_path / "m.anira"
    anira.mkdir()
    (anira / "forward.onnx").write_bytes(bytes(8))
    give = "give the .nn_tilde.ts export (rave-deploy export RUN -t nn_tilde)"
    tools = ["--nn-tilde", nn_tilde_folder, "--pd", sys.executable]
    for path, expect in ((onnx, f"{onnx} is an ONNX graph: {give}"),
                         (h5, f"{h5} is an HDF5 file (Minifusion's model file): {give}"),
                         (ckpt, f"{ckpt} is a training checkpoint, not an export: export it "
                                f"first (rave-deploy export {ckpt} -t nn_tilde)"),
                         (anira, f"{anira} is an anira export (a folder of ONNX graphs), not "
                                 f"a TorchScript file: {give}")):
        assert _refused([path, *tools], capsys).endswith(expect)


def test_main_refuses_a_test_signal_too_short_to_hear(exported, nn_tilde_folder, capsys):
    """--seconds 0, -1 or nan (a ValueError traceback), or shorter than nn~'s latency
    (Pd would record only silence): exit 2, naming a length that plays."""
    tools = ["--nn-tilde", nn_tilde_folder, "--pd", sys.executable]
    for seconds in ("0", "-1", "nan"):
        line = _refused([exported, *tools, "--seconds", seconds], capsys)
        assert line.endswith(f"--seconds {float(seconds):g}: the test signal's length is a "
                             "number of seconds above 0 (default 3)")
    line = _refused([exported, *tools, "--seconds", "0.001", "--block", "128"], capsys)
    assert ("--seconds 0.001: 44 samples at 44100 Hz, no more than nn~'s latency at N = 128 "
            "(192 samples)") in line and "give --seconds 0.02 or more" in line
    assert "--sr 0: a sample rate" in _refused([exported, *tools, "--sr", "0"], capsys)


def test_main_says_which_buffer_and_rate_nn_tilde_plays_at(exported, tmp_path,
                                                           nn_tilde_folder, capsys):
    """--block below the model's ratio: nn~ raises its buffer to the ratio (the emulation
    too), and the script says N = the ratio, not the --block it was given; --sr other
    than the sidecar's rate is warned of (nn~ does not resample: the model plays at the
    wrong pitch, though Pd and the emulation still agree). A stand-in Pd records silence
    (exit 1)."""
    ratio = json.loads(Path(str(exported) + ".json").read_text())["ratio"]
    assert ratio == 128
    pd = _stand_in(tmp_path / "pd", "import soundfile as sf\n"
                   "x, sr = sf.read('in.wav', dtype='float32', always_2d=True)\n"
                   "sf.write('out.wav', 0 * x, sr, subtype='FLOAT')\n")
    args = [str(exported), "--nn-tilde", str(nn_tilde_folder), "--pd", pd, "--seconds", "0.2"]
    assert run_in_pd.main(args + ["--block", "64", "--sr", "48000"]) == 1
    out, err = capsys.readouterr()
    assert "in Pd through nn~ (forward, N = 128 (--block 64 raised), 48000 Hz," in out
    assert "N = 64" not in out
    assert "--block 64 is below the model's largest ratio: nn~ raises its buffer to N = 128" \
        in err
    assert ("warning: --sr 48000: " f"{exported.name} runs at 44100 Hz (its sidecar's "
            "sample_rate) and nn~ does not resample") in err
    assert run_in_pd.main(args + ["--block", "256"]) == 1
    out, err = capsys.readouterr()
    assert "(forward, N = 256, 44100 Hz," in out and "warning" not in err and "raises" not in err
