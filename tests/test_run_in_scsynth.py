"""targets/supercollider/run_in_scsynth.py: the scores it writes, what it expects the RAVE
UGens and NN.ar to play, its comparison, and how it drives sclang and scsynth (stand-in
programs here: neither plugin is in a registry CI reaches; targets/supercollider/README.md
says where the real server was run)."""
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

from .runs import export_quietly, make_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "targets" / "supercollider"))
import run_in_scsynth  # noqa: E402


def test_score_plays_the_input_bus_through_the_rave_ugen():
    text = run_in_scsynth.score_script("/m/my model.ts", "/w/score.osc", 3.0)
    assert 'Out.ar(0, RAVE.new("/m/my model.ts", SoundIn.ar(0), 0, 1));' in text
    assert "['/d_recv', def.asBytes]" in text and "['/s_new', \\raveDeployCheck" in text
    assert '.writeOSCFile("/w/score.osc");' in text
    assert re.search(r"\[3\.0+, \['/c_set'", text)  # the score lasts the signal
    assert text.rstrip().endswith(")") and "0.exit;" in text


def test_score_chains_the_encoder_into_the_decoder():
    text = run_in_scsynth.score_script("/m/a.ts", "/w/score.osc", 2.0, "encoder-decoder", 4)
    assert ('Out.ar(0, RAVEDecoder.new("/m/a.ts", RAVEEncoder.new("/m/a.ts", 4, '
            'SoundIn.ar(0))));') in text
    with pytest.raises(ValueError, match="unknown ugen"):
        run_in_scsynth.score_script("/m/a.ts", "/w/score.osc", 2.0, "prior")


def test_nn_ar_scores_load_the_file_then_play_it_through_forward():
    """The first score only loads the file into NN.ar, its description going to the info
    file; the second registers the model from that description (NN.ar's own NRT helpers
    fail, see nn_ar_score_script), loads it at time 0 and plays input bus 0 through its
    forward UGen with the buffer size asked for, for the signal's length."""
    info = run_in_scsynth.nn_ar_info_script("/m/a b.ts", "/w/model.yaml", "/w/info.osc")
    assert '[0.0, NN.loadMsg(0, "/m/a b.ts", "/w/model.yaml")],' in info
    assert '.writeOSCFile("/w/info.osc");' in info and "0.exit;" in info
    text = run_in_scsynth.nn_ar_score_script("/m/a b.ts", "/w/model.yaml", "/w/score.osc",
                                             2.5, 512)
    assert 'NN.prReadInfoFile("/w/model.yaml");' in text
    assert 'NNModel.fromInfo(NN.prGetCachedInfo("/m/a b.ts"), 0)' in text
    assert "Out.ar(0, NN(\\raveDeploy, \\forward).ar(SoundIn.ar(0), 512));" in text
    assert '[0.0, NN.loadMsg(0, "/m/a b.ts", "/w/model.yaml")],' in text
    assert re.search(r"\[2\.50+, \['/c_set'", text) and '.writeOSCFile("/w/score.osc");' in text


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    root = tmp_path_factory.mktemp("sc")
    exported = export_quietly(make_run(root, ("brave",)), ["supercollider"], root / "out")
    m = torch.jit.load(str(exported["supercollider"]))
    m.set_deterministic(True)
    return m


def test_expected_output_is_forward_delayed_by_the_ugen(module):
    """One call per ratio from zero states, delayed by ratio - server block when the
    server block is smaller: the same as forward over the whole signal at once, delayed
    (block-size invariance, to float rounding)."""
    ratio = int(module.decode_params[1])
    signal = musical_signal(44100, 40 * ratio, 1, seed=2)[0]
    module.reset()
    with torch.inference_mode():
        whole = module.forward(torch.from_numpy(signal).reshape(1, 1, -1)).reshape(-1).numpy()
    for server_block, delay in ((64, ratio - 64), (16, ratio - 16), (ratio, 0), (2 * ratio, 0)):
        module.reset()
        out, d = run_in_scsynth.ugen_output(module, signal, len(signal), server_block)
        assert d == delay
        assert not out[:delay].any()
        np.testing.assert_allclose(out[delay:], whole[:len(signal) - delay],
                                   atol=1e-5 * np.abs(whole).max())


