"""Streaming equals offline: fed block by block, every model outputs the offline output
delayed by exactly its reported latency (after the first receptive field)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .conftest import run_in_blocks, small_model

EXACT = 1e-5  # of the offline peak

# config, block sizes in samples
CASES = [
    (("brave",), (128, 512, 2048)),
    (("c128_r10",), (128, 2048)),
    (("v1",), (2048, 4096)),
    (("v2",), (2048, 4096)),
    (("v2_small",), (512, 2048)),
    (("v2", "causal"), (2048, 4096)),
    (("v3",), (2048, 4096)),
    (("discrete",), (2048,)),
    # the rest of the shipped configs and modifiers, at one block each
    (("c2048_r10",), (2048,)),
    (("c1024_r10",), (1024,)),
    (("c512_r10",), (512,)),
    (("c256_r10",), (256,)),
    (("c128_r10_p70",), (128,)),
    (("c128_r10_p40",), (128,)),
    (("c128_r05_p40",), (128,)),
    (("v2_nodisc",), (512,)),
    (("v2", "wasserstein"), (2048,)),
    (("v2", "spherical"), (2048,)),
]

# Streaming delays (encode, decode) of the full-size models at 44.1 kHz (the small models
# have the same strides); their sums are the README's latency table
# (test_readme_latency_table_sums_these).
EXPECTED_LATENCY = {
    ("brave",): (0, 112), ("c128_r10",): (0, 112), ("v2", "causal"): (0, 1696),
    ("v2",): (14336, 12512), ("v3",): (14336, 12512), ("v2_small",): (5632, 5024),
    ("v1",): (8192, 16640), ("discrete",): (10240, 8672),
}


def _error(stream, offline, delay, skip):
    n = offline.shape[-1] - delay
    diff = (stream[..., delay:delay + n] - offline[..., :n])[..., skip:]
    return float(diff.abs().max() / offline.abs().max())


# Stereo models (`rave-core train --channels 2`): every channel through the same layers.
STEREO = [(("brave",), (512,)), (("v1",), (2048,)), (("v2_small",), (2048,)), (("v2",), (2048,))]


@pytest.mark.parametrize("configs,blocks", CASES, ids=lambda c: "+".join(c) if isinstance(c[0], str) else None)
def test_streaming_equals_offline(configs, blocks):
    _check_streaming(small_model(configs).set_noise(False), blocks)


@pytest.mark.parametrize("configs,blocks", STEREO, ids=lambda c: "+".join(c) if isinstance(c[0], str) else None)
def test_stereo_streaming_equals_offline(configs, blocks):
    model = small_model(configs, extra=["rave.model.RAVE.n_channels = 2"]).set_noise(False)
    assert model.n_channels == 2
    _check_streaming(model, blocks)


def _check_streaming(model, blocks):
    ratio, delays = model.ratio, model.streaming_delays()
    n = max(64 * ratio, 3 * 50000)  # several receptive fields
    n = (n // max(blocks) + 1) * max(blocks)
    torch.manual_seed(0)
    x = torch.randn(1, model.n_channels, n) * 0.5
    z = torch.randn(1, model.decoder_latent_size, n // ratio)
    skip = n // 2
    with torch.no_grad():
        e, y = model.encode(x), model.decode(z)
        mean = model.latent_mean_of(e)[:, :model.decoder_latent_size]
        yf = model.decode(mean) if mean.shape[1] == model.decoder_latent_size else None
        for block in blocks:
            # encode and decode alone at the larger blocks; forward (both) at every block
            if block != min(blocks) or len(blocks) == 1:
                model.set_streaming(True)
                es = run_in_blocks(model.encode, x, block)
                model.set_streaming(True)
                ys = run_in_blocks(model.decode, z, block // ratio)
                assert _error(es, e, delays.encode // ratio, skip // ratio) < EXACT, f"encode @ {block}"
                assert _error(ys, y, delays.decode, skip) < EXACT, f"decode @ {block}"
            if yf is not None:  # forward through the latent mean
                model.set_streaming(True)
                fs = run_in_blocks(lambda b: model.decode(model.latent_mean_of(model.encode(b))), x, block)
                assert _error(fs, yf, delays.forward, skip) < EXACT, f"forward @ {block}"
        model.set_streaming(False)


@pytest.mark.parametrize("configs,delays", sorted(EXPECTED_LATENCY.items()),
                         ids=lambda c: "+".join(c) if isinstance(c[0], str) else None)
def test_reported_latency(configs, delays):
    from rave_core.config import build_model
    model = build_model(list(configs), build_discriminator=False)
    got = model.streaming_delays()
    assert (got.encode, got.decode) == delays
    assert model.latency_samples == got.forward == sum(delays)


def test_readme_latency_table_sums_these():
    """Each row of the README's latency table, `ours`, is the encoder's delay plus the
    decoder's asserted above, and every config asserted has a row."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    header = "| config | ours | acids-rave 2.3.1 | why they differ |"
    rows = readme.split(header, 1)[1].split("\n\n", 1)[0].strip().splitlines()[1:]
    stated = {}
    for row in rows:
        names, ours = [cell.strip() for cell in row.strip("|").split("|")][:2]
        for name in names.split(", "):
            stated[tuple(part.strip() for part in name.split("+"))] = int(ours)
    assert stated == {configs: sum(delays) for configs, delays in EXPECTED_LATENCY.items()}


