"""Adding a target is one module and one folder: nothing else lists the targets by hand.

An audit added a dummy target (a copy of the package with one more plugin module) and
found the lists that went stale: ``rave-deploy --help`` named each host by hand, export's
``--block-size`` help the TorchScript targets, check took any ``.ts`` file without a
sidecar for nn~'s and listed the suffixes it takes by hand, ``-o model.pt`` was refused
whatever target wrote ``.pt`` files, the name columns were 15 characters wide whatever
the names, and ``register`` took a second target of the same name (a copied module
replaced its original) or one whose file names cannot hold the longest ``--name``.

Here a dummy plugin is added as the audit did (a module in a folder added to the
package's path, in a fresh Python), or registered in this process for the duration of a
test (:func:`registered`)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

import rave_deploy.targets.base as base
from rave_deploy.check.artifacts import CheckUsageError, identify
from rave_deploy.export import output_names_file
from rave_deploy.file_names import MAX_NAME_BYTES, name_bytes
from rave_deploy.model import DeployError
from rave_deploy.targets import register, registry
from rave_deploy.targets._torchscript import TorchScriptTarget

from .test_cli_startup import HEAVY

ROOT = Path(__file__).resolve().parents[1]

#: A TorchScript target with a name longer than the others, as a plugin module declares it.
PLUGIN = textwrap.dedent('''
    from rave_deploy.targets._torchscript import TorchScriptTarget
    from rave_deploy.targets.base import register


    @register
    class DummyTarget(TorchScriptTarget):
        name = "dummy_long_target"
        description = "TorchScript for the dummy host"
        host = "Dummy Host~"
''')


def _run_with_plugin(args, tmp_path: Path, statements: str = ""):
    """``rave-deploy ARGS`` in a fresh Python whose ``rave_deploy.targets`` holds the
    dummy plugin too; returns (exit code, stdout, heavy libraries imported, what
    ``statements`` printed after it, the registry then imported)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / "zz_dummy.py").write_text(PLUGIN)
    report = tmp_path / "report.json"
    code = textwrap.dedent(f"""
        import contextlib, io, json, sys
        import rave_deploy.targets as targets
        targets.__path__.append({str(plugins)!r})
        from rave_deploy.cli import main
        out, code = io.StringIO(), 0
        try:
            with contextlib.redirect_stdout(out):
                main({[str(a) for a in args]!r}, prog_name="rave-deploy")
        except SystemExit as e:
            code = e.code or 0
        heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
        extra = {{}}
        {statements}
        with open({str(report)!r}, "w") as f:
            json.dump({{"code": code, "out": out.getvalue(), "heavy": heavy, "extra": extra}}, f)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return json.loads(report.read_text())


def test_the_help_names_a_new_plugins_host(tmp_path):
    """`rave-deploy --help` named each host by hand: it names the new target's host (its
    ``host``), without importing torch."""
    helped = _run_with_plugin(["--help"], tmp_path)
    assert (helped["code"], helped["heavy"]) == (0, [])
    description = " ".join(helped["out"].split())
    assert "Dummy Host~" in description, description
    for host in ("nn~", "SuperCollider", "the RAVE VST", "anira"):
        assert host in description, description


def test_the_listing_of_a_new_plugin_keeps_one_column(tmp_path):
    """`rave-deploy targets` lists the new target in a column as wide as its name: the
    descriptions start in one column (a name of 17 characters pushed its own two
    characters on); without importing torch."""
    listed = _run_with_plugin(["targets"], tmp_path, statements=(
        "extra['registry'] = {n: t.description for n, t in targets.registry().items()}"))
    assert (listed["code"], listed["heavy"]) == (0, [])
    lines = listed["out"].splitlines()
    registered = listed["extra"]["registry"]
    assert sorted(registered) == [line.split()[0] for line in lines]
    assert "dummy_long_target" in registered
    columns = {line.index(registered[line.split()[0]]) for line in lines}
    assert columns == {len("dummy_long_target") + 1} and len("dummy_long_target") > 15, lines


def test_export_help_offers_a_new_plugin_and_lists_no_torchscript_targets_by_hand(tmp_path):
    """export's --target offers the new target, and --block-size named the TorchScript
    targets by hand (nn_tilde, supercollider, vst): it names none of them unless it names
    them all; without importing torch."""
    exported = _run_with_plugin(["export", "--help"], tmp_path, statements=(
        "extra['torchscript'] = [n for n, t in targets.registry().items() "
        "if t.suffix == '.ts']"))
    assert (exported["code"], exported["heavy"]) == (0, [])
    text = " ".join(exported["out"].split())
    assert "|dummy_long_target|" in text, text
    block_size = text[text.index("--block-size"):text.index("--engine")]
    torchscript = sorted(exported["extra"]["torchscript"])
    assert "dummy_long_target" in torchscript and len(torchscript) >= 4
    named = sorted(n for n in torchscript if re.search(rf"\b{n}\b", block_size))
    assert named in ([], torchscript), block_size


# ----------------------------------------------------------------- in this process
@pytest.fixture
def registered(monkeypatch):
    """Register target classes for the duration of a test: ``registered(cls, ...)``."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    def add(*classes):
        for cls in classes:
            register(cls)
    return add


