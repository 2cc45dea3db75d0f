"""Given acids-rave 2.3.1's weights, our eager model computes acids-rave's outputs.

Fixtures come from ``scripts/make_oracle_fixtures.py`` run in an acids-rave environment:
reduced-capacity models built from the reference run configs, with their outputs.
"""
from __future__ import annotations

import pytest
import torch

from .conftest import oracle_model

CONFIGS = ["v1", "v2", "v2_small", "v3", "v2_causal", "discrete", "brave", "c128_r10",
           "v2_wasserstein", "v2_spherical"]
TOLERANCE = 1e-4  # of the reference's peak


def _close(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module", params=CONFIGS)
def pair(request):
    return (request.param, *oracle_model(request.param))


def test_pqmf(pair):
    _, model, f = pair
    with torch.no_grad():
        assert _close(model.pqmf(f["x"]), f["pqmf_analysis"]) < TOLERANCE
        assert _close(model.pqmf.inverse(f["pqmf_analysis"]), f["pqmf_synthesis"]) < TOLERANCE


def test_encode_and_latent_mean(pair):
    cfg, model, f = pair
    with torch.no_grad():
        z = model.encode(f["x"])
        assert _close(z, f["encode"]) < TOLERANCE
        if "latent_mean" in f and model.is_variational:
            assert _close(model.latent_mean_of(z), f["latent_mean"]) < TOLERANCE


def test_decoder_and_decode(pair):
    cfg, model, f = pair
    seed = int(f.get("decoder_out_noise_seed", -1))
    with torch.no_grad():
        if seed >= 0:
            torch.manual_seed(seed)
        assert _close(model.decoder(f["z"]), f["decoder_out"]) < TOLERANCE
        if seed >= 0:
            torch.manual_seed(seed)
        assert _close(model.decode(f["z"]), f["decode"]) < TOLERANCE


def test_ratio_and_latent_size(pair):
    _, model, f = pair
    assert model.ratio == f["ratio"]
    assert model.decoder_latent_size == f["decoder_latent_size"]
