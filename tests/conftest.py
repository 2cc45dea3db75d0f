"""Shared fixtures: where the reference material lives, and small random models."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("RAVE_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))
ORACLE = ROOT / "tests" / "fixtures" / "oracle"

# Reduced capacity: real strides, dilations and delays, small weights.
SMALL = ["CAPACITY = 4", "LATENT_SIZE = 8"]
NO_TRAINING_MODULES = ["rave.model.RAVE.audio_distance = None",
                       "rave.model.RAVE.multiband_audio_distance = None"]


def reference_dir() -> Path:
    if not REFERENCE.exists():
        pytest.fail(f"reference material not found at {REFERENCE}: clone next to shared/ or set "
                    "RAVE_REFERENCE_DIR")
    return REFERENCE


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Random weights that keep outputs in a useful range (PQMF filters untouched)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("pqmf."):
                continue
            if name.endswith("alpha"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def tone(path: Path, seconds: float = 1.0, sr: int = 44100, channels: int = 1) -> Path:
    """A 220 Hz sine at 0.3, 32-bit float, written at ``path`` (folders made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    sf.write(str(path), np.stack([x] * channels, 1), sr, subtype="FLOAT")
    return path


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    """A mono dataset of 3 s of :func:`tone` (enough windows of 8192 samples for a batch
    of 2); a module that needs other audio defines its own ``db``."""
    from rave_core.data import preprocess
    root = tmp_path_factory.mktemp("data")
    tone(root / "wav" / "a.wav", seconds=3)
    preprocess([str(root / "wav")], str(root / "db"), progress=False)
    return root / "db"


def small_model(configs, extra=(), seed: int = 0):
    from rave_core.config import build_model
    model = build_model(list(configs), overrides=SMALL + NO_TRAINING_MODULES + list(extra),
                        build_discriminator=False)
    return randomize(model, seed).eval()


def run_in_blocks(fn, x: torch.Tensor, block: int) -> torch.Tensor:
    """``fn`` on consecutive ``block``-step slices of ``x``'s last axis, joined."""
    return torch.cat([fn(x[..., i:i + block]) for i in range(0, x.shape[-1], block)], -1)


# Oracle configs with no reference run: acids-rave composed its own config files (`--config
# v2 --config wasserstein`); ours are composed the same way.
COMPOSED = {"v2_wasserstein": ["v2", "wasserstein"], "v2_spherical": ["v2", "spherical"]}


def oracle_model(cfg: str):
    """``(model, fixture)``: our eval-mode model of oracle config ``cfg`` with the weights
    of acids-rave 2.3.1's fixture (``tests/fixtures/oracle/<cfg>.pt``), built from the
    reference run's config.gin (or our configs, for :data:`COMPOSED`) and the fixture's
    override lines; the state dict is loaded strictly."""
    import json

    from rave_core.config import build_model
    from rave_core.run import load_weights

    fixture = torch.load(ORACLE / f"{cfg}.pt", weights_only=True)
    overrides = json.loads((ORACLE / "overrides.json").read_text())[cfg]
    if cfg in COMPOSED:
        model = build_model(COMPOSED[cfg], overrides=overrides, build_discriminator=False)
    else:
        text = (reference_dir() / "acids_rave_runs" / cfg / "config.gin").read_text()
        model = build_model(text=text, overrides=overrides, build_discriminator=False)
    load_weights(model, fixture["state_dict"], source=f"oracle fixture {cfg}")
    return model.eval(), fixture


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: the two cores are shared with other test
    processes, so one thread each is faster and steadier."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