class NewTorchScript(TorchScriptTarget):
    name = "newtarget"
    description = "TorchScript for a new host"


class WritesPt(base.Target):
    name = "pt_target"
    suffix = ".pt"
    description = "a host that loads .pt files"


class WritesTflite(base.Target):
    name = "tflite_target"
    suffix = ".tflite"
    description = "a host that loads .tflite files"


def _torchscript_like(path: Path) -> Path:
    """A zip archive holding what a TorchScript file holds (``code/``, no ``data.pkl``)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("model/code/__torch__.py", "")
        z.writestr("model/constants.pkl", b"")
    return path


def test_check_takes_a_file_named_for_a_target_as_that_targets(registered, tmp_path):
    """Without a sidecar a ``.ts`` file was checked as nn~'s whatever its name: a new
    TorchScript target's ``x.newtarget.ts`` (and SuperCollider's ``x.supercollider.ts``)
    too. The name export gives it (``<name>.<target><suffix>``) says its target; the
    suffix alone says the suffix's first target, as before."""
    registered(NewTorchScript)
    for name, target in [("x.newtarget.ts", "newtarget"), ("x.supercollider.ts", "supercollider"),
                         ("x.vst.ts", "vst"), ("x.ts", "nn_tilde"), ("newtarget.ts", "nn_tilde"),
                         ("x.other.ts", "nn_tilde")]:
        assert identify(_torchscript_like(tmp_path / name)) == ({}, target), name
    for name, target in [("x.onnx_streaming.onnx", "onnx_streaming"), ("x.onnx.onnx", "onnx"),
                         ("x.onnx", "onnx")]:
        (tmp_path / name).write_bytes(b"\x08\x07")
        assert identify(tmp_path / name) == ({}, target), name


def test_check_names_a_new_targets_suffix(registered, tmp_path):
    """"expected a .ts, .onnx, .h5 or an anira folder" was written by hand: a file of a new
    target's suffix, without a sidecar, is checked as that target's, and the messages
    list its suffix (today's targets' words as before)."""
    unknown = tmp_path / "x.wav"
    unknown.write_bytes(b"RIFF")
    with pytest.raises(CheckUsageError, match=re.escape(
            "expected a .ts, .onnx, .h5 or an anira folder")):
        identify(unknown)
    registered(WritesTflite)
    graph = tmp_path / "x.tflite"
    graph.write_bytes(b"TFL3")
    assert identify(graph) == ({}, "tflite_target")
    with pytest.raises(CheckUsageError, match=re.escape(
            "expected a .ts, .onnx, .h5, .tflite or an anira folder")):
        identify(unknown)
    from rave_deploy.check.artifacts import _artifacts_in
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("")
    with pytest.raises(CheckUsageError, match=re.escape(
            "expected .ts, .onnx, .h5 or .tflite files, or anira folders")):
        _artifacts_in(notes)
    folder = tmp_path / "y.tflite"
    folder.mkdir()
    with pytest.raises(CheckUsageError, match=re.escape(
            f"{folder} is an empty folder, not a .tflite file")):
        _artifacts_in(folder)


