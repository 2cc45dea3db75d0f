"""The Minifusion target: BRAVE's weights as HDF5 datasets (host contracts 20-21).

The file must hold exactly the state dict the plugin expects (acids-rave's keys after
weight-norm removal, without training modules nor caches, float32), refuse any other
architecture, be byte-reproducible, and stream, when read back by the independent NumPy
implementation, exactly as our eager model through the posterior mean.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from rave_core.config import build_model
from rave_core.nn.weight_norm import copy_model, remove_weight_norm
from rave_core.run import open_run
from rave_deploy.check import check_artifact
from rave_deploy.check.runner import Runner
from rave_deploy.export import export_run
from rave_deploy.minifusion_numpy import MinifusionModel, MinifusionStream
from rave_deploy.targets import CheckOptions, ExportOptions, TargetUnsupported, get_target

from .conftest import reference_dir, small_model
from .runs import copy_sidecar, make_run

PREFIXES = ("discriminator", "audio", "multiband")
SUFFIXES = ("pad", "cache")
PARITY = 1e-4  # of the eager peak, float32 NumPy vs float32 torch


def _kept(key: str) -> bool:
    return not key.startswith(PREFIXES) and not key.endswith(SUFFIXES)


def _expected(model) -> dict:
    """Key -> shape of the model's state dict after weight-norm removal, filtered."""
    sd = remove_weight_norm(copy_model(model)).state_dict()
    return {k: tuple(v.shape) for k, v in sd.items() if _kept(k)}


def _h5_shapes(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: tuple(f[k].shape) for k in f.keys()}


def _brave_run(root: Path, configs=("brave",), name="run", seed=0) -> Path:
    """A small random run whose BatchNorms have non-trivial running statistics (so that
    folding them is exercised)."""
    run = make_run(root, configs, name=name, seed=seed)
    ckpt = run / "version_0" / "checkpoints" / "best.ckpt"
    data = torch.load(ckpt, weights_only=True)
    g = torch.Generator().manual_seed(seed + 1)
    for k, v in data["state_dict"].items():
        if k.endswith("running_mean"):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
        elif k.endswith("running_var"):
            v.copy_(0.5 + torch.rand(v.shape, generator=g))
    torch.save(data, ckpt)
    return run


@pytest.fixture(scope="module", params=[("brave",), ("c128_r10",)], ids=lambda c: c[0])
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param[0])
    run = _brave_run(root, request.param)
    [result] = export_run(run, ["minifusion"], root / "out", ExportOptions())
    return request.param[0], run, result.path, open_run(run).model


def test_datasets_are_the_state_dict_after_weight_norm_removal(exported):
    _, run, path, model = exported
    assert path.suffix == ".h5"
    assert _h5_shapes(path) == _expected(model)
    with h5py.File(path, "r") as f:
        assert {str(f[k].dtype) for k in f.keys()} == {"float32"}
        assert int(f.attrs["sample_rate"]) == model.sr
        assert int(f.attrs["latency_samples"]) == model.streaming_delays().forward == 112
        # integer buffers: float32 (checked above), scalars stay scalars
        assert f["encoder.encoder.net.1.num_batches_tracked"].shape == ()
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["target"] == "minifusion"
    assert sidecar["sample_rate"] == model.sr
    assert sidecar["latency_samples"] == 112
    assert sidecar["latent_size"] == model.latent_size   # the full posterior mean


