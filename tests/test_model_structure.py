"""Building each config gives exactly acids-rave's state-dict keys, shapes and dtypes."""
from __future__ import annotations

import json

import pytest
import torch

from rave_core.config import available_configs, build_model
from rave_core.nn.weight_norm import remove_weight_norm

from .conftest import reference_dir

# reference config name -> our configs, composed in order
CONFIGS = {
    "v1": ["v1"], "v2": ["v2"], "v2_small": ["v2_small"], "v3": ["v3"],
    "v2_causal": ["v2", "causal"], "discrete": ["discrete"], "brave": ["brave"],
    "c128_r10": ["c128_r10"],
}


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _spec(sd):
    return {k: (list(v.shape), _dtype(v)) for k, v in sd.items()}


def _reference(cfg: str, section: str):
    data = json.loads((reference_dir() / "state_dicts" / f"{cfg}.json").read_text())
    return {k: (v["shape"], v["dtype"]) for k, v in data[section].items()}


def _diff(ours, ref):
    missing = sorted(set(ref) - set(ours))
    extra = sorted(set(ours) - set(ref))
    wrong = [(k, ours[k], ref[k]) for k in sorted(ref) if k in ours and ours[k] != ref[k]]
    return missing[:5], extra[:5], wrong[:5]


@pytest.mark.parametrize("cfg", sorted(CONFIGS))
@pytest.mark.parametrize("source", ["ours", "acids"])
def test_state_dict_matches_reference(cfg, source):
    if source == "ours":
        model = build_model(CONFIGS[cfg])
    else:  # the operative config.gin an acids-rave run directory holds
        text = (reference_dir() / "acids_rave_runs" / cfg / "config.gin").read_text()
        model = build_model(text=text)
    before = _spec(model.state_dict())
    assert _diff(before, _reference(cfg, "state_dict_before_weight_norm_removal")) == ([], [], [])
    remove_weight_norm(model)
    after = _spec(model.state_dict())
    assert _diff(after, _reference(cfg, "state_dict_after_weight_norm_removal")) == ([], [], [])


def test_v2_nodisc_builds_no_discriminator_and_matches_v2_small():
    nodisc = build_model(["v2_nodisc"])
    small = build_model(["v2_small"], build_discriminator=False)
    assert nodisc.discriminator is None
    keys = {k for k in small.state_dict() if not k.startswith("discriminator.")}
    assert set(nodisc.state_dict()) == keys


@pytest.mark.parametrize("name", ["c2048_r10", "c1024_r10", "c512_r10", "c256_r10", "c128_r10_p70",
                                  "c128_r10_p40", "c128_r05_p40"])
def test_brave_family_configs_build_causal_models(name):
    model = build_model([name], build_discriminator=False)
    expected = {"c2048_r10": 2048, "c1024_r10": 1024, "c512_r10": 512, "c256_r10": 256}
    assert model.ratio == expected.get(name, 128)
    # causal: the encoder adds no delay
    assert model.streaming_delays().encode == 0


MODIFIERS = ("causal", "spherical", "wasserstein")


@pytest.mark.parametrize("name", available_configs())
def test_the_phase_1_override_reaches_every_config(name):
    """`--override PHASE_1_DURATION=N` (how a user shortens the first phase) reaches the
    model whatever the config: spherical bound the value directly, and the override was
    accepted and did nothing."""
    configs = ["v2", name] if name in MODIFIERS else [name]
    model = build_model(configs, ["PHASE_1_DURATION=3"], build_discriminator=False)
    assert model.phase_1_duration == 3, configs