def test_latency_is_whole_frames_for_the_encoder():
    for configs in [("v1",), ("v2",), ("v2_small",), ("brave",)]:
        model = small_model(configs)
        assert model.streaming_delays().encode % model.ratio == 0


def test_batch_change_restarts_from_silence():
    model = small_model(("brave",)).set_noise(False)
    x = torch.randn(4, 1, 128 * 8)
    with torch.no_grad():
        model.set_streaming(True, batch_size=1)
        y4 = model.decode(model.latent_mean_of(model.encode(x)))
        model.set_streaming(True, batch_size=4)
        y4b = model.decode(model.latent_mean_of(model.encode(x)))
    assert y4.shape == (4, 1, 128 * 8)
    torch.testing.assert_close(y4, y4b)


def _assert_same_stream(reference, model, blocks, batch: int, seed: int) -> None:
    """Both models, from silence, on the same noise cut into ``blocks``: equal within
    ``EXACT`` of the peak."""
    torch.manual_seed(seed)
    x = torch.randn(batch, reference.n_channels, sum(blocks)) * 0.3
    reference.reset(batch)
    model.reset(batch)
    outs_ref, outs_model, i = [], [], 0
    with torch.no_grad():
        for n in blocks:
            outs_ref.append(reference(x[..., i:i + n]))
            outs_model.append(model(x[..., i:i + n]))
            i += n
    a, b = torch.cat(outs_ref, -1), torch.cat(outs_model, -1)
    assert a.abs().max() > 0
    assert float((a - b).abs().max() / a.abs().max()) < EXACT, (batch, blocks)


@pytest.mark.parametrize("configs", [("brave",), ("v1",), ("v2_small",), ("v2",)],
                         ids=lambda c: "+".join(c))