def test_numpy_streaming_equals_eager_model_through_posterior_mean(exported):
    config, _, path, model = exported
    plugin = MinifusionModel(path)
    skip, delay = plugin.receptive_field(), model.streaming_delays().forward
    assert plugin.latency_samples == delay
    n = (skip + delay) // 2048 * 2048 + 8 * 2048
    x = torch.randn(1, 1, n, generator=torch.Generator().manual_seed(0)) * 0.5
    m = copy_model(model).set_noise(False)
    with torch.no_grad():
        offline = m.decode(m.latent_mean_of(m.encode(x))).numpy()
    peak = np.abs(offline[..., skip:]).max()
    for block in ((128, 2048) if config == "brave" else (2048,)):
        stream = MinifusionStream(plugin)
        y = np.concatenate([stream(x[..., i:i + block].numpy()) for i in range(0, n, block)], -1)
        assert y.shape == (1, 1, n) and y.dtype == np.float32
        err = np.abs(y[..., delay + skip:] - offline[..., skip:n - delay]).max() / peak
        assert err <= PARITY, f"block {block}: {err:.2e} of peak"
        # one sample off is far off: the latency is exact
        off = np.abs(y[..., delay + 1 + skip:] - offline[..., skip:n - delay - 1]).max() / peak
        assert off > 100 * PARITY
    # The PQMF's odd-band flip must follow the decoder's delay (7 band samples, odd):
    # flipped at the other phase, as acids-rave's streaming does, the output is wrong.
    plugin.band_delay += 1
    stream = MinifusionStream(plugin)
    y = np.concatenate([stream(x[..., i:i + 2048].numpy()) for i in range(0, n, 2048)], -1)
    assert np.abs(y[..., delay + skip:] - offline[..., skip:n - delay]).max() / peak > 0.01


@pytest.mark.parametrize("exported", [("brave",)], indirect=True, ids=["brave"])
def test_check_passes_and_runs_the_generic_harness(exported):
    _, run, path, _ = exported
    report = check_artifact(path, options=CheckOptions(block_sizes=[128, 2048], seconds=2.0,
                                                       rtf_seconds=0.2))
    failed = [(r.name, r.message) for r in report.failures()]
    assert report.passed, failed
    names = {r.name for r in report.results}
    assert {"contract.datasets", "contract.float32", "contract.forbidden_keys",
            "contract.values", "contract.architecture", "contract.sample_rate",
            "parity.forward", "causality.forward", "blocks.forward", "latency.forward",
            "precision.forward_float32"} <= names
    assert any(name.startswith("rtf.forward") for name in names)   # NumPy speed, report only
    assert report.summary["latency_samples"] == 112
    assert "contract.sidecar" in names   # latency, rate and ratio as the sidecar states
    from rave_deploy.targets.minifusion import MinifusionRunner
    assert issubclass(MinifusionRunner, Runner)


@pytest.mark.parametrize("exported", [("brave",)], indirect=True, ids=["brave"])
def test_a_sidecar_that_misstates_the_latency_fails_the_check(exported, tmp_path):
    """Integrators compensate latency by the sidecar's latency_samples: an edited one
    (or another export's) fails contract.sidecar, naming what the check found."""
    _, run, path, _ = exported
    copy = Path(shutil.copy(path, tmp_path / path.name))
    copy_sidecar(path, copy, latency_samples=0, sample_rate=48000)
    report = check_artifact(copy, options=CheckOptions(block_sizes=[2048], seconds=1.0,
                                                       rtf_seconds=0.1))
    assert [r.name for r in report.failures()] == ["contract.sidecar"]
    [result] = report.failures()
    assert "latency_samples 0 (the check found 112)" in result.message
    assert "sample_rate 48000 (the check found 44100)" in result.message


def test_full_size_brave_matches_acids_rave_state_dict(tmp_path):
    """Full-size BRAVE (random weights): names and shapes are those of acids-rave's
    state dict after weight-norm removal, minus training modules and caches."""
    ref = json.loads((reference_dir() / "state_dicts" / "brave.json").read_text())
    want = {k: tuple(v["shape"]) for k, v in ref["state_dict_after_weight_norm_removal"].items()
            if _kept(k)}
    model = build_model(["brave"], build_discriminator=False)
    assert any(k.startswith("audio_distance") for k in model.state_dict())  # filtered out
    path = tmp_path / "brave.h5"
    get_target("minifusion").export(model, ExportOptions(), path)
    assert _h5_shapes(path) == want
    assert list(_h5_shapes(path)) == sorted(want)  # HDF5 lists names sorted, as BRAVE's file
    plugin = MinifusionModel(path)
    assert (plugin.sample_rate, plugin.ratio, plugin.latent_size, plugin.latency_samples) == (
        44100, 128, 128, 112)
    with h5py.File(path, "r") as f:
        assert f.attrs["residual_dilations"].tolist() == [[3, 1], [9, 1], [27, 1], [36, 1]]
        assert f.attrs["encoder_ratios"].tolist() == [2, 2, 2, 1]
    size = path.stat().st_size
    assert 16_000_000 < size < 17_500_000, size   # 4.2 M float32 weights


