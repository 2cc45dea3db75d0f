"""v3's AdaIN layers in exports: :mod:`rave_deploy.style_transfer`.

TorchScript files let the host teach a style (acids-rave's attributes ``learn_target``,
``learn_source``, ``reset_target``, ``reset_source``); ONNX graphs and the checker's
reference apply what the checkpoint learned. The layer must compute what AdaIN computes
(acids-rave 2.3.1's class gave the same bits in a session's oracle run, see docs/style-transfer.md),
and the file what its eager module computes.
"""
from __future__ import annotations

import json
import shutil
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn as nn
from click.testing import CliRunner

from rave_core.data.preprocess import read_audio
from rave_core.models.layers import AdaptiveInstanceNormalization
from rave_core.run import open_run
from rave_deploy import style_teaching
from rave_deploy.check import CheckUsageError, check_artifact
from rave_deploy.check.report import reports_to_json, write_html_report
from rave_deploy.cli import main as deploy_cli
from rave_deploy.export import _warn_untaught_side
from rave_deploy.sidecar import read_sidecar, shown_path
from rave_deploy.style_transfer import (LearnedAdaIN, StyleTransfer, adain_layers,
                                        freeze_adain, make_style_learnable, style_layers)
from rave_deploy.targets import CheckOptions, ExportOptions, registry
from rave_deploy.torchscript import (STYLE_ATTRIBUTES, ScriptedRAVE, build_scripted_rave,
                                     script, torchscript_bytes)
from tests.runs import export_quietly, make_run

#: (flags, calls): learn the target, then the source, transfer, forget each side, again.
PLAN = [("target", 5), ("source", 4), ("", 3), ("reset_source", 1), ("source", 3), ("", 2),
        ("reset_target", 1), ("target", 2), ("", 2)]


def _drive(adain: AdaptiveInstanceNormalization, layer, step: str) -> None:
    """Set both layers up for one call of ``step`` (AdaIN through its buffers, as
    acids-rave's export does; ours through its flags and reset methods)."""
    adain.learn_x.fill_(float(step == "source"))
    adain.learn_y.fill_(float(step == "target"))
    layer.learn_source, layer.learn_target = step == "source", step == "target"
    if step == "reset_source":
        adain.mean_x.zero_(), adain.std_x.fill_(1), adain.num_update_x.zero_()
        layer.reset_source()
    if step == "reset_target":
        adain.mean_y.zero_(), adain.std_y.fill_(1), adain.num_update_y.zero_()
        layer.reset_target()


@pytest.mark.parametrize("scripted", [False, True])
def test_style_transfer_computes_what_adain_computes(scripted):
    """Bit for bit, through a plan that learns, transfers and forgets both sides, with
    batches of 3 out of AdaIN's 64 statistics rows; scripted as the file scripts it."""
    g = torch.Generator().manual_seed(0)
    adain = AdaptiveInstanceNormalization(8).eval()
    layer = StyleTransfer(AdaptiveInstanceNormalization(8))
    layer = torch.jit.script(layer) if scripted else layer
    transferred = 0
    with torch.no_grad():
        for step, calls in PLAN:
            for _ in range(calls):
                _drive(adain, layer, step)
                x = 2 * torch.randn(3, 8, 4, generator=g) + 1
                expected, got = adain(x), layer(x)
                assert torch.equal(got, expected), step
                transferred += int(not torch.equal(got, x))
    assert transferred >= 9  # the plan transfers after each source it learns
    for name in ("mean_x", "std_x", "num_update_x", "mean_y", "std_y", "num_update_y"):
        assert torch.equal(getattr(layer, name), getattr(adain, name)), name


def test_a_single_frame_teaches_nothing():
    """AdaIN's unbiased std of one frame is NaN, which it would keep (and transfer) from
    then on; the export's layer skips such a call and keeps transferring."""
    adain = AdaptiveInstanceNormalization(4).eval()
    layer = StyleTransfer(adain)
    x = torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(1))
    for step in ("target", "source"):
        _drive(adain, layer, step)
        adain(x), layer(x)
    counts = (layer.num_update_x.clone(), layer.num_update_y.clone())
    layer.learn_source = True
    y = layer(x[..., :1])
    assert torch.isfinite(y).all() and not torch.equal(y, x[..., :1])
    assert torch.equal(layer.num_update_x, counts[0]) and torch.equal(layer.num_update_y, counts[1])
    _drive(adain, layer, "source")
    assert torch.isnan(adain(x[..., :1])).any()  # what the layer avoids