def test_matmul_streaming_equals_convolution_streaming(configs):
    """The TorchScript targets' streaming (matrix products, time-major states, weights
    laid out for the product) computes what the convolution path computes, batch 2,
    at uneven block sizes (up to 32 frames of the ratio per call)."""
    from rave_deploy.model import DeployModel

    model = small_model(configs)
    model.fidelity.copy_(torch.linspace(0.3, 1.0, model.latent_size))
    conv = DeployModel(model, deterministic=True, matmul_streaming=False)
    matmul = DeployModel(model, deterministic=True, matmul_streaming=True)
    matmul.lay_out_weights_for_block(2 * matmul.ratio + 1)  # any block: rounded to frames
    matmul.lay_out_weights_for_block(matmul.ratio)  # (out, in) rows where 1-3 frames
    weight = matmul.decoder.net[0].weight if hasattr(matmul.decoder, "net") else None
    r = conv.ratio
    _assert_same_stream(conv, matmul, [r, 2 * r, r, 8 * r, 32 * r, 5 * r], batch=2, seed=0)
    # the states are time-major (batch, length, channels) in matmul streaming
    layer = next(m for _, m in matmul.state_layers())
    assert layer.state.shape == (2, layer.state_shape()[2], layer.state_shape()[1])
    if weight is not None and weight.dim() == 3 and weight.shape[-1] > 1:
        assert not weight.is_contiguous()  # laid out for the product, same values
    # laid out for the frames each layer computes at a ratio-sized block, both memory
    # orders occur, and the blocks above run each through all products
    from rave_core.nn.conv import Conv1d
    layouts = {m.weight_rows_out for m in matmul.modules() if isinstance(m, Conv1d)
               and m.groups == 1 and m.kernel_size[0] > 1}
    assert layouts == {True, False}


@pytest.mark.parametrize("channels,weighted", [(32, False), (256, True), (1024, False)])
def test_weighted_sum_rows_only_for_mid_sized_weights(channels, weighted):
    """Laid out for one frame per call: a 3-tap conv of 256 channels (197k values) sums
    weight rows; 32 channels (3k: the op's fixed cost loses) and 1024 (3.1M: MKL's
    product wins on weights beyond L2) keep BLAS with (out, in) rows."""
    from rave_core.nn.conv import Conv1d, ConvTranspose1d

    conv = Conv1d(channels, channels, 3, padding=(2, 0))
    conv.lay_out_weight_for_matmul(1)
    up = ConvTranspose1d(channels, channels, 4, stride=2, padding=1)
    up.lay_out_weight_for_matmul(1)
    # rows of the (in, out) matrix: taps x channels for the conv, channels for the other
    for layer, rows in ((conv, 3 * channels), (up, channels)):
        assert layer.weighted_sum_rows == (4 if weighted else 0)
        assert layer.weight_rows_out == (not weighted)
        # one (indices, offsets) pair per row count, offsets ending with the total
        for m in (1, 2, 3, 4):
            index, offsets = getattr(layer, f"bag_index_{m}"), getattr(layer, f"bag_offsets_{m}")
            assert index.numel() == (m * rows if weighted else 0)
            if weighted:
                assert offsets.tolist() == [i * rows for i in range(m + 1)]


def test_weighted_sums_on_cpu_only(monkeypatch):
    """Moved off the CPU (nn~'s gpu message; here the meta device), a layer set up for
    weighted row sums takes the matrix product: MPS has no embedding_bag in nn~ 1.6's
    libtorch."""
    from rave_core.nn.conv import Conv1d, ConvTranspose1d
    from rave_core.nn.streaming import set_matmul_streaming, set_streaming

    calls = []
    real = torch._embedding_bag_forward_only
    monkeypatch.setattr(torch, "_embedding_bag_forward_only",
                        lambda *a: calls.append(a[0].device.type) or real(*a))
    for layer in (Conv1d(256, 256, 3, padding=(2, 0)),
                  ConvTranspose1d(256, 256, 4, stride=2, padding=1)):
        set_matmul_streaming(layer)
        layer.lay_out_weight_for_matmul(1)
        assert layer.weighted_sum_rows == 4
        for device in ("cpu", "meta"):
            layer.to(device)
            set_streaming(layer, True)
            y = layer(torch.randn(1, 256, 1, device=device))
            assert y.device.type == device
    assert calls == ["cpu", "cpu"]


def _matmul_layers(rows_tuned: int):
    from rave_core.nn.conv import Conv1d, ConvTranspose1d
    from rave_core.nn.streaming import set_matmul_streaming

    torch.manual_seed(0)
    layers = [Conv1d(256, 256, 3, padding=(2, 0)),
              ConvTranspose1d(256, 256, 4, stride=2, padding=1)]
    for layer in layers:
        set_matmul_streaming(layer)
        layer.lay_out_weight_for_matmul(rows_tuned)
    return layers


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(),
                    reason="this torch has no oneDNN: --cpu-kernels onednn cannot run here")
