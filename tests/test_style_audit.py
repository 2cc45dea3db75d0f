"""A user audit of ``export --style-*`` and the check of taught files: the style audio is
refused before any artefact is checked, the sidecar records the block the style was
taught at, and bad style paths name their option."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from rave_deploy.check import checking
from rave_deploy.cli import main as deploy_cli
from rave_deploy.sidecar import read_sidecar
from rave_deploy.targets import ExportOptions
from tests.runs import export_quietly, make_run


@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    """A small v3 run, a few seconds of style audio, an untaught ONNX export and one
    taught a style (both in their own folders)."""
    root = tmp_path_factory.mktemp("style_audit")
    run = make_run(root, ("v3",), name="v3", unit_gains=True)
    t = np.arange(int(1.5 * 44100)) / 44100
    sf.write(root / "a.wav", (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 44100)
    rng = np.random.default_rng(0)
    sf.write(root / "b.wav", (0.2 * rng.standard_normal(t.size)).astype(np.float32), 44100)
    plain = export_quietly(run, ["onnx"], root / "plain")["onnx"]
    taught = export_quietly(run, ["onnx"], root / "taught", ExportOptions(
        style_target=root / "a.wav", style_source=root / "b.wav"))["onnx"]
    return run, root, plain, taught


def _invoke(args):
    return CliRunner().invoke(deploy_cli, [str(a) for a in args])


# ------------------------------------------ 1. style audio refused before any check
@pytest.mark.parametrize("how", ["gone", "changed"])
def test_style_audio_of_a_later_artefact_is_refused_before_any_check(v3, monkeypatch, how):
    """``check plain.onnx taught.onnx --json`` with the taught file's style target gone (or
    changed): exit 2 before the first artefact is checked (its results were lost after
    its check: only the error came out), the message naming the file."""
    _, root, plain, taught = v3
    checked = []
    real = checking.check_artifact
    monkeypatch.setattr(checking, "check_artifact",
                        lambda artifact, *a, **k: checked.append(artifact) or real(artifact, *a, **k))
    style = root / "a.wav"
    kept = style.read_bytes()
    if how == "gone":
        style.rename(root / "a.moved")
    else:
        sf.write(style, np.zeros(44100, np.float32), 44100)
    try:
        result = _invoke(["check", plain, taught, "--json"])
        text = _invoke(["check", plain, taught])
    finally:
        if how == "gone":
            (root / "a.moved").rename(style)
        else:
            style.write_bytes(kept)
    assert result.exit_code == 2, result.output
    payload = json.loads(result.stdout)
    said = "is gone: put it back" if how == "gone" else "changed since the export"
    assert payload["exit_code"] == 2 and payload["artifacts"] == [], payload
    assert "style target" in payload["error"] and "a.wav" in payload["error"], payload
    assert said in payload["error"], payload
    assert text.exit_code == 2 and "a.wav" in text.output and said in text.output, text.output
    assert checked == [], "an artefact was checked before the style audio was refused"


def test_a_damaged_style_field_is_a_usage_error(v3, tmp_path):
    """A sidecar whose ``style`` is not what export writes: exit 2, the field named."""
    _, _, _, taught = v3
    copy = tmp_path / taught.name
    copy.write_bytes(taught.read_bytes())
    sidecar = read_sidecar(taught)
    sidecar["style"] = {"target": {"sha256": "0" * 64}}   # no path
    source = sidecar["source"]
    for key in ("checkpoint", "config"):
        source[key] = str((taught.parent / source[key]).resolve())
    Path(f"{copy}.json").write_text(json.dumps(sidecar))
    result = _invoke(["check", copy])
    assert result.exit_code == 2 and "is damaged: its 'style' field" in result.output, \
        result.output


# ------------------------------------------ 2. the block the style was taught at
def test_sidecar_records_the_block_the_style_was_taught_at(v3, tmp_path):
    """``--block-size 512`` on a model of ratio 2048: teaching plays blocks of 2048 (a
    multiple of the ratio); the sidecar said 512. It records 2048, and a warning says
    the block was rounded up."""
    run, root, _, _ = v3
    ratio = read_sidecar(v3[2])["ratio"]
    assert ratio > 512, ratio
    from rave_deploy.export import export_run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = export_run(run, ["onnx"], tmp_path / "out", ExportOptions(
            block_size=512, style_target=root / "a.wav", style_source=root / "b.wav"))
    style = read_sidecar(results[0].path)["style"]
    assert style["block_size"] == ratio, style
    said = [str(w.message) for w in caught if "--block-size 512" in str(w.message)]
    assert said and f"taught in blocks of {ratio} samples" in said[0], \
        [str(w.message) for w in caught]
    # a block the ratio divides: as given, nothing said
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = export_run(run, ["onnx"], tmp_path / "even", ExportOptions(
            block_size=2 * ratio, style_target=root / "a.wav"))
    assert read_sidecar(results[0].path)["style"]["block_size"] == 2 * ratio
    assert not [w for w in caught if "--block-size" in str(w.message)]


# ------------------------------------------ 3. bad style paths name their option
@pytest.mark.parametrize("kind", ["empty folder", "/dev/null"])
def test_a_style_path_without_audio_names_its_option(v3, tmp_path, kind):
    """An empty folder, or ``/dev/null`` (neither a file nor a folder), given to
    ``--style-target`` beside a good ``--style-source``: exit 2, the message starts with
    the option and its path; /dev/null is said to be neither, not 'folder not searched'."""
    run, root, _, _ = v3
    if kind == "/dev/null":
        if not Path("/dev/null").exists():
            print("skipped: no /dev/null on this system (the empty-folder case still runs)")
            pytest.skip(reason="no /dev/null on this system (the empty-folder case still runs)")
        path = Path("/dev/null")
        expect = "--style-target /dev/null: not a file or folder (it is a character device)"
    else:
        path = tmp_path / "empty"
        path.mkdir()
        expect = f"--style-target {path}: no audio files ("
    result = _invoke(["export", run, "-t", "onnx", "-o", tmp_path / "out",
                      "--style-target", path, "--style-source", root / "b.wav"])
    assert result.exit_code == 2 and expect in result.output, result.output
    assert "folder not searched" not in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