def test_an_output_named_with_a_targets_suffix_is_that_file(registered, tmp_path):
    """``-o model.pt`` was refused as "no target writes a .pt file" (a suffix listed as
    no target's) even with a target that writes .pt files; a suffix no target writes is
    still refused."""
    registered(WritesPt)
    assert output_names_file(tmp_path / "model.pt", [registry()["pt_target"]]) is True
    with pytest.raises(DeployError, match="no target writes a .wav file"):
        output_names_file(tmp_path / "take.wav", [registry()["pt_target"]])


def test_register_refuses_a_name_another_target_has(registered):
    """A copied module that kept its original's name replaced that target in silence."""
    class Copied(base.Target):
        name = "onnx"
        description = "a copy"

    before = registry()["onnx"]
    with pytest.raises(ValueError, match=r"target 'onnx' is registered twice: by "
                       r"rave_deploy\.targets\.onnx\.OnnxTarget and by .*Copied; give each "
                       "target its own name"):
        registered(Copied)
    assert registry()["onnx"] is before


def test_register_refuses_a_target_whose_file_names_cannot_hold_the_longest_name(registered):
    """A name of MAX_NAME_BYTES bytes, the target's ``.<target><suffix>.json`` and the
    temporary's additions must fit in 255 bytes: a target that does not is refused (the
    export of a long --name failed with "File name too long" after minutes)."""
    class Long(base.Target):
        name = "onnx_streaming_graph"
        suffix = ".onnx"
        description = "too long a name"

    with pytest.raises(ValueError, match=r"target 'onnx_streaming_graph': its sidecar's name "
                       r"ends in '\.onnx_streaming_graph\.onnx\.json', 31 bytes, more than "
                       "the 26 .* give the target a shorter name"):
        registered(Long)
    assert "onnx_streaming_graph" not in registry()


def test_the_longest_name_leaves_room_for_every_targets_suffix():
    """MAX_NAME_BYTES (200) is what the registry leaves: 255 bytes, less the longest
    ``.<target><suffix>.json`` (``.onnx_streaming.onnx.json``, 25 of the 26 allowed) and
    a temporary's ``.`` ``.<pid>.<8 random>.partial`` (29, any 32-bit pid)."""
    from rave_deploy.file_names import (FILE_NAME_BYTES, MAX_TARGET_SUFFIX_BYTES,
                                        TEMPORARY_EXTRA_BYTES)
    from rave_deploy.io import PARTIAL_SUFFIX, _partial_prefix
    longest = max(name_bytes(f".{t.name}{t.suffix}.json") for t in registry().values())
    assert longest <= MAX_TARGET_SUFFIX_BYTES
    assert MAX_NAME_BYTES + longest + TEMPORARY_EXTRA_BYTES <= FILE_NAME_BYTES
    assert (MAX_NAME_BYTES, MAX_TARGET_SUFFIX_BYTES, longest) == (200, 26, 25)
    pid = str(os.getpid())
    assert _partial_prefix(Path("n")) == f".n.{pid}."   # then 8 random characters
    assert TEMPORARY_EXTRA_BYTES == (len(f"..{pid}.") - len(pid) + len(str(2 ** 32 - 1))
                                     + len("abcdefgh") + len(PARTIAL_SUFFIX))


def test_the_name_column_is_as_wide_as_the_longest_name(registered):
    """`rave-deploy targets`, export's lines and the quickstart's pad names to 15
    characters, or to the longest name."""
    from rave_deploy.targets import name_width
    assert name_width() == 15 == max(15, *map(len, registry()))

    class Long(base.Target):
        name = "a_name_of_20_chars__"
        description = "d"
    registered(Long)
    assert name_width() == 20 == len("a_name_of_20_chars__")
