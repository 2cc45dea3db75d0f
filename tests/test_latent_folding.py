"""Folding the deterministic latent path into the convolutions around it
(:mod:`rave_deploy.latent_folding`): same function, fewer weights, exact at the edges."""
from __future__ import annotations

import warnings

import pytest
import torch

from rave_deploy.latent_folding import decoder_input_conv, dense_weight, encoder_output_conv
from rave_deploy.model import DeployError, DeployModel
from rave_core.nn.conv import Conv1d

from .conftest import small_model

# BRAVE and v1 end their encoder with a grouped conv (mean and scale halves), v2 with a
# dense one; v2 with noise augmentation gives the decoder latent channels to drop.
CASES = {
    "brave": (["brave"], []),
    "v1": (["v1"], []),
    "v2_small": (["v2_small"], []),
    "v2+augmentation": (["v2"], ["NOISE_AUGMENTATION = 4"]),
}
KEPT = 4  # dimensions the fidelity curve below keeps at fidelity 0.9


def _model(case: str):
    configs, extra = CASES[case]
    model = small_model(configs, extra=["LATENT_SIZE = 16", *extra])
    g = torch.Generator().manual_seed(1)
    n = model.latent_size
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        model.latent_pca.copy_(q.float())
        model.latent_mean.copy_(torch.randn(n, generator=g))  # far from zero: edges matter
        fidelity = torch.linspace(0.5, 1.0, n)
        fidelity[KEPT - 1:] = torch.linspace(0.95, 1.0, n - KEPT + 1)
        model.fidelity.copy_(fidelity)
    return model


def _cores(model, streaming: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = DeployModel(model, fidelity=0.9, deterministic=True, streaming=streaming)
        folded = DeployModel(model, fidelity=0.9, deterministic=True, streaming=streaming,
                             fold_latent=True)
    return plain, folded


def _stream(core, x, sizes):
    """``core``'s forward over ``x`` in blocks cycling through ``sizes``, from silence."""
    core.reset(x.shape[0])
    outs, i, k = [], 0, 0
    while i < x.shape[-1]:
        b = min(sizes[k % len(sizes)], x.shape[-1] - i)
        outs.append(core(x[..., i:i + b]))
        i, k = i + b, k + 1
    return torch.cat(outs, -1)


@pytest.mark.parametrize("case", list(CASES))
def test_folded_layers_have_the_kept_latent_only(case):
    model = _model(case)
    plain, folded = _cores(model, streaming=False)
    assert folded.latent_folded and folded.latent_size == KEPT
    enc, dec = encoder_output_conv(folded.encoder), decoder_input_conv(folded.decoder, KEPT + 1)
    assert (enc.out_channels, enc.groups, tuple(enc.weight.shape[:2])) == \
        (KEPT, 1, (KEPT, enc.in_channels))
    assert dec is not None and tuple(dec.weight.shape[:2]) == (dec.out_channels, KEPT + 1)
    removed = sum(p.numel() for p in plain.parameters()) - sum(p.numel() for p in folded.parameters())
    old_enc = plain.encoder.encoder.net[-1]
    # the fold always gives the encoder conv a bias: the centring on the latent mean
    old_bias = 0 if old_enc.bias is None else old_enc.bias.numel()
    expected = (old_enc.weight.numel() - enc.weight.numel() + old_bias - KEPT
                + plain.decoder.net[0].weight.numel() - dec.weight.numel())
    assert removed == expected > 0


@pytest.mark.parametrize("case", list(CASES))
def test_folded_core_computes_what_the_plain_one_does(case):
    """Offline (zero padding at both edges) and streaming from silence (zero states),
    every output sample from the first on, encode and forward."""
    model = _model(case)
    torch.manual_seed(0)
    with torch.no_grad():
        plain, folded = _cores(model, streaming=False)
        x = 0.3 * torch.randn(2, model.n_channels, 24 * plain.ratio)
        for method in ("encode", "forward"):
            a, b = getattr(plain, method)(x), getattr(folded, method)(x)
            assert a.shape == b.shape
            assert (a - b).abs().max() <= 1e-5 * a.abs().max(), method

        plain, folded = _cores(model, streaming=True)
        r = plain.ratio
        a, b = _stream(plain, x, [r, 3 * r, 2 * r]), _stream(folded, x, [2 * r, r, 5 * r])
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_edges_need_the_ones_channel():
    """Without the ones channel's zero at the edges the first frames differ: the test
    above would catch a fold of the mean into the bias."""
    model = _model("brave")
    with torch.no_grad():
        plain, folded = _cores(model, streaming=False)
        dec = folded.decoder.net[0]
        x = 0.3 * torch.randn(1, 1, 24 * plain.ratio)
        z = folded.encode(x)
        ones = torch.ones_like(z[:, :1])
        with_channel = dec(torch.cat([z, ones], 1))
        # the mean folded into the bias instead: right inside, wrong where padding is read
        as_bias = Conv1d(dec.in_channels - 1, dec.out_channels, dec.kernel_size[0],
                         padding=dec.padding_lr)
        as_bias.weight.copy_(dec.weight[:, :-1])
        as_bias.bias.copy_(dec.weight[:, -1].sum(-1) + (0 if dec.bias is None else dec.bias))
        diff = (with_channel - as_bias(z)).abs().amax(1)[0]
        assert diff[dec.padding_lr[0]:diff.shape[-1] - dec.padding_lr[1]].max() < 1e-4
        assert diff[0] > 1e-3


def test_dense_weight_expands_groups_block_diagonally():
    conv = Conv1d(4, 6, 3, groups=2)
    dense = dense_weight(conv)
    x = torch.randn(1, 4, 10)
    ref = torch.nn.functional.conv1d(x, conv.weight, conv.bias, groups=2)
    assert torch.allclose(torch.nn.functional.conv1d(x, dense, conv.bias), ref, atol=1e-6)
    assert dense[:3, 2:].abs().sum() == 0 and dense[3:, :2].abs().sum() == 0


def test_folding_a_sampled_latent_is_refused():
    model = _model("brave")
    with pytest.raises(DeployError, match="deterministic"):
        DeployModel(model, fidelity=0.9, deterministic=False, fold_latent=True)
