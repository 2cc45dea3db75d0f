"""The ONNX targets (onnx, onnx_streaming) and anira: export, exactness, contract checks.

Reduced-capacity BRAVE and v2 runs are exported through ``export_run`` from fake run
directories; the graphs are run in ONNX Runtime as hosts run them and compared with the
eager deterministic model; damaged artefacts must fail the named contract check.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from rave_core.config import build_model, parse_config

from rave_core.run import open_run
from rave_deploy import onnx_graphs as og
from rave_deploy import onnx_runtime as ort_host
from rave_deploy.check import check_artifact
from rave_deploy.check.plan import impulse_span
from rave_deploy.check.runner import EagerReference
from rave_deploy.export import export_run
from rave_deploy.model import DeployModel
from rave_deploy.targets import CheckOptions, ExportOptions, TargetUnsupported, get_target

from .conftest import NO_TRAINING_MODULES, SMALL, randomize
from .runs import copy_sidecar

#: Timing is the machine's, not the artefact's: checked for presence, not for pass.
FAST = dict(seconds=2.0, rtf_seconds=0.2)


def make_run(root: Path, configs=("brave",), name: str = "run", seed: int = 0,
             extra=()) -> Path:
    """A fake run directory (``config.gin`` + ``version_0/checkpoints/best.ckpt``) of a
    small random model whose output is of a musical size: weight-norm gains of 1 (random
    gains shrink every layer, and a 1e-8 output would make float rounding dominate)."""
    overrides = SMALL + NO_TRAINING_MODULES + list(extra)
    text = parse_config(list(configs), overrides)
    model = randomize(build_model(list(configs), overrides, build_discriminator=False), seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith("weight_g"):
                p.fill_(1.0)
        n = model.latent_size
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
        model.latent_pca.copy_(q)
        model.latent_mean.copy_(torch.randn(n, generator=g) * 0.1)
        model.fidelity.copy_(torch.linspace(0.5, 1.0, n))
    run = root / name
    (run / "version_0" / "checkpoints").mkdir(parents=True)
    (run / "config.gin").write_text(text)
    torch.save({"state_dict": model.state_dict(), "global_step": 10, "epoch": 1},
               run / "version_0" / "checkpoints" / "best.ckpt")
    return run


def _export(root: Path, config: str, block: int):
    run = make_run(root, (config,), name=config)
    out = root / f"{config}_out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = export_run(run, ["onnx", "onnx_streaming"], out, ExportOptions())
        # anira at a larger block than the ratio: fewer calls per second in the checks.
        results += export_run(run, ["anira"], out, ExportOptions(block_size=block))
    return run, {r.target: r.path for r in results}


@pytest.fixture(scope="module")
def brave(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("brave"), "brave", 512)


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("v2"), "v2", 4096)


def _passed_except_timing(report):
    bad = [f"{r.name}: {r.message}" for r in report.results
           if not r.passed and not r.name.startswith("rtf.")]
    assert not bad, "\n".join(bad)
    assert report.results


# ------------------------------------------------------------------ export
@pytest.mark.parametrize("which", ["brave", "v2"])
def test_export_writes_graphs_metadata_and_sidecars(which, request):
    run, paths = request.getfixturevalue(which)
    model = open_run(run).model
    sidecar = json.loads(Path(str(paths["onnx_streaming"]) + ".json").read_text())
    assert sidecar["deterministic"] is True and "deterministic" in sidecar["deterministic_note"]
    meta = og.read_metadata(paths["onnx_streaming"])
    for key in og.REQUIRED_METADATA:
        assert str(meta[key]) == str(sidecar[key]), key
    assert meta["sample_rate"] == model.sr and meta["ratio"] == model.ratio
    assert meta["block_size"] == "dynamic"
    # inputs: audio then states; outputs: audio then the next states, same order.
    graph = onnx.load(str(paths["onnx_streaming"]), load_external_data=False).graph
    names_in = [i.name for i in graph.input]
    names_out = [o.name for o in graph.output]
    k = len(meta["states"])
    assert names_in == ["audio_in"] + [f"state_in_{i}" for i in range(k)]
    assert names_out == ["audio_out"] + [f"state_out_{i}" for i in range(k)]
    assert [s["layer"] for s in meta["states"]] == [s["layer"] for s in sidecar["onnx"]["states"]]
    # the latent path is folded into the convolutions around it: the decoder's first
    # convolution reads the kept coordinates and a ones channel
    assert meta["latent_folded"] is True and sidecar["onnx"]["latent_folded"] is True
    first = next(s for s in meta["states"] if s["layer"] == "decoder.net.0")
    assert first["shape"][1] == meta["latent_size"] + 1
    assert og.read_metadata(paths["onnx"])["latent_folded"] is True

    folder = paths["anira"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["encode.onnx", "decode.onnx", "forward.onnx", "encode.json", "decode.json",
         "forward.json", "rave-deploy.json"])
    config = json.loads((folder / "decode.json").read_text())
    inference = config["inference_config"]
    assert inference["model_data"] == [{"model_path": "decode.onnx", "inference_backend": "ONNX"}]
    latent, size = meta["latent_size"], sidecar_state_size(folder, "decode")
    block = json.loads((folder / "rave-deploy.json").read_text())["block_size"]
    assert block % model.ratio == 0
    assert inference["tensor_shape"][0]["input_shape"][:2] == [[1, latent, block // model.ratio],
                                                             [1, size]]
    assert inference["tensor_shape"][0]["output_shape"] == [[1, 1, block], [1, size]]
    assert inference["processing_spec"]["preprocess_input_size"][1:] == [0] * (
        len(inference["tensor_shape"][0]["input_shape"]) - 1)
    assert config["state_config"]["state_pairs"] == [{"output_tensor": 1, "input_tensor": 1}]
    assert config["resampler_config"]["model_sample_rate"] == model.sr
    assert inference["max_inference_time"] == pytest.approx(1000 * block / model.sr, abs=1e-3)
    layout = json.loads((folder / "rave-deploy.json").read_text())["anira"]["graphs"]["forward"]
    offsets = [s["offset"] for s in layout["state_layout"]]
    sizes = [int(np.prod(s["shape"])) for s in layout["state_layout"]]
    assert offsets == list(np.cumsum([0] + sizes[:-1])) and sum(sizes) == layout["state_size"]


def sidecar_state_size(folder: Path, method: str) -> int:
    return json.loads((folder / "rave-deploy.json").read_text())["anira"]["graphs"][method]["state_size"]


def test_export_is_byte_reproducible(brave, tmp_path):
    run, paths = brave
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = export_run(run, ["onnx_streaming"], tmp_path / "x.onnx", ExportOptions())[0].path
    assert again.read_bytes() == paths["onnx_streaming"].read_bytes()


# ------------------------------------------------------------------ exactness
@pytest.mark.parametrize("which", ["brave", "v2"])
def test_streaming_graph_equals_eager_model_delayed(which, request):
    """Blocks of varying size through ONNX Runtime, states fed back by hand: the eager
    deterministic model's output delayed by the latency, to 1e-5 of the peak once the
    first receptive field has passed."""
    run, paths = request.getfixturevalue(which)
    model = open_run(run).model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = EagerReference(model, 0.95)
    sess = ort_host.session(paths["onnx_streaming"])
    ratio, delay = reference.ratio, reference.delay_of("forward")
    _, memory = impulse_span(reference, "forward")
    settle = delay + memory
    n = (3 * settle // ratio + 8) * ratio
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal((1, 1, n))).astype(np.float32)
    states = {i.name: np.zeros(i.shape, np.float32) for i in sess.get_inputs()[1:]}
    outs, i, sizes = [], 0, [ratio, 3 * ratio, 2 * ratio, 8 * ratio]
    while i < n:
        b = min(sizes[len(outs) % len(sizes)], n - i)
        res = sess.run(None, {"audio_in": x[..., i:i + b], **states})
        states = {k.replace("state_out_", "state_in_"): v
                  for k, v in zip([o.name for o in sess.get_outputs()[1:]], res[1:])}
        outs.append(res[0])
        i += b
    y = np.concatenate(outs, -1)
    ref = reference("forward", x)
    peak = np.abs(ref).max()
    err = np.abs(y[..., settle:] - ref[..., settle - delay:n - delay]).max() / peak
    assert y.shape == x.shape
    assert err <= 1e-5, err
    # the rewrites measured here are in the graph: activations read 2-D convolutions
    graph = onnx.load(str(paths["onnx_streaming"])).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    assert any(n.op_type == "LeakyRelu" and made_by.get(n.input[0]) == "Conv"
               for n in graph.node)


def _plain_stream(sess, blocks):
    """Blocks through ``sess.run`` from zero states, each call's states fed back by name."""
    states = {i.name: np.zeros(i.shape, np.float32) for i in sess.get_inputs()[1:]}
    outs = []
    for block in blocks:
        res = sess.run(None, {sess.get_inputs()[0].name: block, **states})
        states = {o.name.replace("state_out_", "state_in_", 1): v
                  for o, v in zip(sess.get_outputs()[1:], res[1:])}
        outs.append(res[0])
    return outs


