"""targets/supercollider/run_in_scsynth.py: the score it writes, what it expects the RAVE
UGen to play, its comparison, and how it drives sclang and scsynth (stand-in programs
here: the RAVE UGen is in no registry CI reaches; targets/supercollider/README.md says
where the real server was run)."""
from __future__ import annotations

import json
import re
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rave_deploy.check.harness import musical_signal

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


def test_encoder_decoder_output_decodes_the_previous_blocks_latent(module, tmp_path):
    """RAVEEncoder into RAVEDecoder at a server block below the ratio: output block k is
    the decode of input block k - 1's latent (zeros first), i.e. encode over the whole
    signal, one zero frame in front, decoded over all frames at once; at a server block
    equal to the ratio, no zero frame. Two copies of the file (each UGen loads its own),
    from zero states; a larger server block is refused."""
    ratio, latent = int(module.decode_params[1]), int(module.decode_params[0])
    signal = musical_signal(44100, 30 * ratio, 1, seed=4)[0]
    path = tmp_path / "copy.ts"
    module.save(str(path))
    second = torch.jit.load(str(path))
    second.set_deterministic(True)
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


@pytest.fixture
def ugens(tmp_path):
    folder = tmp_path / "RAVE"
    (folder / "Classes").mkdir(parents=True)
    (folder / "Classes" / "RAVE.sc").write_text("// class file")
    (folder / "RAVE_scsynth.so").write_bytes(b"")
    return folder


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
    with pytest.raises(RuntimeError, match="no RAVE UGen there"):
        run_in_scsynth.render_in_scsynth(tmp_path / "m.ts", tmp_path / "Classes_only",
                                         signal, 44100, 64, sclang=sclang, scsynth=failed)
