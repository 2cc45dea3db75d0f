"""Loading runs: acids-rave layout, bad and untrusted inputs give clear errors."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from rave_core import RunError, load_run, open_run

from .conftest import reference_dir
from .runs import make_run


def test_loads_run_dir_and_checkpoint(tmp_path):
    run = make_run(tmp_path, ("brave",))
    model = load_run(run)
    assert not model.training and model.ratio == 128
    same = load_run(run / "version_0" / "checkpoints" / "best.ckpt")
    for (k, a), (_, b) in zip(model.state_dict().items(), same.state_dict().items()):
        assert torch.equal(a, b), k
    info = open_run(run)
    assert info.step == 10 and len(info.checkpoint_sha256) == 64


def test_loads_acids_rave_operative_config(tmp_path):
    """A config.gin in acids-rave's operative format (aliases, dynamic registration)."""
    text = (reference_dir() / "acids_rave_runs" / "brave" / "config.gin").read_text()
    text += "\nCAPACITY = 4\nLATENT_SIZE = 8\n"
    src = make_run(tmp_path, ("brave",), name="ours")
    run = tmp_path / "acids"
    (run / "version_0" / "checkpoints").mkdir(parents=True)
    (run / "config.gin").write_text(text)
    sd = torch.load(src / "version_0/checkpoints/best.ckpt", weights_only=True)["state_dict"]
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 99, "callbacks": {},
                "pytorch-lightning_version": "1.9.0"}, run / "version_0/checkpoints/best.ckpt")
    model = load_run(run, streaming=True)
    assert model.latency_samples == 112


def test_missing_path(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        load_run(tmp_path / "nope")


def test_directory_without_checkpoint(tmp_path):
    (tmp_path / "config.gin").write_text("")
    with pytest.raises(RunError, match="no checkpoint"):
        load_run(tmp_path)


def test_checkpoint_without_config(tmp_path):
    run = make_run(tmp_path)
    (run / "config.gin").unlink()
    with pytest.raises(RunError, match="no config.gin"):
        load_run(run)


def test_truncated_checkpoint(tmp_path):
    run = make_run(tmp_path)
    ckpt = run / "version_0/checkpoints/best.ckpt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError, match="truncated or corrupted"):
        load_run(run)


def test_weights_that_do_not_fit_the_config_name_the_key(tmp_path):
    run = make_run(tmp_path, ("brave",))
    (run / "config.gin").write_text((run / "config.gin").read_text() + "\nCAPACITY = 8\n")
    with pytest.raises(RunError, match=r"'(en|de)coder\..*' has shape \(\d+.*\) in the checkpoint but"):
        load_run(run)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_is_refused_without_running_code(tmp_path):
    run = make_run(tmp_path)
    marker = tmp_path / "pwned"
    ckpt = run / "version_0/checkpoints/best.ckpt"
    sd = torch.load(ckpt, weights_only=True)
    sd["payload"] = _Exploit(marker)
    torch.save(sd, ckpt, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(RunError, match="refusing to load"):
        load_run(run)
    assert not marker.exists()
