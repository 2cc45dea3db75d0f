"""Discrete (RVQ) models export as acids-rave exports them: ``encode`` gives one code
index per quantiser (as floats), ``decode`` takes indices (clamped, truncated); streaming
equals offline, and every target but Minifusion (BRAVE only) serves them."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import onnx
import pytest
import torch

from rave_core.run import load_weights
from rave_deploy.check import check_artifact
from rave_deploy.model import DeployModel
from rave_deploy.targets import CheckOptions

from .conftest import oracle_model, run_in_blocks, small_model
from .runs import export_quietly, make_run

FAST = dict(seconds=2.0, rtf_seconds=0.2)


def spread_codebooks(model, seed: int = 0) -> torch.Tensor:
    """Random codes at the scale of the encoder's output (each quantiser's smaller, as
    residuals shrink), so that a signal picks many different codes. Returns the state
    dict."""
    torch.manual_seed(seed)
    with torch.no_grad():
        scale = float(model.encoder(model.pqmf(torch.randn(1, 1, 1 << 15) * 0.5)).std())
        g = torch.Generator().manual_seed(seed)
        for i, layer in enumerate(model.encoder.rvq.layers):
            book = layer._codebook
            book.embed.copy_(torch.randn(book.embed.shape, generator=g) * scale * 0.7 ** i)
            book.embed_avg.copy_(book.embed)
            book.inited.fill_(1.0)
    return model.state_dict()


@pytest.fixture(scope="module")
def discrete():
    model = small_model(["discrete"])
    spread_codebooks(model)
    return model


def test_export_encodes_and_decodes_as_acids_rave():
    """The oracle fixture (acids-rave 2.3.1's weights and RVQ outputs): the export's
    encode is acids-rave's code indices, its decode of them acids-rave's quantised latent."""
    model, fixture = oracle_model("discrete")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixture's latent statistics are untrained
        core = DeployModel(model, deterministic=True, streaming=False)
    indices = fixture["rvq_indices"]
    assert core.latent_size == core.full_latent_size == indices.shape[1]
    assert indices.unique().numel() > 1  # not a degenerate fixture
    with torch.no_grad():
        assert torch.equal(core.encode(fixture["x"]), indices.float())
        quantized = core.codebooks.decode(indices.float())
    ref = fixture["rvq_quantized"]
    assert float((quantized - ref).abs().max() / ref.abs().max()) < 1e-5


def test_streaming_equals_offline(discrete):
    """Block by block (the TorchScript path), the codes are the offline codes, exactly,
    and decode is the offline decode, delayed by the reported latency."""
    offline = DeployModel(discrete, deterministic=True, streaming=False)
    streaming = DeployModel(discrete, deterministic=True, streaming=True, matmul_streaming=True)
    ratio, frames, block = offline.ratio, 400, 2048
    torch.manual_seed(1)
    x = torch.randn(1, 1, frames * ratio) * 0.5
    with torch.no_grad():
        codes = offline.encode(x)
        streamed = run_in_blocks(streaming.encode, x, block)
        delay = streaming.encode_delay // ratio
        assert codes.shape == (1, offline.latent_size, frames)
        assert codes.unique().numel() > 100  # the comparison covers many codes
        settled = slice(frames // 2, frames - delay)
        assert torch.equal(streamed[..., delay:][..., settled], codes[..., settled])

        y = offline.decode(codes)
        streaming.reset()
        ys = run_in_blocks(streaming.decode, codes, 2)
        d, n = streaming.decode_delay, y.shape[-1] // 2
        err = (ys[..., d + n:] - y[..., n:y.shape[-1] - d]).abs().max()
        assert float(err / y.abs().max()) < 1e-5


def test_decode_truncates_and_clamps_indices(discrete):
    """Hosts send floats: 3.7 is code 3, below 0 is code 0, above the last code is the
    last code (as acids-rave's export reads them)."""
    core = DeployModel(discrete, deterministic=True, streaming=False)
    top = core.codebooks.codebook_size - 1
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, top + 1, (1, core.latent_size, 8), generator=g).float()
    with torch.no_grad():
        y = core.decode(codes)
        assert torch.equal(core.decode(codes + 0.7), y)
        assert not torch.equal(core.decode(codes + 1.0).clamp(max=top), y)
        assert torch.equal(core.decode(codes - 5000), core.decode(torch.zeros_like(codes)))
        assert torch.equal(core.decode(codes + 5000), core.decode(torch.full_like(codes, top)))


def test_uninitialised_codebooks_warn():
    """A checkpoint saved before the first training batch has all-zero codes: every latent
    maps to code 0, which the export says."""
    model = small_model(["discrete"])
    assert float(model.encoder.rvq.layers[0]._codebook.inited) == 0.0
    with pytest.warns(UserWarning, match="codebooks were never initialised"):
        DeployModel(model, deterministic=True)


def test_discrete_run_exports_and_passes_its_checks(tmp_path):
    """nn~'s file and the streaming ONNX graph of a discrete run pass `rave-deploy check`;
    the TorchScript file reports one latent channel per quantiser to every host."""
    run = make_run(tmp_path, ("discrete",), name="discrete", unit_gains=True)
    ckpt = run / "version_0" / "checkpoints" / "best.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    model = small_model(["discrete"])
    load_weights(model, saved["state_dict"], source="test run")
    saved["state_dict"] = spread_codebooks(model)
    torch.save(saved, ckpt)

    paths = export_quietly(run, ["nn_tilde", "onnx_streaming"], tmp_path / "out")
    for target in ("nn_tilde", "onnx_streaming"):
        report = check_artifact(paths[target], options=CheckOptions(block_sizes=[1024, 2048], **FAST))
        assert report.passed, [(r.name, r.message) for r in report.failures()]
        sidecar = json.loads(Path(f"{paths[target]}.json").read_text())
        assert sidecar["latent_size"] == 16
        assert sidecar["latent_kind"] == "discrete" and sidecar["codebook_size"] == 1024

    # the codebooks are saved once (the exporter's folding had added transposed copies)
    graph = onnx.load(str(paths["onnx_streaming"])).graph
    shapes = [tuple(i.dims) for i in graph.initializer]
    assert shapes.count((1024, 8)) == 16 and (8, 1024) not in shapes
    assert sum(n.op_type == "Transpose" and n.input[0] in {i.name for i in graph.initializer}
               for n in graph.node) == 16

    ts = torch.jit.load(str(paths["nn_tilde"]))
    assert ts.full_latent_size == 16
    assert ts.encode_params.tolist() == [1, 1, 16, 1024]
    x = torch.randn(1, 1, 4096) * 0.3
    ts.set_deterministic(True)
    ts.reset()
    codes = ts.encode(x)
    ts.reset()
    mean, std = ts.encode_amortized(x)
    assert torch.equal(mean, codes) and not std.any()
    assert torch.equal(codes, codes.round()) and codes.min() >= 0 and codes.max() <= 1023
