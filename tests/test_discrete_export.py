"""Discrete (RVQ) models export as acids-rave exports them: ``encode`` gives one code
index per quantiser (as floats), ``decode`` takes indices (clamped, truncated); streaming
equals offline, and every target but Minifusion (BRAVE only) serves them."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
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


def discrete_run(root: Path):
    """A small discrete run whose checkpoint has codebooks spread as
    :func:`spread_codebooks` spreads them, and its model."""
    run = make_run(root, ("discrete",), name="discrete", unit_gains=True)
    ckpt = run / "version_0" / "checkpoints" / "best.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    model = small_model(["discrete"])
    load_weights(model, saved["state_dict"], source="test run")
    saved["state_dict"] = spread_codebooks(model)
    torch.save(saved, ckpt)
    return run, model


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
    run, model = discrete_run(tmp_path)

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


def test_check_takes_a_near_tie_either_way(tmp_path, monkeypatch):
    """Where two codes are almost equally near, float rounding lets a correct file pick
    either. Made to happen here: the file's output is replaced, at one near-tie of the
    eager encoding (ties counted up to 1e-3 of the distance scale), by the eager output
    with the other pick. The check maps it back and
    passes, saying so; without that mapping it fails; a pick that is no near-tie (code + 1
    at a frame without one) still fails."""
    from rave_deploy.check import near_ties
    from rave_deploy.check.plan import impulse_span
    from rave_deploy.check.runner import EagerReference, TorchScriptRunner

    run, model = discrete_run(tmp_path)
    path = export_quietly(run, ["nn_tilde"], tmp_path / "out")["nn_tilde"]
    eager = EagerReference(model, 0.95)
    lookahead, memory = impulse_span(eager, "decode")
    context = -(-(lookahead + memory) // eager.ratio) + 1
    delays = {"encode": eager.delay_of("encode"), "forward": eager.delay_of("forward")}
    chosen = {}  # method -> frame of the near-tie the "file" takes the other way

    def other_pick(original):
        def run_(self, signal, block_size):
            y = original(self, signal, block_size)
            if self.method not in chosen:
                return y
            x = torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32))
            ties = near_ties.tie_alternatives(eager.core, x)
            with torch.inference_mode():
                base = eager(self.method, signal)
            frames = [t.frame for t in ties]
            if chosen[self.method] is None:
                # the tie whose other pick changes most, past the check's warm-up
                segments = near_ties.tie_segments(eager.core, x, self.method, context)
                late = x.shape[-1] // eager.ratio // 2
                gains = [np.abs(v - base[0, :, s:s + v.shape[-1]]).max() * (f >= late)
                         for f, (s, v) in zip(frames, segments)]
                assert max(gains) > 0, "no near-tie past the warm-up to take"
                chosen[self.method] = frames[int(np.argmax(gains))]
            if chosen[self.method] == "no tie":  # code + 1 where no tie is
                y = y.copy()
                free = next(f for f in range(x.shape[-1] // eager.ratio // 2, 10_000)
                            if f not in frames)
                y[0, 0, free + delays["encode"]] += 1
                return y
            if chosen[self.method] in frames:  # the same frame in a perturbed run
                start, values = near_ties.tie_segments(eager.core, x, self.method, context)[
                    frames.index(chosen[self.method])]
                y = y.copy()
                d, n = delays[self.method], values.shape[-1]
                stop = min(y.shape[-1], start + d + n)
                y[0, :, start + d:stop] += (values - base[0, :, start:start + n])[:, :stop - start - d]
            return y
        return run_

    # this small model's encoding has few ties within rounding: widen what counts as
    # one, so that there are some to take the other way (the mechanism is the same)
    monkeypatch.setattr(near_ties, "TIE_TOLERANCE", 1e-3)
    monkeypatch.setattr(TorchScriptRunner, "run", other_pick(TorchScriptRunner.run))
    options = CheckOptions(block_sizes=[1024, 2048], **FAST)
    chosen.update(encode=None, forward=None)
    report = check_artifact(path, options=options)
    assert report.passed, [(r.name, r.message) for r in report.failures()]
    for method in ("encode", "forward"):
        parity = next(r for r in report.results if r.name == f"parity.{method}")
        assert "1 near-tie(s) between codes taken the other way" in parity.message

    monkeypatch.setattr(EagerReference, "near_tie_outputs", lambda *a, **k: [])
    chosen.update(encode=None, forward=None)
    failed = {r.name for r in check_artifact(path, options=options).failures()}
    assert {"parity.encode", "parity.forward"} <= failed, failed
    monkeypatch.undo()

    monkeypatch.setattr(near_ties, "TIE_TOLERANCE", 1e-3)
    monkeypatch.setattr(TorchScriptRunner, "run", other_pick(TorchScriptRunner.run))
    chosen.clear()
    chosen.update(encode="no tie")
    failed = {r.name for r in check_artifact(path, options=options).failures()}
    assert "parity.encode" in failed