def test_packed_products_equal_blas_whatever_rows_packed_them():
    """``--cpu-kernels onednn``: a layer set up with ``use_packed_product`` computes
    products of more than 4 rows through oneDNN, on a weight packed at the first such
    call for that call's rows. Its output equals BLAS's for every row count after (more,
    fewer, 1-4 through the row sums), and a forgotten weight is packed again."""
    import copy

    from rave_core.nn.streaming import set_streaming

    for layer in _matmul_layers(32):
        blas = copy.deepcopy(layer)
        assert layer.use_packed_product() and not hasattr(blas, "packed_weight")
        for m in (layer, blas):
            set_streaming(m, True, 1)
        x = torch.randn(1, 256, 200)
        with torch.no_grad():
            for frames in (3, 32, 5, 64, 1, 16, 4, 8):
                block, x = x[..., :frames], x[..., frames:]
                a, b = layer(block), blas(block)
                # 3 rows first: the row sums, nothing packed; then packed for 32 rows
                assert layer.packed_ready == (frames != 3)
                assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(b.abs().max())), frames
            assert layer.packed_weight.is_mkldnn
            layer.forget_packed_weight()
            assert not layer.packed_ready and not layer.packed_weight.is_mkldnn
            block = torch.randn(1, 256, 8)
            assert torch.allclose(layer(block), blas(block), rtol=0, atol=1e-5)
            assert layer.packed_ready


def test_packed_products_only_for_large_ungrouped_weights_on_cpu():
    """Small weights (oneDNN's fixed cost per call loses) and grouped convolutions keep
    BLAS, without the attributes TorchScript would compile the oneDNN path from; a layer
    moved off the CPU (here the meta device) takes BLAS and packs nothing."""
    from rave_core.nn.conv import Conv1d
    from rave_core.nn.streaming import set_matmul_streaming, set_streaming

    small = Conv1d(16, 16, 3, padding=(2, 0))
    grouped = Conv1d(256, 512, 6, padding=(5, 0), groups=2)
    for layer in (small, grouped):
        set_matmul_streaming(layer)
        assert not layer.use_packed_product()
        assert not hasattr(layer, "packed_weight")
    for layer in _matmul_layers(32):
        assert layer.use_packed_product()
        layer.to("meta")
        set_streaming(layer, True, 1)
        y = layer(torch.randn(1, 256, 32, device="meta"))
        assert y.device.type == "meta" and not layer.packed_ready


def _conv_and_matmul_models(configs, monkeypatch, lowered_threshold: str):
    """A small model deployed twice (convolution and matrix-product streaming), with the
    weight-size threshold ``lowered_threshold`` of :mod:`rave_core.nn.conv` set to 0 so
    that the small layers take the path under test; and the latter's weighted layers."""
    import rave_core.nn.conv as conv_module
    from rave_core.nn.conv import Conv1d, ConvTranspose1d
    from rave_deploy.model import DeployModel

    monkeypatch.setattr(conv_module, lowered_threshold, 0)
    model = small_model(configs)
    model.fidelity.copy_(torch.linspace(0.3, 1.0, model.latent_size))
    conv = DeployModel(model, deterministic=True, matmul_streaming=False)
    matmul = DeployModel(model, deterministic=True, matmul_streaming=True)
    layers = [m for m in matmul.modules() if isinstance(m, (Conv1d, ConvTranspose1d))
              and "weight" in m._parameters]
    return conv, matmul, layers