def test_learned_adain_computes_what_adain_computes():
    """Without host learning (ONNX, the checker's reference): an AdaIN whose checkpoint
    learned source and target statistics exports as that transfer; one that learned
    nothing exports as nothing; ``make_style_learnable`` starts from the same statistics."""
    g = torch.Generator().manual_seed(0)
    adain = AdaptiveInstanceNormalization(4).eval()
    x = torch.randn(3, 4, 50, generator=g)
    for name in ("mean_x", "mean_y"):
        getattr(adain, name).copy_(torch.randn(64, 4, 1, generator=g))
    for name in ("std_x", "std_y"):
        getattr(adain, name).copy_(torch.rand(64, 4, 1, generator=g) + 0.5)
    holder = nn.Sequential(nn.Identity(), adain)
    assert freeze_adain(holder) == 1 and isinstance(holder[1], nn.Identity)  # nothing learned
    adain.num_update_x.fill_(3)
    adain.num_update_y.fill_(2)
    for replace, kind in ((freeze_adain, LearnedAdaIN), (make_style_learnable, StyleTransfer)):
        holder = nn.Sequential(nn.Identity(), adain)
        assert replace(holder) == 1 and isinstance(holder[1], kind)
        with torch.no_grad():
            torch.testing.assert_close(holder(x), adain(x), rtol=0, atol=0)