def test_bound_states_equal_plain_runs(brave):
    """States bound in place (two buffer sets that swap each call, as hosts keep them, and
    as the check harness and the benchmark time the graph) give the outputs of plain
    ``sess.run`` calls over blocks of changing size, start again from zeros on reset, and
    keep batch rows independent in the harness's runner."""
    _, paths = brave
    sess = ort_host.session(paths["onnx_streaming"])
    rng = np.random.default_rng(0)
    sizes = (128, 128, 256, 128, 512, 128)
    blocks = [(rng.standard_normal((1, 1, n)) * 0.3).astype(np.float32) for n in sizes]
    plain = _plain_stream(sess, blocks)

    stream = ort_host.BoundStreamingSession(sess)
    for _ in range(2):  # the second pass after a reset: zero states again
        for block, expected in zip(blocks, plain):
            np.testing.assert_allclose(stream(block), expected, rtol=1e-5, atol=1e-6)
        stream.reset()

    other = [(rng.standard_normal((1, 1, n)) * 0.3).astype(np.float32) for n in sizes]
    plain_other = _plain_stream(sess, other)
    runner = ort_host.OrtStreamingRunner(sess, "forward", 128, 16, 1)
    runner.reset(2)
    for a, b, ya, yb in zip(blocks, other, plain, plain_other):
        y = runner.process(np.concatenate([a, b], 0))
        np.testing.assert_allclose(y, np.concatenate([ya, yb], 0), rtol=1e-5, atol=1e-6)


