"""``rave-deploy export``: a run -> the files each host loads, atomically, with sidecars."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence

from rave_core.os_errors import os_error_in
from rave_core.file_kinds import (HDF5_SIGNATURE, PICKLE_OPCODE, ZIP_SIGNATURE,
                                  first_bytes, is_torchscript_archive)
from rave_core.run import Run, exported_file_error, locate_run, newer_checkpoint, open_run
from rave_core.text import listed

from .file_names import plain_file_name
from .io import (OutputError, OutputInTheWay, atomic_outputs, check_replaceable,
                 describe_os_error, dump_json, ensure_dir)
from .model import DEFAULT_TUNED_BLOCK, DeployError, DeployModel
from .output_lock import OutputLock
from .sidecar import (FOLDER_SIDECAR, build_sidecar, find_sidecar, read_sidecar, recorded_path,
                      shown_path, sidecar_path)
from .targets import ExportOptions, Target, TargetUnsupported, registry

if TYPE_CHECKING:  # imported when a style is taught (it reads audio)
    from .style_teaching import StyleAudio


class ExportError(RuntimeError):
    """A target's exporter failed (a bug or an unforeseen model): the message names the
    target and the error; the earlier files at the output path, if any, are unchanged."""


@dataclass
class ExportResult:
    target: str
    path: Optional[Path] = None
    sidecar: Optional[Path] = None
    skipped: Optional[str] = None  # why the model cannot be served by this target
    size_bytes: int = 0
    seconds: float = 0.0
    #: what the export warned about: the run as a whole first (in every target's result,
    #: a skipped one's too), then this target
    warnings: List[str] = field(default_factory=list)
    #: the checkpoint exported (a run directory's: :func:`rave_core.run.find_checkpoint`)
    #: and the step it records (None: it records none, as a bare state dict)
    checkpoint: Optional[Path] = None
    step: Optional[int] = None
    #: a checkpoint in the run folder modified after the one exported (a run folder exports
    #: its best.ckpt first; acids-rave's ``rave export`` takes the newest), else None
    newer_checkpoint: Optional[Path] = None

    def as_dict(self) -> Dict[str, object]:
        return {"target": self.target, "path": str(self.path) if self.path else None,
                "sidecar": str(self.sidecar) if self.sidecar else None,
                "skipped": self.skipped, "size_bytes": self.size_bytes,
                "seconds": round(self.seconds, 3), "warnings": self.warnings,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "step": self.step,
                "newer_checkpoint": (str(self.newer_checkpoint) if self.newer_checkpoint
                                     else None)}


def resolve_targets(names: Sequence[str]) -> List[Target]:
    """The targets ``names`` gives, each once, in the order first given (``-t onnx -t
    onnx`` exports one); every target for none or ``all``."""
    targets = registry()
    if not names or "all" in names:
        return list(targets.values())
    out = []
    for n in dict.fromkeys(names):
        if n not in targets:
            raise DeployError(f"unknown target {n!r}: choose from {', '.join(sorted(targets))} or all")
        out.append(targets[n])
    return out


def artifact_path(output: Path, name: str, target: Target, as_file: bool) -> Path:
    """Where a target's artefact goes: ``--output`` itself when it names the file
    (:func:`output_names_file`), else ``<output>/<name>.<target><suffix>``."""
    if as_file:
        return output
    return output / f"{name}.{target.name}{target.suffix}"


#: Suffixes of files that no target writes (audio, checkpoints and weights, archives,
#: configs and text): an ``--output`` ending in one is taken for a mistyped file name,
#: not a folder (``-o take1.wav`` made a folder ``take1.wav/``), unless that folder exists.
#: Other dots in a folder's name (``v1.2``, ``exports.old``) are a folder's. A suffix a
#: registered target writes (a target writing ``.pt`` or ``.tflite`` files) is not one:
#: :func:`output_names_file` leaves those out.
NOT_OUTPUT_SUFFIXES = frozenset("""
    .wav .wave .mp3 .flac .ogg .oga .opus .aif .aiff .aifc .m4a .aac .wma .caf .w64 .rf64
    .pt .pth .ckpt .bin .safetensors .pte .tflite .pb .pkl .pickle .npy .npz .gin .json
    .zip .tar .gz .tgz .bz2 .xz .7z .rar .txt .csv .yaml .yml .md .pd .maxpat .scd