def test_comparison_passes_the_expected_output_and_fails_others(module):
    """The expected output agrees exactly, also after the module has streamed (it starts
    again from zero states, as a fresh load in scsynth does); one server block late, a
    changed sample and silence do not."""
    signal = musical_signal(44100, 64 * 150, 1, seed=1)[0]
    module.reset()
    expected, delay = run_in_scsynth.ugen_output(module, signal, len(signal), 64)
    same = run_in_scsynth.compare_with_ugen_code(module, signal, expected, 64)
    assert same.agrees(0.0) and same.max_error == 0 and same.host_delay == delay
    assert same.first_sound_host == same.first_sound_expected is not None
    assert "identical samples" in same.lines()[0]

    late = np.concatenate([np.zeros(64, np.float32), expected[:-64]])
    assert not run_in_scsynth.compare_with_ugen_code(module, signal, late, 64).agrees(1e-3)
    changed = expected.copy()
    changed[-100] += 0.01 * np.abs(expected).max()
    result = run_in_scsynth.compare_with_ugen_code(module, signal, changed, 64)
    assert result.agrees(0.02) and not result.agrees(0.005)
    assert "dB below the peak" in result.lines()[0]
    inverted = run_in_scsynth.compare_with_ugen_code(module, signal, -expected, 64)
    assert inverted.max_error == 2 * inverted.peak and "not below the peak" in inverted.lines()[0]
    with pytest.raises(ValueError, match="same shape"):
        run_in_scsynth.compare_recording(expected[:-64], expected, "scsynth", "expected", 0, "")
    silent = run_in_scsynth.compare_with_ugen_code(module, signal, np.zeros_like(expected), 64)
    assert silent.host_peak == 0 and silent.first_sound_host is None
    assert not silent.agrees(1.0)


def _signal_and_second_copy(module, tmp_path):
    """A test signal of 30 latent frames, and a second copy of the file (deterministic),
    for the synths whose two UGens each load their own."""
    signal = musical_signal(44100, 30 * int(module.decode_params[1]), 1, seed=4)[0]
    module.save(str(tmp_path / "copy.ts"))
    second = torch.jit.load(str(tmp_path / "copy.ts"))
    second.set_deterministic(True)
    return signal, second


def test_encoder_decoder_output_decodes_the_previous_blocks_latent(module, tmp_path):
    """RAVEEncoder into RAVEDecoder at a server block below the ratio: output block k is
    the decode of input block k - 1's latent (zeros first), i.e. encode over the whole
    signal, one zero frame in front, decoded over all frames at once; at a server block
    equal to the ratio, no zero frame. Two copies of the file (each UGen loads its own),
    from zero states; a larger server block is refused."""
    ratio, latent = int(module.decode_params[1]), int(module.decode_params[0])
    signal, second = _signal_and_second_copy(module, tmp_path)
    x = torch.from_numpy(signal).reshape(1, 1, -1)
    for server_block, shift in ((64, 1), (16, 1), (ratio, 0)):
        for m in (module, second):
            m.reset()
        out, delay = run_in_scsynth.encoder_decoder_output(module, second, signal,
                                                           len(signal), server_block)
        assert delay == shift * ratio
        for m in (module, second):
            m.reset()
        with torch.inference_mode():
            z = module.encode(x)
            z = torch.cat([torch.zeros(1, latent, shift), z], -1)[..., :z.shape[-1]]
            whole = second.decode(z).reshape(-1).numpy()
        np.testing.assert_allclose(out, whole[:len(signal)], atol=1e-5 * np.abs(whole).max())
    with pytest.raises(ValueError, match=f"server block {2 * ratio} > ratio"):
        run_in_scsynth.encoder_decoder_output(module, second, signal, len(signal), 2 * ratio)
    # the comparison takes that output for this synth, not forward's
    for m in (module, second):
        m.reset()
    expected, _ = run_in_scsynth.encoder_decoder_output(module, second, signal, len(signal), 64)
    assert run_in_scsynth.compare_with_ugen_code(module, signal, expected, 64,
                                                 "encoder-decoder", second).agrees(0)
    assert not run_in_scsynth.compare_with_ugen_code(module, signal, expected, 64).agrees(1e-3)