def test_flat_runner_binds_states_and_keeps_fill_at_zero(brave, tmp_path):
    """anira's flat-state graphs run through the harness's runner as through plain
    ``sess.run`` calls that feed ``state_out`` back by the JSON's pairs, ``fill_in`` at
    zeros: per batch row, from zeros again on reset; a pair that would feed the signal is
    refused."""
    from rave_deploy.model import DeployModel

    run, _ = brave
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        core = DeployModel(open_run(run).model, fidelity=0.6, deterministic=True)
    og.export_flat(core, tmp_path / "decode.onnx", "decode", 2 * core.ratio)
    sess = ort_host.session(tmp_path / "decode.onnx")
    fill = sess.get_inputs()[2]
    assert fill.name == "fill_in"
    rng = np.random.default_rng(1)
    rows = [[rng.standard_normal((1, core.latent_size, 2)).astype(np.float32)
             for _ in range(5)] for _ in range(2)]
    expected = []
    for blocks in rows:
        state, outs = np.zeros(sess.get_inputs()[1].shape, np.float32), []
        for z in blocks:
            y, state = sess.run(None, {"latent_in": z, "state_in": state,
                                       "fill_in": np.zeros(fill.shape, np.float32)})
            outs.append(y)
        expected.append(outs)

    runner = ort_host.OrtFlatRunner(sess, "decode", core.ratio, core.latent_size,
                                               1, {1: 1})
    for _ in range(2):  # again after a reset
        runner.reset(2)
        for k in range(5):
            y = runner.process(np.concatenate([rows[0][k], rows[1][k]], 0))
            np.testing.assert_allclose(y, np.concatenate([expected[0][k], expected[1][k]], 0),
                                       rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="join the signal"):
        ort_host.BoundStreamingSession(sess, pairs={1: 0})


# ------------------------------------------------------------------ checks pass
@pytest.mark.parametrize("target", ["onnx", "onnx_streaming", "anira"])
def test_check_passes_brave(brave, target):
    _, paths = brave
    report = check_artifact(paths[target], options=CheckOptions(block_sizes=[512, 2048], **FAST))
    _passed_except_timing(report)
    names = {r.name for r in report.results}
    assert "contract.22_metadata" in names or "contract.23_flat_state.forward" in names
    if target != "onnx":
        assert {"parity.forward", "causality.forward", "blocks.forward", "latency.forward"} <= names
        assert any(n.startswith("rtf.forward") for n in names)
    if target == "anira":
        assert {"parity.encode", "parity.decode"} <= names
    assert "contract.sidecar" in names   # the sidecar states the latency the check found


@pytest.mark.parametrize("target, takes", [
    ("onnx_streaming", "multiples of the ratio 128: the graph cannot run them"),
    ("anira", "multiples of the graphs' fixed block 512: anira cannot run them")])