""".split())


def output_names_file(output: Path, targets: Sequence[Target], all_mode: bool = False) -> bool:
    """Whether ``--output`` is the artefact's own path rather than a folder: it ends in
    a file suffix a target writes (``.ts``, ``.onnx``, ``.h5``, in any case) and is not
    an existing folder.

    Raises:
        DeployError: such a path given for a target that writes another suffix (or a
            folder), or for several targets (made a folder of that name, it would read as
            a file: ``my.ts/brave.onnx.onnx``; ``all_mode``: they were not named, ``-t
            all``); a path ending in a suffix of :data:`NOT_OUTPUT_SUFFIXES` (a file no
            target writes) that is not an existing folder.
    """
    suffix = output.suffix.lower()
    written = sorted({t.suffix for t in registry().values() if t.suffix})
    if output.is_dir():
        return False
    if suffix in NOT_OUTPUT_SUFFIXES.difference(written):
        raise DeployError(
            f"--output {output}: no target writes a {suffix} file; -o is a folder (created "
            f"as needed), or, for one target, the file it writes, named with that target's "
            f"suffix ({', '.join(written)}). Give a folder: a name ending in a file suffix "
            "such as .wav, .pt or .zip is taken for a file unless that folder exists "
            "(other dots, as in v1.2, are fine)")
    if suffix not in written:
        return False
    if len(targets) > 1 and all_mode:
        same = [t.name for t in targets if t.suffix == suffix]
        raise DeployError(f"--output {output} names one {suffix} file, but -t all exports "
                          "every target that can serve the model: give a folder for them, "
                          f"or one target that writes {suffix} files (-t "
                          f"{' or -t '.join(same)})")
    if len(targets) > 1:
        raise DeployError(f"--output {output} names one {suffix} file, but {len(targets)} "
                          "targets are exported: give a folder for them")
    target = targets[0]
    if suffix != target.suffix:
        writes = f"{target.suffix} files" if target.suffix else "a folder"
        remedy = f"a {target.suffix} path or a folder" if target.suffix else "a folder"
        raise DeployError(f"--output {output}: {target.name} writes {writes}, not {suffix}: "
                          f"give {remedy}")
    return True


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size



def check_outputs_replaceable(target: Target, path: Path) -> None:
    """Raise :class:`OutputInTheWay` unless a new export of ``target`` at ``path`` replaces
    nothing but an earlier export: the artefact and its sidecar must each be absent or of
    the kind written there (file or folder), and a folder there must be empty or an earlier
    export of this target holding nothing else (its sidecar, :meth:`Target.folder_files`).

    Raises:
        OutputError: what stands there cannot be read (a folder that cannot be listed or
            searched, a sidecar without read permission): said as a read failure, naming
            what could not be read.
    """
    path = Path(path)
    goes = f"where the {target.name} export goes"
    try:
        if target.kind != "folder":
            for final in (path, sidecar_path(path, folder=False)):
                check_replaceable(final, flag="--output or --name")
        else:
            check_replaceable(path, folder=True, flag="--output or --name")
    except OutputError:
        raise
    except OSError as err:  # what stands there cannot be looked at: its folder is closed
        raise _read_refused(path.parent, err, f"the folder {goes}", folder=True) from None
    if target.kind != "folder":
        earlier = _earlier_sidecar(path, target).get("target")
        if path.is_file() and isinstance(earlier, str) and earlier != target.name:
            # e.g. `-o out/brave.onnx_streaming.onnx -t onnx`: same suffix, another graph
            raise OutputInTheWay(f"{path} is an earlier {earlier} export (its sidecar says "
                                 f"so), and this {target.name} export would replace it: "
                                 "choose another --output or --name")
        return
    if not path.is_dir():
        return
    try:
        entries = sorted(path.iterdir())
        # what each entry is: (shown name, a plain file)
        kinds = {e.name: (e.name + ("/" if e.is_dir() else ""), e.is_file() and not e.is_symlink())
                 for e in entries}
    except OSError as err:
        raise _read_refused(path, err, goes, folder=True) from None
    if not entries:
        return  # an empty folder: nothing to lose
    sidecar = _earlier_sidecar(path, target)
    if sidecar.get("target") != target.name:
        held = listed([shown for shown, _ in kinds.values()])
        raise OutputInTheWay(f"{path} is a folder holding {held}, not an earlier {target.name} "
                             f"export (it has no {FOLDER_SIDECAR} of one), and an export would "
                             "replace it: move it away, or choose another --output or --name")
    allowed = {FOLDER_SIDECAR} | target.folder_files(sidecar)
    others = [shown for name, (shown, plain) in kinds.items() if name not in allowed or not plain]
    if others:
        raise OutputInTheWay(f"{path} holds an earlier {target.name} export and also "
                             f"{listed(others)}, which a new export would delete: move "
                             f"{'it' if len(others) == 1 else 'them'} out of the folder, or "
                             "choose another --output or --name")


def _earlier_sidecar(path: Path, target: Optional[Target] = None) -> Dict[str, object]:
    """The sidecar of the export at ``path``, or ``{}`` where there is none, or none of
    ours (missing, a folder, not JSON nor UTF-8, not a JSON object).

    Raises:
        OutputError: it, or its folder, cannot be read (e.g. no read permission): what
            replaces it cannot be told, said as a read failure naming the file or folder
            (``target``: the export that would replace it, for the message).
    """
    replacing = f", which the {target.name} export would replace" if target else ""
    try:
        found = find_sidecar(path)
    except OSError as err:  # the sidecar's folder cannot be searched
        folder = Path(os.fsdecode(err.filename)).parent if err.filename else path.parent
        raise _read_refused(folder, err, f"the folder of the sidecar of {path}{replacing}",
                            folder=True) from None
    if found is None:
        return {}
    try:
        sidecar = json.loads(found.read_text())
    except (FileNotFoundError, IsADirectoryError, ValueError):  # gone meanwhile; not ours
        return {}
    except OSError as err:
        # a file's sidecar removed, the file is replaced; a folder's, the folder is refused
        removable = target is not None and target.kind != "folder"
        raise _read_refused(found, err, f"the sidecar of {path}{replacing}",
                            removable=removable) from None
    return sidecar if isinstance(sidecar, dict) else {}


def _read_refused(path: Path, err: OSError, what: str, folder: bool = False,
                  removable: bool = False) -> OutputError:
    """:class:`OutputError` for ``path`` (``what`` it is), which could not be read while
    export looked at what it replaces: worded for reading (make it readable; ``removable``:
    or remove it), never with the write-side advice of :func:`describe_os_error` (choose a
    folder you can write to)."""
    if err.errno in (errno.EACCES, errno.EPERM):
        fix = f"chmod u+rwx {path}" if folder else f"chmod u+r {path}"
        why = (f"permission denied: make it readable ({fix})"
               + (" or remove it" if removable else "") + ", or choose another --output or --name")
    else:
        why = describe_os_error(err, "")
    return OutputError(f"cannot read {path} ({what}): {why}")


def _write_artifact(target: Target, run: Run, options: ExportOptions, path: Path,
                    style: Optional[StyleAudio]) -> Path:
    """Export to temporaries, then rename the artefact and its sidecar into place together:
    on any failure (full disk, Ctrl-C, a target error) the earlier pair stays as it was."""
    folder = target.kind == "folder"
    finals = [path] if folder else [path, sidecar_path(path, folder=False)]
    # what a failure leaves as it was (said only when there is something)
    kept = ("; the earlier files there are unchanged"
            if any(f.exists() or f.is_symlink() for f in finals) else "")
    try:  # (what stands at `path` was checked before any target was written)
        with atomic_outputs(finals, folder=folder) as temps:
            extra = target.export(run.model, options, temps[0])
            core: DeployModel = extra.pop("_core")
            sidecar_folder = sidecar_path(path, folder=folder).parent
            if style is not None:
                extra["style"] = style.as_sidecar(sidecar_folder)
            sidecar = build_sidecar(target.name, path, run, core, extra,
                                    sidecar_folder=sidecar_folder)
            dump_json(temps[0] / FOLDER_SIDECAR if folder else temps[1], sidecar)
            # What stands there may have changed during the export: look again (cheap).
            check_outputs_replaceable(target, path)
    except (OutputError, TargetUnsupported, DeployError):
        raise
    except Exception as err:  # KeyboardInterrupt passes: it is not an Exception
        # a library that met a full disk may wrap the OSError in an error of its own
        cause = os_error_in(err)
        if cause is not None:
            raise OutputError(f"{target.name}: writing {path} failed: "
                              f"{describe_os_error(cause, '')}{kept}") from err
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise ExportError(f"{target.name}: exporting {path} failed ({type(err).__name__}: "
                          f"{first}){kept}. Run `rave-deploy --debug export ...` for the "
                          "traceback, and report it") from err
    return path / FOLDER_SIDECAR if folder else finals[1]


def _name_from_run(folder: str) -> str:
    """The default file name, the run folder's, made one that every host's machine takes."""
    name = plain_file_name(folder)
    if folder and name != folder:
        warnings.warn(f"the run folder's name {folder!r} is not a plain file name for every "
                      "host (Windows, shells, Max's and PureData's object boxes): the files "
                      f"are named {name!r}; give --name to choose another")
    return name


def export_run(run_path, target_names: Sequence[str], output: Path,
               options: ExportOptions, run: Optional[Run] = None,
               explicit: bool = True,
               on_result: Optional[Callable[[ExportResult], None]] = None,
               on_warning: Optional[Callable[[str], None]] = None) -> List[ExportResult]:
    """Export ``run_path`` to each target. A target that cannot serve the model is an
    error when named explicitly, and skipped with its reason under ``all``; ``all`` with
    no target that can serve it is an error too. ``explicit=False`` never raises
    for that: every such target comes back skipped, with its reason.

    Every result names the checkpoint exported and its step. ``on_result`` is called with
    each target's result as soon as it is done. An error or
    Ctrl-C after some targets were written carries a note (``err.__notes__``) naming the
    targets written and those not.

    A warning about the run as a whole, given before any target is exported (``--fidelity``
    on a run whose latent is not variational, a run folder's name changed for the files),
    comes first in every result's ``warnings``, and is given once the run is opened and
    checked (an error then or later: still given), as a Python warning, or to
    ``on_warning`` when one is given (the CLI: it prints it with the results). The lock's
    own warning (a killed export's leftovers removed) is a Python warning only.

    The export holds the output folder's lock (:class:`rave_deploy.output_lock.OutputLock`)
    from before it loads the run to after its last write: another export into that folder
    at the same time raises :class:`~rave_deploy.output_lock.OutputLocked` at once, before
    loading its run (a run path that names no run is said before that). An export refused
    for another reason, or skipping every target, leaves no folder and no lock file."""
    targets = resolve_targets(target_names)
    all_mode = not target_names or "all" in target_names
    _check_engine(targets, options)
    output = Path(output)
    # One target and a file name with its suffix (`-o model.ts`): that file; else a folder.
    as_file = output_names_file(output, targets, all_mode)
    # A wrong run path is said first (found without loading): told to wait for another
    # export, the user would wait only to learn that.
    if run is None:
        _refuse_an_export_as_run(Path(run_path))
    files = locate_run(run_path) if run is None else None
    # One export at a time into a folder, refused before anything is loaded or checked:
    # what stands there is the other export's, changing, until it is done.
    with OutputLock(output.parent if as_file else output) as lock:
        lock.claim()
        with _warnings_of_the_run(on_warning) as run_warnings:
            run = run or open_run(files, ema=options.ema_weights)
            # named in the results (acids-rave's `rave export` would take the newest)
            newer = (newer_checkpoint(Path(run_path), files.checkpoint) if files is not None
                     else None)
            options = _fidelity_applied(run, options)
            name = options.name or _name_from_run(run.config_path.parent.name)
            reasons = _reasons_not_served(targets, run, options, explicit, all_mode)
            # Refuse before writing anything: a folder or a file of the user's where an
            # output goes.
            for target in targets:
                if not reasons[target.name]:
                    check_outputs_replaceable(target,
                                              artifact_path(output, name, target, as_file))
            run, style = _taught(run, options)
        if any(not reason for reason in reasons.values()):
            lock.take()  # the folder made, and locked if it was not yet
        results: List[ExportResult] = []
        try:
            for target in targets:
                if reasons[target.name]:
                    results.append(ExportResult(target.name, skipped=reasons[target.name],
                                                warnings=list(run_warnings)))
                else:
                    results.append(_export_target(target, run, options, style,
                                                  artifact_path(output, name, target, as_file),
                                                  run_warnings))
                results[-1].checkpoint = run.checkpoint_path
                results[-1].step = run.step if run.step_recorded else None
                results[-1].newer_checkpoint = newer
                if on_result is not None:
                    on_result(results[-1])
        except BaseException as err:  # Ctrl-C and SIGTERM too
            written = [r.target for r in results if r.path is not None]
            if written:  # the folder now mixes this export with what was there before
                err.add_note(_stopped_midway(written, [t.name for t in targets[len(results):]
                                                       if not reasons[t.name]]))
            raise
        return results


@contextmanager
def _warnings_of_the_run(on_warning: Optional[Callable[[str], None]]) -> Iterator[List[str]]:
    """Record the warnings given inside: yields the list of the UserWarnings' texts (each
    once, in the order given), filled on the way out, when each is given again, an error
    inside or not: to ``on_warning`` where given, else as the Python warning it was. Other
    categories are given again as they were (their filters then apply, as before)."""
    said: List[str] = []
    caught: List[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield said
    finally:
        registry: Dict[object, int] = {}  # the filters' `default`: once per place
        for w in caught:
            text = str(w.message)
            if issubclass(w.category, UserWarning):
                if text in said:
                    continue
                said.append(text)
                if on_warning is not None:
                    on_warning(text)
                    continue
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno,
                                   registry=registry, source=w.source)


def _refuse_an_export_as_run(path: Path) -> None:
    """Refuse an export given back as RUN (``rave-deploy export exports/x.ts``), naming
    the run its sidecar records: it said "no config.gin", and beside one, torch's warning
    and "truncated or corrupted"."""
    kind = _export_kind(path)
    if kind is None:
        return
    origin = None
    try:
        source = read_sidecar(path).get("source")
    except (OSError, ValueError, UnicodeDecodeError):   # none, or not readable: said generally
        source = None
    recorded = source.get("checkpoint") if isinstance(source, dict) else None
    if isinstance(recorded, str) and recorded:
        origin = f"its sidecar names it: {shown_path(recorded_path(path, recorded), recorded)}"
    raise exported_file_error(path, kind, origin)


def _export_kind(path: Path) -> Optional[str]:
    """What export ``path`` is (``"TorchScript"``, ``"ONNX"``, ``"HDF5"``, a folder
    export's target), told from its bytes, its suffix or its sidecar without loading it;
    None for anything else (a run directory, a checkpoint, a path that is not there)."""
    if path.is_dir():
        if (path / "config.gin").exists() or not (path / FOLDER_SIDECAR).is_file():
            return None
        return _sidecar_target(path)
    if not path.is_file():
        return None
    head = first_bytes(path)
    if head.startswith(ZIP_SIGNATURE) and is_torchscript_archive(path):
        return "TorchScript"
    if head.startswith(HDF5_SIGNATURE):
        return "HDF5"
    if path.suffix.lower() == ".onnx":
        return "ONNX"
    if head.startswith(ZIP_SIGNATURE) or head[:1] == PICKLE_OPCODE:
        return None   # a checkpoint, whatever lies beside it
    return _sidecar_target(path)


def _sidecar_target(path: Path) -> Optional[str]:
    """The target of the export ``path`` by its rave-deploy sidecar; None without one."""
    try:
        sidecar = read_sidecar(path)
    except (OSError, ValueError, UnicodeDecodeError):   # none, or not JSON
        return None
    target = sidecar.get("target") if isinstance(sidecar, dict) else None
    return str(target) if target else None


#: ``--fidelity``'s default (``rave-deploy export``'s and :class:`ExportOptions`').
DEFAULT_FIDELITY = ExportOptions.fidelity


def _check_engine(targets: Sequence[Target], options: ExportOptions) -> None:
    """Refuse another ``--engine`` than ONNX Runtime when no target exported reads it
    (:attr:`Target.chooses_engine`; ``-t onnx --engine executorch`` exported ONNX graphs
    as if it had not been given); a target that reads it says why it cannot
    (:meth:`Target.unsupported_reason`)."""
    if options.engine == "onnx" or any(t.chooses_engine for t in targets):
        return
    readers = [t.name for t in registry().values() if t.chooses_engine]
    raise DeployError(
        f"--engine {options.engine}: --engine chooses the runtime of {listed(readers)}'s "
        f"graphs, and {listed(readers)} is not among the targets "
        f"({', '.join(t.name for t in targets)}); no target exports for ExecuTorch yet: "
        "drop --engine")


def _fidelity_applied(run: Run, options: ExportOptions) -> ExportOptions:
    """``options`` as the export applies them to ``run``: a run whose latent is not
    variational has no PCA to cut (:class:`rave_deploy.model.DeployModel`) and is exported
    whole, and its sidecars say fidelity 1 (they said the ``--fidelity`` given, which
    nothing had applied), with a warning when ``--fidelity`` was given (or another value
    than the default)."""
    if run.model.is_variational or options.fidelity == 1.0:
        return options
    if options.fidelity_given or options.fidelity != DEFAULT_FIDELITY:
        encoder = type(getattr(run.model, "encoder", None)).__name__
        kind = {"DiscreteEncoder": "discrete (quantised) run, whose latent is one code index "
                                   "per quantiser",
                "SphericalEncoder": "spherical run, whose latent is the angles of a direction",
                "WasserteinEncoder": "wasserstein run, whose latent goes to hosts as it is"}.get(
                    encoder, f"run ({encoder}), whose latent is not variational")
        warnings.warn(f"--fidelity {options.fidelity:g} does not apply to this {kind}: it is "
                      "exported whole, every latent channel kept, and its sidecars record "
                      "fidelity 1", stacklevel=2)
    return dataclasses.replace(options, fidelity=1.0)


def _reasons_not_served(targets: List[Target], run: Run, options: ExportOptions,
                        explicit: bool, all_mode: bool) -> Dict[str, Optional[str]]:
    """Why each target cannot serve ``run``'s model (None: it can). Raises
    :class:`TargetUnsupported`, before anything is written, for a target named explicitly
    that cannot, and for ``all`` when none can."""
    reasons = {t.name: t.unsupported_reason(run.model, options) for t in targets}
    if explicit and not all_mode:
        for t in targets:
            if reasons[t.name]:
                raise TargetUnsupported(f"{t.name}: {reasons[t.name]}")
    if explicit and all(reasons.values()):
        # `all` with nothing to write would look like a success to a script
        by_reason: Dict[str, List[str]] = {}
        for n, r in reasons.items():
            by_reason.setdefault(r, []).append(n)
        raise TargetUnsupported("no target can serve this model; " + "; ".join(
            f"{', '.join(names)}: {r}" for r, names in by_reason.items()))
    return reasons


def _export_target(target: Target, run: Run, options: ExportOptions,
                   style: Optional[StyleAudio], path: Path,
                   run_warnings: Sequence[str] = ()) -> ExportResult:
    """Write ``target``'s artefact and sidecar at ``path``, with the warnings it gave after
    ``run_warnings`` (those about the run as a whole)."""
    ensure_dir(path.parent)  # created as needed, like every output folder of both CLIs
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _warn_untaught_side(target, options)
        for ignored in target.ignored_options(options):
            warnings.warn(ignored, stacklevel=2)
        _warn_replacing_another_checkpoint(path, run)
        sidecar = _write_artifact(target, run, options, path, style)
    return ExportResult(target.name, path=path, sidecar=sidecar, size_bytes=_size(path),
                        seconds=time.perf_counter() - t0,
                        warnings=list(run_warnings) + sorted(
                            {str(w.message) for w in caught
                             if issubclass(w.category, UserWarning)} - set(run_warnings)))


def _stopped_midway(written: List[str], not_written: List[str]) -> str:
    """What an export of several targets stopped by an error or Ctrl-C left: the targets
    whose files it had replaced, and those it had not reached (the failed one included)."""
    done = f"{', '.join(written)} written (any earlier files there replaced)"
    if not not_written:
        return done
    return (f"{done}; {', '.join(not_written)} not written (the earlier files there, if "
            "any, are as they were)")


def _taught(run: Run, options: ExportOptions):
    """``run`` with its model taught ``--style-target`` / ``--style-source``, and the
    style audio, which each sidecar names (None when neither is given)."""
    if options.style_target is None and options.style_source is None:
        return run, None
    from .style_teaching import StyleAudio, teach_style, teaching_block

    sr, ratio = int(run.model.sr), int(run.model.ratio)
    factor = max(int(options.sr) // sr, 1) if options.sr else 1  # --block-size: host samples
    asked = (options.block_size or DEFAULT_TUNED_BLOCK * factor) // factor
    # the block teaching plays (a multiple of the ratio), which the sidecar records
    block = teaching_block(asked, ratio)
    if options.block_size is not None and block != asked:
        at = "" if factor == 1 else f" ({asked} at the model's {sr} Hz)"
        warnings.warn(f"--block-size {options.block_size}{at} is not a multiple of the "
                      f"model's ratio ({ratio}): the style is taught in blocks of {block} "
                      "samples (rounded up), as the sidecar records", stacklevel=2)
    style = StyleAudio(target=options.style_target, source=options.style_source,
                       block_size=block, fidelity=options.fidelity)
    model = teach_style(run.model, style, progress=True)
    return dataclasses.replace(run, model=model), style


def _warn_replacing_another_checkpoint(path: Path, run: Run) -> None:
    """Warn when the export at ``path`` that this one replaces came from another
    checkpoint (two runs of one name exported into one folder): a re-export of the same
    checkpoint, the usual case, replaces it silently."""
    source = _earlier_sidecar(path).get("source")
    if not isinstance(source, dict):  # none there, or not ours
        return
    before = source.get("checkpoint_sha256")
    if isinstance(before, str) and before and before != run.checkpoint_sha256:
        warnings.warn(f"{path} was an export of another checkpoint "
                      f"({_earlier_checkpoint(path, source.get('checkpoint'))}) and is "
                      "replaced; give --name or --output to keep both", stacklevel=2)


def _earlier_checkpoint(path: Path, recorded: object) -> str:
    """The checkpoint an earlier export at ``path`` names (``recorded``: its sidecar's
    ``source.checkpoint``, relative to the sidecar's folder), as the user knows it."""
    if not isinstance(recorded, str) or not recorded:
        return "unnamed"
    return shown_path(recorded_path(path, recorded), recorded)


def _warn_untaught_side(target: Target, options: ExportOptions) -> None:
    given = [s for s in ("target", "source") if getattr(options, f"style_{s}") is not None]
    if len(given) == 1 and target.style_learning:
        missing = "source" if given == ["target"] else "target"
        warnings.warn(f"only --style-{given[0]} was given, and {target.name} cannot learn the "
                      f"style {missing} ({target.style_learning}): this file will not "
                      f"transfer a style; give --style-{missing} too", stacklevel=2)