@pytest.mark.parametrize("configs,extra,expected", [
    (("v2",), (), ["EncoderV2", "GeneratorV2", "not causal"]),
    (("v2", "causal"), (), ["EncoderV2", "GeneratorV2"]),
    (("v1",), (), ["noise branch", "not causal"]),
    (("brave",), ("rave.blocks.Generator.use_noise = True",), ["noise branch"]),
    (("brave",), ("rave.blocks.Encoder.sample_norm = True",), ["SampleNorm"]),
    (("brave",), ("cached_conv.convs.get_padding.mode = 'centered'",
                  "variational/cached_conv.convs.get_padding.mode = 'centered'"), ["not causal"]),
], ids=["v2", "v2_causal", "v1", "brave_noise", "brave_samplenorm", "brave_centered"])
def test_other_architectures_are_refused_naming_the_property(configs, extra, expected):
    target = get_target("minifusion")
    reason = target.unsupported_reason(small_model(configs, extra), ExportOptions())
    assert reason is not None
    for word in expected:
        assert word in reason, reason
    # and what to do about it: another target, or a BRAVE training
    assert reason.endswith("instead, or train one for Minifusion with "
                           "`rave-core train --config brave`"), reason


def test_brave_is_accepted_only_at_its_sample_rate():
    target, model = get_target("minifusion"), small_model(("brave",))
    assert target.unsupported_reason(model, ExportOptions()) is None
    reason = target.unsupported_reason(model, ExportOptions(sr=48000))
    assert "set the host to 44100 Hz" in reason
    assert "--config brave" not in reason  # the architecture is right: no retraining


def test_export_of_v2_run_raises_and_writes_nothing(tmp_path):
    run = make_run(tmp_path, ("v2",))
    out = tmp_path / "out"
    with pytest.raises(TargetUnsupported, match="EncoderV2"):
        export_run(run, ["minifusion"], out, ExportOptions())
    assert not list(out.glob("*.h5"))


@pytest.mark.parametrize("damage,key,check", [
    ("missing", "decoder.net.0.weight", "contract.datasets"),
    ("misshaped", "encoder.encoder.net.0.weight", "contract.datasets"),
    ("altered", "decoder.synth.branches.1.weight", "contract.values"),
])
def test_broken_file_fails_check_naming_the_dataset(exported, tmp_path, damage, key, check):
    _, run, path, _ = exported
    broken = tmp_path / "broken.h5"   # no sidecar: identified by its suffix
    shutil.copy(path, broken)
    with h5py.File(broken, "a") as f:
        value = f[key][()]
        del f[key]
        if damage == "misshaped":
            f.create_dataset(key, data=np.zeros(value.shape[:2] + (value.shape[2] + 1,), np.float32))
        elif damage == "altered":
            f.create_dataset(key, data=value * np.float32(1.01))
    report = check_artifact(broken, run=str(run), options=CheckOptions(block_sizes=[128]))
    assert not report.passed
    failures = {r.name: r.message for r in report.failures()}
    assert key in failures[check], failures
    assert "streaming.forward" in failures   # not run on a broken file


def test_reexport_is_byte_identical(tmp_path):
    run = _brave_run(tmp_path)
    [a] = export_run(run, ["minifusion"], tmp_path / "a", ExportOptions())
    time.sleep(1.1)   # a timestamp in the file would differ
    [b] = export_run(run, ["minifusion"], tmp_path / "b", ExportOptions())
    assert a.path.read_bytes() == b.path.read_bytes()