def _stand_in(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\nimport re, sys, shutil\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def _plugin_folder(folder: Path, family: "run_in_scsynth.UGenFamily") -> Path:
    """A plugin's install layout, as its build leaves it: the (empty) binary at the top,
    the class file in Classes/."""
    (folder / "Classes").mkdir(parents=True)
    (folder / "Classes" / family.class_file).write_text("// class file")
    (folder / family.binaries[0].replace("*", "_scsynth")).write_bytes(b"")
    return folder


@pytest.fixture
def ugens(tmp_path):
    return _plugin_folder(tmp_path / "RAVE", run_in_scsynth.RAVE_UGENS)


# sclang: writes a placeholder score where the program asks for it
SCLANG = ("text = open(sys.argv[-1]).read()\n"
          "open(re.search(r'writeOSCFile\\(\"([^\"]+)\"\\)', text).group(1), 'w').write('osc')\n"
          "print('score written')\n")


def test_render_reads_what_scsynth_wrote_with_the_ugen_loaded(tmp_path, ugens):
    """The server runs in NRT mode on the score with the input file, the block size asked
    for and the UGen's folder on its plugin path; its output file is what comes back."""
    args_file = tmp_path / "scsynth_args.json"
    scsynth = _stand_in(tmp_path / "scsynth", (
        f"open({str(args_file)!r}, 'w').write(__import__('json').dumps(sys.argv[1:]))\n"
        "import soundfile as sf\n"
        "x, sr = sf.read(sys.argv[3], dtype='float32')\n"
        "sf.write(sys.argv[4], 0.5 * x, sr, subtype='FLOAT')\n"
        "print('loading: model\\n\\tblock size: 128')\n"))
    sclang = _stand_in(tmp_path / "sclang", SCLANG)
    signal = musical_signal(44100, 4410, 1, seed=3)[0]
    out, log = run_in_scsynth.render_in_scsynth(tmp_path / "m.ts", ugens, signal, 44100, 32,
                                                sclang=sclang, scsynth=scsynth,
                                                sc_plugins="/sc/plugins")
    np.testing.assert_allclose(out, 0.5 * signal, rtol=1e-6)
    args = json.loads(args_file.read_text())
    assert args[:7] == ["-N", "score.osc", "in.wav", "out.wav", "44100", "WAV", "float"]
    assert args[args.index("-z") + 1] == "32"
    assert args[args.index("-U") + 1].split(":") == ["/sc/plugins", str(ugens)]
    assert "score written" in log and "block size: 128" in log


def test_render_reports_a_model_the_ugen_could_not_load(tmp_path, ugens):
    """scsynth renders anyway when the UGen fails to load the file (the input shows
    through): the log's error makes it a failure, not an output to compare; a server that
    never created the UGen is an error of the set-up."""
    sclang = _stand_in(tmp_path / "sclang", SCLANG)
    copy_input = "shutil.copyfile(sys.argv[3], sys.argv[4])\n"
    failed = _stand_in(tmp_path / "scsynth_fails",
                       copy_input + "print('error loading the model: file not found')\n")
    signal = musical_signal(44100, 4410, 1, seed=3)[0]
    out, log = run_in_scsynth.render_in_scsynth(tmp_path / "m.ts", ugens, signal, 44100, 64,
                                                sclang=sclang, scsynth=failed)
    assert out is None and "error loading the model" in log
    silent = _stand_in(tmp_path / "scsynth_no_ugen", copy_input)
    with pytest.raises(RuntimeError, match="never created the RAVE UGen"):
        run_in_scsynth.render_in_scsynth(tmp_path / "m.ts", ugens, signal, 44100, 64,
                                         sclang=sclang, scsynth=silent)
    with pytest.raises(RuntimeError, match="the RAVE UGen is not there"):
        run_in_scsynth.render_in_scsynth(tmp_path / "m.ts", tmp_path / "Classes_only",
                                         signal, 44100, 64, sclang=sclang, scsynth=failed)


def test_nn_ar_buffer_and_output(module):
    """NN.ar's buffer: the model's largest ratio for -1, 0 or less than it, else the next
    power of two. Its output: forward on buffer after buffer, delayed by buffer - server
    block: forward over the whole signal at once, delayed (to float rounding); a server
    block above the buffer is refused (NN.ar disables itself)."""
    ratio = int(module.decode_params[1])
    assert [run_in_scsynth.nn_ar_buffer(module, b) for b in (-1, 0, ratio // 2, ratio)] == \
        [ratio] * 4
    assert run_in_scsynth.nn_ar_buffer(module, 3 * ratio) == 4 * ratio
    signal = musical_signal(44100, 40 * ratio, 1, seed=2)[0]
    module.reset()
    with torch.inference_mode():
        whole = module.forward(torch.from_numpy(signal).reshape(1, 1, -1)).reshape(-1).numpy()
    for server_block, buffer_size, delay in ((64, -1, ratio - 64), (16, 4 * ratio, 4 * ratio - 16),
                                             (ratio, -1, 0)):
        module.reset()
        out, d = run_in_scsynth.nn_ar_output(module, signal, len(signal), server_block,
                                             buffer_size)
        assert d == delay and not out[:delay].any()
        np.testing.assert_allclose(out[delay:], whole[:len(signal) - delay],
                                   atol=1e-5 * np.abs(whole).max())
        module.reset()
        assert run_in_scsynth.compare_with_ugen_code(module, signal, out, server_block,
                                                     "nn-ar", buffer_size=buffer_size).agrees(0)
    with pytest.raises(ValueError, match="disables itself"):
        run_in_scsynth.nn_ar_output(module, signal, len(signal), 2 * ratio)
    # the comparison takes NN.ar's delay for this UGen, not the RAVE UGen's
    module.reset()
    out, _ = run_in_scsynth.nn_ar_output(module, signal, len(signal), 64, 4 * ratio)
    assert not run_in_scsynth.compare_with_ugen_code(module, signal, out, 64).agrees(1e-3)


@pytest.fixture
def nn_ar(tmp_path):
    return _plugin_folder(tmp_path / "NNModel", run_in_scsynth.NN_AR)


# sclang for NN.ar: the placeholder score names the info file NN.ar is to write
SCLANG_NN = ("text = open(sys.argv[-1]).read()\n"
             "info = re.search(r'NN.loadMsg\\(0, \"[^\"]+\", \"([^\"]+)\"\\)', text).group(1)\n"
             "open(re.search(r'writeOSCFile\\(\"([^\"]+)\"\\)', text).group(1), 'w').write(info)\n"
             "print('score written')\n")
# scsynth: the info pass (no input file) writes the description, the render halves its input
SCSYNTH_NN = ("import json, soundfile as sf\n"
              "calls = __import__('pathlib').Path(ARGS)\n"
              "calls.write_text(calls.read_text() + json.dumps(sys.argv[1:]) + '\\n' "
              "if calls.exists() else json.dumps(sys.argv[1:]) + '\\n')\n"
              "print(LOAD)\n"
              "if sys.argv[3] == '_':\n"
              "    if WRITE_INFO: open(open(sys.argv[2]).read(), 'w').write('- idx: 0')\n"
              "    sf.write(sys.argv[4], [0.0] * 64, 44100)\n"
              "else:\n"
              "    x, sr = sf.read(sys.argv[3], dtype='float32')\n"
              "    sf.write(sys.argv[4], 0.5 * x, sr, subtype='FLOAT')\n")


def _scsynth_nn(path: Path, calls: Path, load: str = "NNModelDesc: loaded m",
                write_info: bool = True) -> str:
    return _stand_in(path, SCSYNTH_NN.replace("ARGS", repr(str(calls)))
                     .replace("LOAD", repr(load)).replace("WRITE_INFO", str(write_info)))


def test_nn_ar_render_describes_the_model_then_renders(tmp_path, nn_ar):
    """Two server runs: the info pass (no input file) that writes the model's description,
    then the render over the input with the block size asked for and NN.ar's folder on the
    plugin path; the output comes back. A load error in the log is a failure, not an
    output; no description, or a folder without NN.ar, is an error of the set-up."""
    calls = tmp_path / "calls.jsonl"
    sclang = _stand_in(tmp_path / "sclang", SCLANG_NN)
    scsynth = _scsynth_nn(tmp_path / "scsynth", calls)
    signal = musical_signal(44100, 4410, 1, seed=3)[0]
    out, log = run_in_scsynth.render_in_scsynth(tmp_path / "m.ts", nn_ar, signal, 44100, 32,
                                                sclang=sclang, scsynth=scsynth,
                                                sc_plugins="/sc/plugins", ugen="nn-ar",
                                                buffer_size=256)
    np.testing.assert_allclose(out, 0.5 * signal, rtol=1e-6)
    info_pass, render = [json.loads(line) for line in calls.read_text().splitlines()]
    assert info_pass[:4] == ["-N", "info.osc", "_", "info.wav"]
    assert render[:4] == ["-N", "score.osc", "in.wav", "out.wav"]
    assert render[render.index("-z") + 1] == "32"
    assert render[render.index("-U") + 1].split(":") == ["/sc/plugins", str(nn_ar)]
    assert log.count("score written") == 2

    failed = _scsynth_nn(tmp_path / "scsynth_fails", tmp_path / "c2.jsonl",
                         load="ERROR: NNModelDesc can't load model m")
    out, log = run_in_scsynth.render_in_scsynth(tmp_path / "m.ts", nn_ar, signal, 44100, 64,
                                                sclang=sclang, scsynth=failed, ugen="nn-ar")
    assert out is None and "can't load model" in log
    mute = _scsynth_nn(tmp_path / "scsynth_mute", tmp_path / "c3.jsonl", write_info=False)
    with pytest.raises(RuntimeError, match="wrote no description"):
        run_in_scsynth.render_in_scsynth(tmp_path / "m.ts", nn_ar, signal, 44100, 64,
                                         sclang=sclang, scsynth=mute, ugen="nn-ar")
    with pytest.raises(RuntimeError, match="NN.ar is not there"):
        run_in_scsynth.render_in_scsynth(tmp_path / "m.ts", tmp_path / "Classes_only", signal,
                                         44100, 64, sclang=sclang, scsynth=scsynth,
                                         ugen="nn-ar")


def test_nn_ar_encode_decode_output_decodes_a_shifted_latent(module, tmp_path):
    """NN.ar's encode UGen into its decode UGen, in NRT (each buffer computed at once, one
    model instance per UGen): the decoder reads, for its frame g, the latent the encoder
    computed for input frame g - (B/R - 1) (the encoder's output comes B - z samples late
    and the decoder takes the last sample of each R-sample group), and its output comes
    B - z samples late: decode over the whole signal with B/R - 1 zero frames in front,
    delayed by B - z. The pair's delay is 2 (B - z); a server block above B is refused;
    the comparison takes this output for this synth."""
    ratio, latent = int(module.decode_params[1]), int(module.decode_params[0])
    signal, second = _signal_and_second_copy(module, tmp_path)
    x = torch.from_numpy(signal).reshape(1, 1, -1)
    for server_block, buffer_size in ((64, -1), (16, 4 * ratio), (ratio, 2 * ratio)):
        block = run_in_scsynth.nn_ar_buffer(module, buffer_size)
        for m in (module, second):
            m.reset()
        out, delay = run_in_scsynth.nn_ar_encode_decode_output(
            module, second, signal, len(signal), server_block, buffer_size)
        assert delay == 2 * (block - server_block)
        for m in (module, second):
            m.reset()
        with torch.inference_mode():
            z = module.encode(x)
            shift = block // ratio - 1
            z = torch.cat([torch.zeros(1, latent, shift), z], -1)[..., :z.shape[-1]]
            whole = second.decode(z).reshape(-1).numpy()
        late = block - server_block
        assert not out[:late].any()
        np.testing.assert_allclose(out[late:], whole[:len(signal) - late],
                                   atol=1e-5 * np.abs(whole).max())
        for m in (module, second):
            m.reset()
        assert run_in_scsynth.compare_with_ugen_code(
            module, signal, out, server_block, "nn-ar-encode-decode", second,
            buffer_size).agrees(0)
    with pytest.raises(ValueError, match="disables itself"):
        run_in_scsynth.nn_ar_encode_decode_output(module, second, signal, len(signal),
                                                  2 * ratio)
    text = run_in_scsynth.nn_ar_score_script("/m.ts", "/i.yaml", "/s.osc", 1.0, 256,
                                             "nn-ar-encode-decode")
    assert ("Out.ar(0, NN(\\raveDeploy, \\decode).ar(NN(\\raveDeploy, \\encode)"
            ".ar(SoundIn.ar(0), 256), 256));") in text
    with pytest.raises(ValueError, match="unknown NN.ar synth"):
        run_in_scsynth.nn_ar_score_script("/m.ts", "/i.yaml", "/s.osc", 1.0, 256, "prior")


def test_nn_ar_plays_every_channel_of_a_stereo_file(tmp_path, nn_ar, ugens):
    """NN.ar feeds a stereo file one input bus per channel (SoundIn.ar((0..1))), the
    server runs with two input and output channels, and the render comes back channel by
    channel; the expected output is forward on two-channel buffers, which the comparison
    keeps apart (swapped channels fail). The RAVE UGens feed one channel: refused."""
    text = run_in_scsynth.nn_ar_score_script("/m/a.ts", "/w/i.yaml", "/w/s.osc", 1.0, 512,
                                             "nn-ar-encode-decode", channels=2)
    assert ("NN(\\raveDeploy, \\decode).ar(NN(\\raveDeploy, \\encode)"
            ".ar(SoundIn.ar((0..1)), 512), 512)") in text

    calls = tmp_path / "calls.jsonl"
    sclang = _stand_in(tmp_path / "sclang", SCLANG_NN)
    scsynth = _scsynth_nn(tmp_path / "scsynth", calls)
    signal = musical_signal(44100, 4410, 2, seed=3)
    out, _ = run_in_scsynth.render_in_scsynth(tmp_path / "m.ts", nn_ar, signal, 44100, 64,
                                              sclang=sclang, scsynth=scsynth, ugen="nn-ar",
                                              buffer_size=256)
    np.testing.assert_allclose(out, 0.5 * signal, rtol=1e-6)
    render = json.loads(calls.read_text().splitlines()[-1])
    assert render[render.index("-i") + 1] == render[render.index("-o") + 1] == "2"
    with pytest.raises(ValueError, match="feeds one channel"):
        run_in_scsynth.render_in_scsynth(tmp_path / "m.ts", ugens, signal, 44100, 64,
                                         sclang=sclang, scsynth=scsynth)

    run = make_run(tmp_path, ("brave",), extra=["rave.model.RAVE.n_channels = 2"],
                   name="stereo", unit_gains=True)
    stereo = torch.jit.load(str(export_quietly(run, ["nn_tilde"], tmp_path / "out")["nn_tilde"]))
    stereo.set_deterministic(True)
    ratio = int(stereo.decode_params[1])
    signal = musical_signal(44100, 40 * ratio, 2, seed=2)
    stereo.reset()
    expected, delay = run_in_scsynth.nn_ar_output(stereo, signal, signal.shape[-1], 64, 256)
    assert expected.shape == signal.shape and delay == 256 - 64
    assert np.abs(expected[0] - expected[1]).max() > 0
    assert run_in_scsynth.compare_with_ugen_code(stereo, signal, expected, 64, "nn-ar",
                                                 buffer_size=256).agrees(0)
    assert not run_in_scsynth.compare_with_ugen_code(stereo, signal, expected[::-1].copy(), 64,
                                                     "nn-ar", buffer_size=256).agrees(1e-3)


def test_nn_ar_settings_go_in_every_ugens_attributes(tmp_path, module, nn_ar, ugens, capsys):
    """``--set NAME VALUE``: each NN.ar UGen of the synth passes the pairs in its
    ``attributes:`` argument (as numbers); the RAVE UGens set no attributes, and a name
    the file lacks is refused with the names it has (exit 2 both)."""
    attrs = ", attributes: [\\learn_source, 1, \\reset_target, 0]"
    settings = [("learn_source", "1"), ("reset_target", "0.0")]
    text = run_in_scsynth.nn_ar_score_script("/m/a.ts", "/w/i.yaml", "/w/s.osc", 1.0, 512,
                                             "nn-ar-encode-decode", settings=settings)
    assert (f"NN(\\raveDeploy, \\decode).ar(NN(\\raveDeploy, \\encode)"
            f".ar(SoundIn.ar(0), 512{attrs}), 512{attrs})") in text
    text = run_in_scsynth.nn_ar_score_script("/m/a.ts", "/w/i.yaml", "/w/s.osc", 1.0, 512,
                                             settings=settings)
    assert f"NN(\\raveDeploy, \\forward).ar(SoundIn.ar(0), 512{attrs})" in text

    model = tmp_path / "m.ts"
    module.save(str(model))
    tools = ["--sclang", _stand_in(tmp_path / "sclang", SCLANG_NN),
             "--scsynth", _stand_in(tmp_path / "scsynth", "")]
    for args, expect in (
            (["--ugens", str(ugens), "--set", "deterministic", "1"],
             "the RAVE UGens set no attributes"),
            (["--ugens", str(nn_ar), "--ugen", "nn-ar", "--set", "learn_source", "1"],
             "no attribute 'learn_source' (it has deterministic)")):
        with pytest.raises(SystemExit) as exited:
            run_in_scsynth.main([str(model), *tools, *args])
        assert exited.value.code == 2
        assert expect in capsys.readouterr().err


def test_main_names_a_file_that_is_not_torchscript(tmp_path, module, nn_ar, ugens, capsys):
    """An ONNX graph, an HDF5 file or a checkpoint given as the file is named for what it
    is, with the export to give instead (exit 2; torch's zip-archive traceback, exit 1,
    before); NN.ar asks for nn~'s file, which it plays. --seconds 0 or -1 (a ValueError
    traceback before), or a signal shorter than the UGen's delay and one call: exit 2."""
    onnx = tmp_path / "m.onnx.onnx"
    onnx.write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x03" + bytes(64))
    h5 = tmp_path / "m.minifusion.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    ckpt = tmp_path / "best.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    model = tmp_path / "m.ts"
    module.save(str(model))
    tools = ["--sclang", _stand_in(tmp_path / "sclang", SCLANG),
             "--scsynth", _stand_in(tmp_path / "scsynth", "")]

    def refused(*args):
        with pytest.raises(SystemExit) as exited:
            run_in_scsynth.main([*map(str, args), *tools])
        err = capsys.readouterr().err
        assert exited.value.code == 2, err
        assert "Traceback" not in err and "PytorchStreamReader" not in err
        return err.strip().splitlines()[-1]

    give = "give the .supercollider.ts export (rave-deploy export RUN -t supercollider)"
    assert refused(onnx, "--ugens", ugens).endswith(f"{onnx} is an ONNX graph: {give}")
    assert refused(h5, "--ugens", ugens).endswith(
        f"{h5} is an HDF5 file (Minifusion's model file): {give}")
    assert refused(ckpt, "--ugens", ugens).endswith(
        f"{ckpt} is a training checkpoint, not an export: export it first "
        f"(rave-deploy export {ckpt} -t supercollider)")
    assert refused(onnx, "--ugens", nn_ar, "--ugen", "nn-ar").endswith(
        "give the .nn_tilde.ts export (rave-deploy export RUN -t nn_tilde)")
    for seconds in ("0", "-1"):
        assert refused(model, "--ugens", ugens, "--seconds", seconds).endswith(
            f"--seconds {seconds}: the test signal's length is a number of seconds above 0 "
            "(default 3)")
    line = refused(model, "--ugens", ugens, "--seconds", "0.001")
    assert ("--seconds 0.001: 44 samples at 44100 Hz, not more than the RAVE UGen's delay "
            "(64 samples) and one call of the model (128)") in line


def test_main_warns_of_a_server_rate_the_file_was_not_made_for(tmp_path, module, ugens,
                                                                capsys):
    """The RAVE UGens do not resample: ``--sr`` other than the sidecar's sample_rate is
    warned of (the model hears its input too fast or too slow; the comparison still holds,
    so the run goes on), with the export for that rate when the model's own rate divides
    it; the sidecar's rate is the server's by default, and an unreadable sidecar is
    refused (exit 2). A stand-in scsynth plays half the input: the comparison fails."""
    model = tmp_path / "m.ts"
    module.save(str(model))
    sidecar = Path(str(model) + ".json")
    sidecar.write_text(json.dumps({"sample_rate": 44100, "model_sample_rate": 44100}))
    scsynth = _stand_in(tmp_path / "scsynth", (
        "import soundfile as sf\n"
        "x, sr = sf.read(sys.argv[3], dtype='float32')\n"
        "sf.write(sys.argv[4], 0.5 * x, sr, subtype='FLOAT')\n"
        "print('loading: model\\n\\tblock size: 128')\n"))
    args = [str(model), "--ugens", str(ugens), "--sclang", _stand_in(tmp_path / "sclang", SCLANG),
            "--scsynth", scsynth, "--seconds", "0.2"]
    assert run_in_scsynth.main(args + ["--sr", "88200"]) == 1
    err = capsys.readouterr().err
    assert ("warning: --sr 88200: m.ts runs at 44100 Hz (its sidecar's sample_rate) and the "
            "RAVE UGen does not resample: in scsynth at 88200 Hz the model hears its input "
            "2 times too fast") in err
    assert "or export it for 88200 Hz (rave-deploy export RUN -t supercollider --sr 88200)" \
        in err
    assert run_in_scsynth.main(args + ["--sr", "22050"]) == 1
    err = capsys.readouterr().err
    assert "hears its input 2 times too slow" in err and "export it for" not in err
    assert run_in_scsynth.main(args) == 1
    out, err = capsys.readouterr()
    assert "warning" not in err and "44100 Hz" in out
    sidecar.write_text("{")
    with pytest.raises(SystemExit) as exited:
        run_in_scsynth.main(args + ["--sr", "44100"])
    assert exited.value.code == 2
    assert f"{sidecar}: not a readable rave-deploy sidecar" in capsys.readouterr().err