def test_a_block_size_the_graph_cannot_take_fails_and_the_others_are_checked(brave, target,
                                                                            takes):
    """`check --block-size 100 --block-size 512`: 100 is a failed blocks.sizes that says
    what the artefact takes (it was dropped unnoticed, or replaced by the defaults, and
    the check passed); 512 is checked."""
    _, paths = brave
    report = check_artifact(paths[target], options=CheckOptions(block_sizes=[100, 512], **FAST))
    failed = _failed(report, "blocks.sizes")
    assert [r.message for r in failed] == [f"block sizes [100] are not {takes} (checked 512)"]
    assert not report.passed
    parity = [r for r in report.results if r.name == "parity.forward"]
    assert parity and parity[0].passed and "at block 512" in parity[0].message
    # none usable: the failure, and the artefact's own sizes checked
    report = check_artifact(paths[target], options=CheckOptions(block_sizes=[100], **FAST))
    unit = 128 if target == "onnx_streaming" else 512
    assert [r.message for r in _failed(report, "blocks.sizes")] == [
        f"block sizes [100] are not {takes} (checked {unit}, {4 * unit})"]


def test_stereo_model_graphs_carry_every_state(tmp_path):
    """A stereo model's PQMF sees one row per channel: its states have a batch of 2 in
    the graphs (they were silently dropped, restarting every call, before), and every
    ONNX target passes its checks."""
    run = make_run(tmp_path, ("v2_small",), name="stereo", extra=["rave.model.RAVE.n_channels = 2"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = export_run(run, ["onnx", "onnx_streaming"], tmp_path / "out", ExportOptions())
        results += export_run(run, ["anira"], tmp_path / "out", ExportOptions(block_size=2048))
    paths = {r.target: r.path for r in results}
    states = og.read_metadata(paths["onnx_streaming"])["states"]
    pqmf = [s for s in states if s["layer"].startswith("pqmf.")]
    assert pqmf and all(s["shape"][0] == 2 for s in pqmf)
    for target, blocks in (("onnx", [2048]), ("onnx_streaming", [2048]), ("anira", [2048])):
        report = check_artifact(paths[target], options=CheckOptions(block_sizes=blocks, **FAST))
        _passed_except_timing(report)


def test_check_accepts_graphs_written_before_the_latent_fold(brave, tmp_path):
    """A streaming graph exported without the fold (as before it existed: no
    ``latent_folded`` metadata) is checked against an unfolded twin and passes."""
    run, paths = brave
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        core = DeployModel(open_run(run).model, deterministic=True, streaming=True)
    graph = tmp_path / "old.onnx_streaming.onnx"
    og.export_streaming(core, graph, "forward")
    model = onnx.load(str(graph))
    og.write_metadata(model, {k: v for k, v in og.read_metadata(model).items()
                              if k != "latent_folded"})
    onnx.save(model, str(graph))
    copy_sidecar(paths["onnx_streaming"], graph)
    first = next(s for s in og.read_metadata(graph)["states"] if s["layer"] == "decoder.net.0")
    assert first["shape"][1] == core.decoder_latent_size  # unfolded: the full latent
    report = check_artifact(graph, run=str(run), options=CheckOptions(block_sizes=[512], **FAST))
    _passed_except_timing(report)


def test_check_passes_v2_streaming(v2):
    _, paths = v2
    report = check_artifact(paths["onnx_streaming"],
                            options=CheckOptions(block_sizes=[2048, 8192], **FAST))
    _passed_except_timing(report)
    assert "parity.forward" in {r.name for r in report.results}


def test_anira_contract_v2(v2):
    """The v2 folder passes points 23-24 (the decoder takes fill_in when the cut leaves
    latent dimensions unused; none here: the fidelity keeps all 8)."""
    run, paths = v2
    from rave_deploy.check.result import CheckReport
    from rave_deploy.targets.anira import check_folder_contract

    report = CheckReport(paths["anira"], "anira")
    assert check_folder_contract(report, paths["anira"], open_run(run).model) is not None
    assert report.passed, [r.message for r in report.failures()]


# ------------------------------------------------------------------ fill_in
def test_anira_fill_input_when_the_cut_drops_dimensions(brave, tmp_path):
    """A fidelity cut below the full latent: decode takes ``fill_in`` for the dropped
    dimensions (zeros: the deterministic decoder), at the default block (the ratio)."""
    from rave_deploy.model import DeployModel
    from rave_deploy.targets.anira import graph_json

    run, _ = brave
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        core = DeployModel(open_run(run).model, fidelity=0.6, deterministic=True)
    meta = og.export_flat(core, tmp_path / "decode.onnx", "decode", core.ratio)
    sess = ort_host.session(tmp_path / "decode.onnx")
    assert [i.name for i in sess.get_inputs()] == ["latent_in", "state_in", "fill_in"]
    latent, fill = core.latent_size, core.full_latent_size - core.latent_size
    assert fill > 0 and sess.get_inputs()[2].shape == [1, fill, 1]
    config = graph_json("decode", meta, "decode.onnx")["inference_config"]
    assert config["tensor_shape"][0]["input_shape"] == [[1, latent, 1], [1, meta["state_size"]],
                                                       [1, fill, 1]]
    assert config["processing_spec"]["preprocess_input_size"] == [1, 0, 0]
    # zeros in fill_in = the deterministic decoder; other values change the sound.
    z = np.random.default_rng(0).standard_normal((1, latent, 1)).astype(np.float32)
    state = np.zeros(sess.get_inputs()[1].shape, np.float32)
    zero = sess.run(None, {"latent_in": z, "state_in": state,
                           "fill_in": np.zeros((1, fill, 1), np.float32)})[0]
    other = sess.run(None, {"latent_in": z, "state_in": state,
                            "fill_in": np.ones((1, fill, 1), np.float32)})[0]
    core.reset(1)
    with torch.inference_mode():
        eager = core.decode(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(zero, eager, atol=1e-5 * np.abs(eager).max())
    assert not np.allclose(zero, other)


# ------------------------------------------------------------------ broken artefacts
def _failed(report, prefix):
    return [r for r in report.results if r.name.startswith(prefix) and not r.passed]


def test_streaming_graph_missing_a_state_fails(brave, tmp_path):
    _, paths = brave
    model = onnx.load(str(paths["onnx_streaming"]))
    graph = model.graph
    dropped = next(i for i in graph.input if i.name == "state_in_5")
    shape = [d.dim_value for d in dropped.type.tensor_type.shape.dim]
    # The layer now always starts from silence: a constant instead of an input.
    graph.initializer.append(numpy_helper.from_array(np.zeros(shape, np.float32), "state_in_5"))
    graph.input.remove(dropped)
    graph.output.remove(next(o for o in graph.output if o.name == "state_out_5"))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    copy_sidecar(paths["onnx_streaming"], broken)
    report = check_artifact(broken, options=CheckOptions(**FAST))
    failed = _failed(report, "contract.22_states")
    assert failed and "state_in_5" in failed[0].message and "point 22" in failed[0].message
    assert not report.passed


@pytest.mark.parametrize("target", ["onnx", "onnx_streaming"])
def test_a_sidecar_that_misstates_the_graph_fails(brave, tmp_path, target):
    """Host integrators read the sidecar: one whose sample rate or ratio is not the
    graph's and its run's (edited, or another file's) fails the metadata contract."""
    _, paths = brave
    graph = tmp_path / paths[target].name
    shutil.copy(paths[target], graph)
    copy_sidecar(paths[target], graph, sample_rate=48000, ratio=256)
    report = check_artifact(graph, options=CheckOptions(block_sizes=[512], **FAST))
    failed = _failed(report, "contract.22_metadata")
    assert failed, [r.name for r in report.results]
    assert ("the sidecar says sample_rate 48000, the run 44100" in failed[0].message
            and "the sidecar says ratio 256, the run 128" in failed[0].message), failed[0].message


def test_anira_sidecar_that_misstates_the_block_fails_the_check(brave, tmp_path):
    _, paths = brave
    folder = Path(shutil.copytree(paths["anira"], tmp_path / "edited.anira"))
    copy_sidecar(paths["anira"], folder, block_size=128, latency_samples=0)
    report = check_artifact(folder, options=CheckOptions(block_sizes=[512], **FAST))
    failed = {r.name: r.message for r in report.failures()}
    assert "contract.sidecar" in failed, failed
    assert "block_size 128 (the check found 512)" in failed["contract.sidecar"]
    assert "latency_samples 0 (the check found 112)" in failed["contract.sidecar"]


def _broken_anira(paths, tmp_path) -> Path:
    folder = tmp_path / "broken.anira"
    shutil.copytree(paths["anira"], folder)
    copy_sidecar(paths["anira"], folder)
    return folder


def _edit_json(folder: Path, method: str, edit) -> None:
    path = folder / f"{method}.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def test_anira_json_shape_that_disagrees_with_its_graph_fails(brave, tmp_path):
    _, paths = brave
    folder = _broken_anira(paths, tmp_path)

    def edit(config):
        config["inference_config"]["tensor_shape"][0]["input_shape"][0][2] = 2  # 2 frames
    _edit_json(folder, "decode", edit)
    report = check_artifact(folder, options=CheckOptions(**FAST))
    failed = _failed(report, "contract.24_tensor_shapes")
    assert [r.name for r in failed] == ["contract.24_tensor_shapes.decode"]
    assert "point 24" in failed[0].message and "decode.onnx" in failed[0].message
    assert not report.passed


def test_anira_state_pair_on_the_audio_tensor_fails(brave, tmp_path):
    _, paths = brave
    folder = _broken_anira(paths, tmp_path)

    def edit(config):
        config["state_config"]["state_pairs"] = [{"output_tensor": 1, "input_tensor": 0}]
    _edit_json(folder, "forward", edit)
    report = check_artifact(folder, options=CheckOptions(**FAST))
    failed = _failed(report, "contract.24_state_pairs")
    assert [r.name for r in failed] == ["contract.24_state_pairs.forward"]
    assert "signal tensor (audio_in)" in failed[0].message
    assert not report.passed


def test_anira_state_split_in_two_tensors_fails(brave, tmp_path):
    _, paths = brave
    folder = _broken_anira(paths, tmp_path)
    path = folder / "forward.onnx"
    model = onnx.load(str(path))
    graph = model.graph
    old_in = next(i for i in graph.input if i.name == "state_in")
    size = old_in.type.tensor_type.shape.dim[1].dim_value
    half = size // 2
    parts = [("a", half), ("b", size - half)]
    # state_in = concat(state_in_a, state_in_b); state_out split the same way.
    graph.input.remove(old_in)
    for tag, n in parts:
        graph.input.append(helper.make_tensor_value_info(f"state_in_{tag}", onnx.TensorProto.FLOAT, [1, n]))
    graph.node.insert(0, helper.make_node("Concat", ["state_in_a", "state_in_b"], ["state_in"], axis=1))
    graph.output.remove(next(o for o in graph.output if o.name == "state_out"))
    graph.initializer.append(numpy_helper.from_array(np.array([half, size - half], np.int64), "split_sizes"))
    graph.node.append(helper.make_node("Split", ["state_out", "split_sizes"],
                                       ["state_out_a", "state_out_b"], axis=1))
    for tag, n in parts:
        graph.output.append(helper.make_tensor_value_info(f"state_out_{tag}", onnx.TensorProto.FLOAT, [1, n]))
    # Rename the internal output tensor so it is no longer a graph output name.
    for node in graph.node:
        node.output[:] = ["state_whole" if o == "state_out" else o for o in node.output]
        node.input[:] = ["state_whole" if i == "state_out" else i for i in node.input]
    onnx.save(model, str(path))

    def edit(config):
        shapes = config["inference_config"]["tensor_shape"][0]
        audio = shapes["input_shape"][0]
        shapes["input_shape"] = [audio, [1, half], [1, size - half]]
        shapes["output_shape"] = [audio, [1, half], [1, size - half]]
        spec = config["inference_config"]["processing_spec"]
        for key in spec:
            if key != "internal_model_latency":
                spec[key] = spec[key][:1] + [spec[key][1]] * 2
        config["state_config"]["state_pairs"] = [{"output_tensor": 1, "input_tensor": 1},
                                                 {"output_tensor": 2, "input_tensor": 2}]
    _edit_json(folder, "forward", edit)
    report = check_artifact(folder, options=CheckOptions(**FAST))
    failed = _failed(report, "contract.23_flat_state")
    assert [r.name for r in failed] == ["contract.23_flat_state.forward"]
    assert "2 state input(s)" in failed[0].message and "point 23" in failed[0].message
    assert not _failed(report, "contract.24_tensor_shapes")
    assert not report.passed


# ------------------------------------------------------------------ options
def test_executorch_engine_fails_with_one_clear_line(brave, tmp_path):
    run, _ = brave
    with pytest.raises(TargetUnsupported, match="anira has no ExecuTorch backend"):
        export_run(run, ["anira"], tmp_path, ExportOptions(engine="executorch"))


def test_block_size_must_be_a_multiple_of_the_ratio(brave):
    run, _ = brave
    model = open_run(run).model
    reason = get_target("anira").unsupported_reason(model, ExportOptions(block_size=100))
    assert "multiple of the model's ratio 128" in reason
