"""``rave-deploy export``: a run -> the files each host loads, atomically, with sidecars."""
from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from rave_core.run import Run, open_run

from .io import atomic_dir, atomic_file, check_writable_dir
from .model import DeployError, DeployModel
from .sidecar import build_sidecar, write_sidecar
from .targets import ExportOptions, Target, TargetUnsupported, registry


@dataclass
class ExportResult:
    target: str
    path: Optional[Path] = None
    sidecar: Optional[Path] = None
    skipped: Optional[str] = None  # why the model cannot be served by this target
    size_bytes: int = 0
    seconds: float = 0.0
    warnings: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, object]:
        return {"target": self.target, "path": str(self.path) if self.path else None,
                "sidecar": str(self.sidecar) if self.sidecar else None,
                "skipped": self.skipped, "size_bytes": self.size_bytes,
                "seconds": round(self.seconds, 3), "warnings": self.warnings}


def resolve_targets(names: Sequence[str]) -> List[Target]:
    targets = registry()
    if not names or "all" in names:
        return list(targets.values())
    out = []
    for n in names:
        if n not in targets:
            raise DeployError(f"unknown target {n!r}: choose from {', '.join(sorted(targets))} or all")
        out.append(targets[n])
    return out


def artifact_path(output: Path, name: str, target: Target, single: bool) -> Path:
    """Where a target's artefact goes: ``--output`` itself for one target given as a file
    path, else ``<output>/<name>.<target><suffix>``."""
    if single and output.suffix and target.suffix and output.suffix == target.suffix:
        return output
    return output / f"{name}.{target.name}{target.suffix}"


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def export_run(run_path, target_names: Sequence[str], output: Path,
               options: ExportOptions, run: Optional[Run] = None,
               explicit: bool = True) -> List[ExportResult]:
    """Export ``run_path`` to each target. A target that cannot serve the model is an
    error when named explicitly, and skipped with its reason under ``all``."""
    import time

    run = run or open_run(run_path, ema=options.ema_weights)
    name = options.name or (run.config_path.parent.name or "model")
    targets = resolve_targets(target_names)
    all_mode = not target_names or "all" in target_names
    output = Path(output)
    single = len(targets) == 1
    folder = output.parent if (single and output.suffix) else output
    if not folder.exists() and folder.parent.exists():
        folder.mkdir()
    check_writable_dir(folder)

    results = []
    for target in targets:
        reason = target.unsupported_reason(run.model, options)
        if reason:
            if all_mode or not explicit:
                results.append(ExportResult(target.name, skipped=reason))
                continue
            raise TargetUnsupported(f"{target.name}: {reason}")
        path = artifact_path(output, name, target, single)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            writer = atomic_dir if target.kind == "folder" else atomic_file
            with writer(path) as tmp:
                extra = target.export(run.model, options, tmp)
                core: DeployModel = extra.pop("_core")
                sidecar = build_sidecar(target.name, path, run, core, extra)
                if target.kind == "folder":
                    write_sidecar(tmp, sidecar)  # inside the folder
            if target.kind != "folder":
                sc = write_sidecar(path, sidecar)
            else:
                sc = path / "rave-deploy.json"
        results.append(ExportResult(target.name, path=path, sidecar=sc, size_bytes=_size(path),
                                    seconds=time.perf_counter() - t0,
                                    warnings=sorted({str(w.message) for w in caught
                                                     if issubclass(w.category, UserWarning)})))
    return results
