"""A discrete model's decode takes NaN as code 0 (nn~ raised on every block, ONNX Runtime
refused the Gather), and a silent eager model fails the offline ONNX graph's parity as it
fails the streaming targets' (any silent graph would match it)."""
from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from rave_deploy.check import check_artifact
from rave_deploy.targets import CheckOptions

from .runs import export_quietly, make_run
from .test_discrete_export import discrete_run

FAST = dict(seconds=2.0, rtf_seconds=0.2)


@pytest.fixture(scope="module")
def discrete_exports(tmp_path_factory):
    """nn~'s file and the anira folder (its ``decode.onnx``) of a discrete run whose
    codebooks are set (codes differ, so that code 0 is not every code)."""
    root = tmp_path_factory.mktemp("nan")
    run, _ = discrete_run(root)
    return export_quietly(run, ["nn_tilde", "anira"], root / "out")


def _latents(channels: int, frames: int):
    """Codes 3 everywhere, with NaN at one place; and the same with code 0 there."""
    codes = torch.full((1, channels, frames), 3.0)
    nan = codes.clone()
    nan[0, 2, frames - 1] = float("nan")
    zero = codes.clone()
    zero[0, 2, frames - 1] = 0.0
    return codes, nan, zero


def test_torchscript_decode_takes_nan_as_code_0(discrete_exports):
    ts = torch.jit.load(str(discrete_exports["nn_tilde"]))
    ts.set_deterministic(True)
    codes, nan, zero = _latents(int(ts.full_latent_size), 8)
    outputs = []
    with torch.inference_mode():
        for latent in (codes, nan, zero):
            ts.reset()
            outputs.append(ts.decode(latent))
    assert not torch.equal(outputs[0], outputs[2])  # code 0 is another code here
    assert not outputs[1].isnan().any()
    assert torch.equal(outputs[1], outputs[2])


def test_onnx_decode_takes_nan_as_code_0(discrete_exports):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(discrete_exports["anira"] / "decode.onnx"), options,
                                providers=["CPUExecutionProvider"])
    shapes = {i.name: [int(v) for v in i.shape] for i in sess.get_inputs()}
    latent = shapes["latent_in"]
    state = np.zeros(shapes["state_in"], np.float32)
    outputs = [sess.run(None, {"latent_in": x.numpy(), "state_in": state})[0]
               for x in _latents(latent[1], latent[2])]
    assert not np.array_equal(outputs[0], outputs[2])
    assert not np.isnan(outputs[1]).any()
    np.testing.assert_array_equal(outputs[1], outputs[2])


def test_silent_reference_fails_onnx_parity(tmp_path):
    """A discrete checkpoint saved before training started (codebooks never set): every
    latent is code 0 and the model is silent. The offline graph then matched it exactly
    ("max error 0.00e+00 of peak") and passed; it fails as the streaming targets do,
    naming the cause."""
    run = make_run(tmp_path, ("discrete",), name="disc", unit_gains=True)
    path = export_quietly(run, ["onnx"], tmp_path / "out")["onnx"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = check_artifact(path, options=CheckOptions(**FAST))
    parity = {r.name: r for r in report.results}["parity.forward"]
    assert not parity.passed and not report.passed
    assert parity.message.startswith("the eager forward output is silent: nothing to compare")
    assert "codebooks were never initialised" in parity.message
    assert "saved before training started" in parity.message


def test_silent_cause_names_both_causes_when_the_model_is_unknown():
    from rave_deploy.check.harness import silent_cause

    general = silent_cause(None)
    assert "all-zero weights" in general and "codebooks were never initialised" in general