@pytest.mark.parametrize("channels,ahead", [(64, False), (256, True), (1024, False)])
def test_read_ahead_only_for_weights_up_to_l2(channels, ahead):
    """A 3-tap conv of 256 channels (197k values, 786 KB), its transposed conv and a
    grouped conv of the same size are read ahead of products of many rows; 64 channels
    (12k) and 1024 (3.1M: beyond a core's L2, the pass would evict itself) are not."""
    from rave_core.nn.conv import Conv1d, ConvTranspose1d

    layers = [Conv1d(channels, channels, 3, padding=(2, 0)),
              ConvTranspose1d(channels, channels, 4, stride=2, padding=1),
              Conv1d(channels, 2 * channels, 6, padding=(5, 0), groups=2)]
    for layer in layers:
        assert not layer.read_ahead  # eager training and the ONNX graphs never do
        layer.lay_out_weight_for_matmul(32)
        assert layer.read_ahead == ahead


def test_read_ahead_of_grouped_products_of_many_rows_only(monkeypatch):
    """A grouped conv has no weighted sums: at 1-3 rows its batched product reads the
    weight once anyway, so the pass is only made before products of more rows."""
    import rave_core.nn.conv as conv_module
    from rave_core.nn.conv import Conv1d
    from rave_core.nn.streaming import set_matmul_streaming, set_streaming

    passes = []

    def counting_read_ahead(w, n_rows):
        passes.append(n_rows)
        return torch.zeros(())

    monkeypatch.setattr(conv_module, "_read_ahead", counting_read_ahead)
    layer = Conv1d(256, 512, 6, padding=(5, 0), groups=2)
    set_matmul_streaming(layer)  # lays the weight out, and sets read_ahead
    set_streaming(layer, True, 1)
    with torch.no_grad():
        layer(torch.randn(1, 256, 3))
        assert passes == []
        layer(torch.randn(1, 256, 4))
        assert passes == [2]


def test_read_ahead_is_a_zero_even_if_the_sum_overflows():
    """The pass adds ``0 * sum(w)``: a weight whose sum overflows to inf must still add
    zero, not NaN."""
    from rave_core.nn.conv import _read_ahead

    w = torch.full((64, 16), 3e38)
    assert torch.isinf(w.sum())
    zero = _read_ahead(w, 64)
    assert zero.dim() == 0 and float(zero) == 0.0


@pytest.mark.parametrize("configs", [("brave",), ("v2",)], ids=lambda c: "+".join(c))
def test_read_ahead_equals_convolution_streaming(configs, monkeypatch):
    """Products that read their weight ahead (plain, transposed and grouped convs) give
    the convolution path's output, at batch 1 and 2 and at blocks of 1 to many rows per
    layer. The small test models' weights are below the size range, so it is widened to
    make every layer read ahead."""
    from rave_core.nn.conv import Conv1d

    conv, matmul, layers = _conv_and_matmul_models(configs, monkeypatch,
                                                   "MIN_WEIGHTS_READ_AHEAD")
    assert layers and all(m.read_ahead for m in layers)
    if configs == ("brave",):
        assert any(m.groups > 1 for m in layers if isinstance(m, Conv1d))
    r = conv.ratio
    for batch in (1, 2):
        _assert_same_stream(conv, matmul, [r, r, 2 * r, 4 * r, r, 16 * r, r], batch, seed=batch)


@pytest.mark.parametrize("configs", [("brave",), ("v2",)], ids=lambda c: "+".join(c))
def test_weighted_sum_rows_equal_convolution_streaming(configs, monkeypatch):
    """Products of 1-4 rows with a large weight run as weighted sums of its rows
    (embedding_bag): same output as the convolution path, at batch 1 and 2 and at blocks
    giving 1 to many rows per layer. The small test models' weights are all below the
    size threshold, so it is lowered to make every layer take the path."""
    conv, matmul, layers = _conv_and_matmul_models(configs, monkeypatch,
                                                   "MIN_WEIGHTS_WEIGHTED_SUM")
    layers = [m for m in layers if getattr(m, "groups", 1) == 1]
    assert layers and all(m.weighted_sum_rows == 4 and not m.weight_rows_out for m in layers)
    r = conv.ratio
    for batch in (1, 2):
        _assert_same_stream(conv, matmul, [r, r, 2 * r, 3 * r, 4 * r, r, 16 * r, r], batch,
                            seed=batch)
