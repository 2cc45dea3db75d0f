"""Folder names that are not UTF-8 (a folder named in Latin-1 on Linux, which Python holds
as ``'caf\\udce9'``) in `rave-core train`: training in such a folder works, and each error
naming one is a clean line with the exit code a UTF-8 name gets (docs/bad-input.md).

Run as the user runs it, in a process of its own: stderr escapes what it cannot write,
but stdout, under a UTF-8 locale, raises on it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable

import pytest

from .test_bad_input_training import train_args  # (db: the conftest dataset fixture)

LATIN = os.fsdecode(b"caf\xe9")   # "café" in Latin-1: 'caf\udce9'

#: stdout as under a UTF-8 desktop locale (strict), and the C locale's
ENVIRONMENTS: Dict[str, Dict[str, str]] = {"utf-8": {"PYTHONIOENCODING": "utf-8"},
                                           "C": {"LC_ALL": "C", "LANG": "C"}}

pytestmark = pytest.mark.usefixtures("one_thread")


def rave_core(args: Iterable, environment: Dict[str, str]) -> subprocess.CompletedProcess:
    """``python -m rave_core.cli ARGS`` with ``environment``; names passed as their bytes."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONIOENCODING", "LC_ALL", "LANG", "PYTHONUTF8")}
    env.update(environment, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "rave_core.cli",
                           *(os.fsencode(str(a)) for a in args)],
                          capture_output=True, env=env, timeout=600)


def _missing_dataset(db: Path, folder: Path):
    return train_args(folder / "db", folder / "runs", "r", "--config", "brave"), \
        "no such dataset folder"


def _damaged_dataset(db: Path, folder: Path):
    shutil.copytree(db, folder / "db")
    (folder / "db" / "index.json").write_text("{\n")
    return train_args(folder / "db", folder / "runs", "r", "--config", "brave"), \
        "is damaged: index.json is unreadable"


def _config_not_utf8(db: Path, folder: Path):
    run = folder / "runs" / "r"
    (run / "version_0" / "checkpoints").mkdir(parents=True)
    (run / "version_0" / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "config.gin").write_bytes(b"CAPACITY = \xff\n")
    return train_args(db, folder / "runs", "r"), "is not UTF-8 text"


def _damaged_checkpoint(db: Path, folder: Path):
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"PK\x03\x04" + bytes(200))
    return train_args(db, folder / "runs", "r", "--config", "brave", "--ckpt",
                      folder / "last.ckpt"), "cannot read checkpoint"


def _run_being_trained(db: Path, folder: Path):
    from rave_core.training.run_lock import RunLock
    lock = RunLock(folder / "runs" / "r")
    lock.acquire()   # as a training of this run in another process; released with `lock`
    return train_args(db, folder / "runs", "r", "--config", "brave"), \
        "is being trained by another process", lock


@pytest.mark.parametrize("case", [_missing_dataset, _damaged_dataset, _config_not_utf8,
                                  _damaged_checkpoint, _run_being_trained],
                         ids=lambda case: case.__name__.strip("_"))
def test_an_error_naming_a_folder_that_is_not_utf8_is_one_clean_line(db, tmp_path, case):
    folder = tmp_path / LATIN
    args, expected, *lock = case(db, folder)
    for name, environment in ENVIRONMENTS.items():
        done = rave_core(args, environment)
        said = done.stderr.decode("utf-8")   # strict: text any terminal or log file takes
        assert done.returncode == 2, (name, done.returncode, said)
        assert "Traceback" not in said and "unexpected" not in said, (name, said)
        last = said.strip().splitlines()[-1]
        assert last.startswith("Error: ") and expected in last, (name, said)
        assert "caf\\xe9" in last, (name, said)   # the name, escaped as rave-deploy shows it
    for held in lock:
        held.release()


@pytest.mark.parametrize("where", ["out_path", "name"])
def test_a_run_in_a_folder_that_is_not_utf8_trains_without_tensorboard_logs(db, tmp_path,
                                                                           where):
    """TensorBoard's file layer takes UTF-8 names only: training stopped before its first
    step with "unexpected UnicodeEncodeError"."""
    out, name = (tmp_path / LATIN, "r") if where == "out_path" else (tmp_path, LATIN)
    done = rave_core(train_args(db, out, name, "--config", "brave"), {"LC_ALL": "C.UTF-8"})
    said = done.stderr.decode("utf-8")
    assert done.returncode == 0, said
    assert f"TensorBoard cannot write in {out}/{name}/version_0".replace(LATIN, "caf\\xe9") \
        in said and "this run keeps no TensorBoard logs" in said, said
    assert (out / name / "version_0" / "checkpoints" / "last.ckpt").is_file()
