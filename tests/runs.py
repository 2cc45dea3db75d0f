"""Fake run directories, laid out as acids-rave's `rave train` (and ours) write them."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch

from rave_core.config import build_model, parse_config
from rave_deploy.sidecar import path_for_sidecar, recorded_path, sidecar_path

from .conftest import NO_TRAINING_MODULES, SMALL, randomize


def make_run(root: Path, configs: Sequence[str] = ("brave",), extra: Sequence[str] = (),
             name: str = "run", seed: int = 0, trained_statistics: bool = True,
             unit_gains: bool = False) -> Path:
    """``root/name/config.gin`` + ``root/name/version_0/checkpoints/best.ckpt`` of a small
    random model. Returns the run directory.

    ``unit_gains``: weight-norm gains of 1, for an output of a musical size (random gains
    shrink every layer: v2_small's output then peaks near 1e-8, where float rounding
    alone fails the checks' parity thresholds)."""
    overrides = SMALL + NO_TRAINING_MODULES + list(extra)
    text = parse_config(list(configs), overrides)
    model = randomize(build_model(list(configs), overrides, build_discriminator=False), seed)
    if unit_gains:
        with torch.no_grad():
            for key, p in model.named_parameters():
                if key.endswith("weight_g"):
                    p.fill_(1.0)
    if trained_statistics:
        n = model.latent_size
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
        model.latent_pca.copy_(q)
        model.latent_mean.copy_(torch.randn(n, generator=g) * 0.1)
        model.fidelity.copy_(torch.linspace(0.5, 1.0, n))
    run = root / name
    ckpt_dir = run / "version_0" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    (run / "config.gin").write_text(text)
    torch.save({"state_dict": model.state_dict(), "global_step": 10, "epoch": 1},
               ckpt_dir / "best.ckpt")
    return run


def export_quietly(run: Path, targets: Sequence[str], out: Path,
                   options: Optional["ExportOptions"] = None) -> Dict[str, Path]:
    """``export_run`` with its warnings (e.g. a random model's latent statistics) silenced.
    Returns ``{target: file}``."""
    from rave_deploy.export import export_run
    from rave_deploy.targets import ExportOptions

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = export_run(run, list(targets), out, options or ExportOptions())
    return {r.target: r.path for r in results}


def copy_sidecar(artefact: Path, copy: Path, **changes) -> Dict[str, object]:
    """Write for ``copy`` (a copy of ``artefact`` elsewhere: a file, or an anira folder
    copied whole) the sidecar of ``artefact`` with ``changes``, its run re-recorded from
    the copy's folder as an export there records it (relative to the sidecar's folder),
    so the copy is checked against the same run without --run. Returns the sidecar."""
    original, target = sidecar_path(artefact), sidecar_path(copy)
    data = json.loads(original.read_text())
    for key in ("checkpoint", "config"):
        data["source"][key] = path_for_sidecar(recorded_path(artefact, data["source"][key]),
                                               target.parent)
    data.update(changes)
    target.write_text(json.dumps(data))
    return data
