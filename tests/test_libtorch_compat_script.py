"""scripts/check_libtorch_compat.py's own inputs: what is not a TorchScript file, or a
--json it cannot write, is said before any file is loaded (exit 2)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compat():
    spec = importlib.util.spec_from_file_location(
        "check_libtorch_compat", ROOT / "scripts" / "check_libtorch_compat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _refused(compat, args, capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        compat.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert exited.value.code == 2, err
    assert "torch " not in out  # refused before the table (nothing loaded)
    return err.strip().splitlines()[-1]


def test_paths_that_are_not_torchscript_files_are_refused_before_loading(compat, tmp_path,
                                                                         capsys):
    """A missing path or an ONNX graph was reported as `FAIL torch.jit.load failed` and
    "SOME FILES FAIL in this torch" (exit 1), blaming the torch version."""
    good = tmp_path / "m.ts"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(good))
    graph = tmp_path / "m.onnx"
    graph.write_bytes(b"\x08\x08\x12\x07pytorch" + bytes(32))
    err = _refused(compat, [good, tmp_path / "gone.ts", graph], capsys)
    assert f"{tmp_path / 'gone.ts'}: no such file" in err
    assert f"{graph}: not a TorchScript file (a zip archive)" in err
    assert str(good) + ":" not in err
    assert "SOME FILES FAIL" not in err


def test_a_json_path_it_cannot_write_is_refused_before_loading(compat, tmp_path, capsys):
    """`--json /nonexistent/x.json` gave a traceback after every file had been checked."""
    good = tmp_path / "m.ts"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(good))
    err = _refused(compat, [good, "--json", tmp_path / "missing" / "r.json"], capsys)
    assert f"folder {tmp_path / 'missing'} does not exist" in err
    err = _refused(compat, [good, "--json", tmp_path], capsys)
    assert "is a folder: give a file name" in err