@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    """A small v3 run, its model, and its nn_tilde file."""
    root = tmp_path_factory.mktemp("style")
    run = make_run(root, ("v3",), name="v3", unit_gains=True)
    path = export_quietly(run, ["nn_tilde"], root / "out")["nn_tilde"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_run(run).model
    return run, model, path


def _sequence(module, block: int):
    """forward on a source and a target, learn the target, learn the source, transfer,
    forget the target: the outputs of each phase (deterministic, streaming states reset
    before each)."""
    g = torch.Generator().manual_seed(3)
    source = 0.3 * torch.randn(1, 1, 4 * block, generator=g)
    target = torch.sin(torch.arange(4 * block) * 0.01)[None, None] + 0.1 * torch.randn(
        1, 1, 4 * block, generator=g)
    module.set_deterministic(True)
    outputs = []

    def run(x):
        module.reset()
        with torch.inference_mode():
            outputs.append(torch.cat([module.forward(x[..., i:i + block])
                                      for i in range(0, x.shape[-1], block)], -1))

    run(source)
    run(target)
    module.set_learn_target(True)
    run(target)
    module.set_learn_target(False)
    module.set_learn_source(True)
    run(source)
    module.set_learn_source(False)
    run(source)
    module.set_reset_target(True)
    run(source)
    return outputs


def test_v3_file_learns_a_style_as_its_eager_module(v3):
    """The file offers acids-rave's four attributes, learns and transfers as the eager
    module it was scripted from (block 2048 and 4096), and passes the checker's
    style.transfer check; freezing kept the statistics as state."""
    run, model, path = v3
    file = torch.jit.load(str(path))
    attributes = file.get_attributes()
    assert set(STYLE_ATTRIBUTES) <= set(attributes)
    # forward stays inlined here (calling encode and decode made v3's load 5x slower)
    assert not [n for n in file._c._get_method("forward").graph.nodes()
                if n.kind() == "prim::CallMethod"]
    assert set(STYLE_ATTRIBUTES) <= set(read_sidecar(path)["attributes"])
    assert all(getattr(file, f"get_{a}")() == [False] for a in STYLE_ATTRIBUTES)
    for block in (model.ratio, 2 * model.ratio):
        file = torch.jit.load(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eager = build_scripted_rave(model).eval()
        ours, theirs = _sequence(file, block), _sequence(eager, block)
        plain, plain_target, learning_target, learning_source, styled, after_reset = ours
        assert torch.equal(learning_target, plain_target)  # learning the target passes through
        assert float((styled - plain).abs().max()) > 1e-2 * float(plain.abs().max())
        assert torch.equal(after_reset, plain)  # no target: no transfer, the source kept
        for got, expected in zip(ours, theirs):
            torch.testing.assert_close(got, expected, rtol=0,
                                       atol=1e-5 * float(expected.abs().max()))
    report = check_artifact(path, options=CheckOptions(block_sizes=[model.ratio], seconds=1.0,
                                                       rtf_seconds=0.1))
    style = next(r for r in report.results if r.name == "style.transfer")
    assert style.passed, style.message


def test_a_file_whose_attributes_reach_no_layer_fails_the_check(v3, tmp_path):
    """The defect of acids-rave 2.3.1's v3 export (its flag pass-through is off): the
    attributes exist, learning changes nothing, and check says so."""
    run, model, _ = v3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = build_scripted_rave(model)
    module._update_style = types.MethodType(ScriptedRAVE._update_style, module)  # unwired
    path = tmp_path / "unwired.ts"
    path.write_bytes(torchscript_bytes(script(module)))
    report = check_artifact(path, run=str(run), options=CheckOptions(
        block_sizes=[model.ratio], seconds=1.0, rtf_seconds=0.1))
    style = next(r for r in report.results if r.name == "style.transfer")
    assert not style.passed and "reach no layer" in style.message


# ------------------------------------------------------------------ export --style-*
@pytest.fixture(scope="module")
def style_audio(v3, tmp_path_factory):
    """A target at 48 kHz (resampled on reading) and a stereo source (mixed to the
    model's mono), a few blocks each."""
    _, model, _ = v3
    root = tmp_path_factory.mktemp("style_audio")
    rng = np.random.default_rng(0)
    t = np.arange(int(1.5 * 48000)) / 48000
    target = 0.5 * np.sin(2 * np.pi * 220 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    sf.write(root / "target.wav", target.astype(np.float32), 48000)
    n = int(1.5 * model.sr)
    source = np.stack([0.2 * rng.standard_normal(n), 0.1 * np.sin(np.arange(n) * 0.06)], 1)
    sf.write(root / "source.wav", source.astype(np.float32), int(model.sr))
    return root / "target.wav", root / "source.wav"


def _play(module, x: torch.Tensor, block: int, learn: str = "") -> torch.Tensor:
    """``x`` through ``forward`` block by block from silence; ``learn``: the side the file
    learns meanwhile (what it had learned of that side forgotten first), as a host does."""
    module.reset()
    if learn:
        getattr(module, f"set_reset_{learn}")(True)
        getattr(module, f"set_learn_{learn}")(True)
    with torch.inference_mode():
        y = torch.cat([module.forward(x[..., i:i + block])
                       for i in range(0, x.shape[-1] // block * block, block)], -1)
    if learn:
        getattr(module, f"set_learn_{learn}")(False)
    return y


def test_export_teaches_a_style_as_nn_tilde_would(v3, style_audio, tmp_path, monkeypatch):
    """``--style-target`` / ``--style-source``: the file ships with the statistics nn~
    would learn from those files at the sidecar's block, to the bit; every batch row
    transfers; the ONNX graph applies the same style and its check teaches the reference
    again (without that, parity fails); a style file gone since the export is a usage
    error. ``check`` of several files of one export teaches once."""
    run, model, plain_path = v3
    target, source = style_audio
    files = export_quietly(run, ["nn_tilde", "onnx"], tmp_path / "taught", ExportOptions(
        style_target=target, style_source=source))
    style = read_sidecar(files["onnx"])["style"]
    # recorded relative to the sidecar's folder: no home folder in a file users share
    for side, path in (("target", target), ("source", source)):
        recorded = style[side]["path"]
        assert not Path(recorded).is_absolute(), recorded
        assert (files["onnx"].parent / recorded).resolve() == path.resolve()
    assert style["block_size"] == 2048
    block = style["block_size"]

    taught = torch.jit.load(str(files["nn_tilde"]))
    by_host = torch.jit.load(str(plain_path))
    untaught = torch.jit.load(str(plain_path))
    for m in (taught, by_host, untaught):
        m.set_deterministic(True)
    for side, path in (("target", target), ("source", source)):
        audio = torch.from_numpy(read_audio(path, int(model.sr), 1))[None]
        _play(by_host, audio, block, learn=side)
    x = 0.3 * torch.randn(1, 1, 6 * block, generator=torch.Generator().manual_seed(5))
    y = _play(taught, x, block)
    assert torch.equal(y, _play(by_host, x, block))
    assert float((y - _play(untaught, x, block)).abs().max()) > 1e-2 * float(y.abs().max())
    rows = _play(taught, x.repeat(2, 1, 1), block)
    torch.testing.assert_close(rows[1:], rows[:1], rtol=0, atol=1e-6 * float(y.abs().max()))

    options = CheckOptions(block_sizes=[model.ratio], seconds=1.0, rtf_seconds=0.1)
    taught_by_check = []
    teach = style_teaching.teach_style
    monkeypatch.setattr(style_teaching, "teach_style",
                        lambda *a, **k: taught_by_check.append(1) or teach(*a, **k))
    for _ in range(2):  # `check exports/*`: one export's files are taught once
        report = check_artifact(files["onnx"], options=options)
        assert report.passed, [r.message for r in report.failures()]
    assert len(taught_by_check) <= 1
    # the report says which audio: in --json, and in the HTML facts
    assert report.summary["style"] == {side: shown_path(path, style[side]["path"])
                                       for side, path in (("target", target),
                                                          ("source", source))}
    assert not any(Path(p).is_absolute() for p in report.summary["style"].values())
    page = write_html_report([report], tmp_path / "report.html").read_text()
    assert f"<dt>style source</dt><dd>{report.summary['style']['source']}</dd>" in page
    assert reports_to_json([report])["reports"][0]["summary"]["style"] == report.summary["style"]
    forgotten = tmp_path / "forgotten"
    forgotten.mkdir()
    shutil.copy(files["onnx"], forgotten)
    sidecar = read_sidecar(files["onnx"])
    del sidecar["style"]
    (forgotten / (files["onnx"].name + ".json")).write_text(json.dumps(sidecar))
    report = check_artifact(forgotten / files["onnx"].name, options=options)
    assert "parity.forward" in [r.name for r in report.failures()]

    moved = target.with_name("moved.wav")
    target.rename(moved)
    try:
        with pytest.raises(CheckUsageError, match="is gone: put it back, or export again"):
            check_artifact(files["onnx"], options=options)
    finally:
        moved.rename(target)


def test_style_options_refused_or_warned(v3, style_audio, tmp_path):
    """A model without AdaIN, a file shorter than one block, a silent file, a file that
    is not audio: exit 2, nothing written. One side only: a warning for hosts that cannot learn the
    other (ONNX), none for nn~, which can."""
    run, _, _ = v3
    target, source = style_audio
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(1000, np.float32), 44100)
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    silent = tmp_path / "silent.wav"   # AdaIN would learn the statistics of silence
    sf.write(silent, np.zeros(44100, np.float32), 44100)
    plain = make_run(tmp_path, ("v2_small",), name="v2_small")
    for args, expect in (
            ([plain, "--style-target", target], "this model has no AdaIN layers"),
            ([run, "--style-source", short], "shorter than one block"),
            ([run, "--style-target", silent], "silent.wav: silent (peak digital silence)"),
            ([run, "--style-source", silent], "a style is learnt from the sound itself"),
            ([run, "--style-target", text], "notes.wav: unreadable or not audio")):
        result = CliRunner().invoke(deploy_cli, ["export", *map(str, args), "-t", "onnx",
                                                 "-o", str(tmp_path / "out")])
        assert result.exit_code == 2 and expect in result.output, result.output
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()

    result = CliRunner().invoke(deploy_cli, ["export", str(run), "--style-target", str(target),
                                             "-t", "onnx", "-o", str(tmp_path / "half")])
    assert result.exit_code == 0, result.output
    assert "onnx cannot learn the style source" in result.output
    options = ExportOptions(style_target=target)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _warn_untaught_side(registry()["nn_tilde"], options)
        _warn_untaught_side(registry()["vst"], options)
    assert len(caught) == 1 and "vst cannot learn the style source" in str(caught[0].message)


def test_a_folder_teaches_its_audio_files_one_after_the_other(v3, style_audio, tmp_path):
    """A folder stands for its audio files in order (subfolders too), each played from
    silence while the running averages go on, as a host playing them one after the other
    would learn them; a file shorter than one block teaches nothing, other files are not
    read. The folder's fingerprint changes when a file is added."""
    _, model, _ = v3
    target, source = style_audio
    folder = tmp_path / "styles"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(target, folder / "a.wav")
    shutil.copy(source, folder / "sub" / "b.wav")
    sf.write(folder / "c.wav", np.zeros(100, np.float32), int(model.sr))
    (folder / "notes.txt").write_text("not audio")
    taught = style_teaching.teach_style(model, style_teaching.StyleAudio(target=folder))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = build_scripted_rave(model, deterministic=True).eval()
    host.set_learn_target(True)
    for file in (folder / "a.wav", folder / "sub" / "b.wav"):
        audio = torch.from_numpy(read_audio(file, int(model.sr), 1))[None]
        host.reset()
        with torch.inference_mode():
            for i in range(0, audio.shape[-1] - 2048 + 1, 2048):
                host.forward(audio[..., i:i + 2048])
    pairs = list(zip(style_layers(host), adain_layers(taught)))
    assert pairs and all(int(adain.num_update_y) > 0 for _, (_, adain) in pairs)
    for (_, layer), (_, adain) in pairs:
        assert torch.equal(adain.num_update_y, layer.num_update_y)
        assert torch.equal(adain.mean_y, layer.mean_y[:1].expand_as(adain.mean_y))
        assert torch.equal(adain.std_y, layer.std_y[:1].expand_as(adain.std_y))

    before = style_teaching.fingerprint(folder)
    shutil.copy(target, folder / "sub" / "d.wav")
    assert style_teaching.fingerprint(folder) != before
