"""The artefacts ``rave-deploy check`` is given: which they are (an export's folder
stands for the artefacts in it, a sidecar for its artefact: :func:`expand_artifacts`),
what each is (its target: :func:`identify`), and what checking it needs, refused before
any check runs (:func:`prepare_check`: its sidecar, its run, the checkpoint it was
exported from)."""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from rave_core.os_errors import describe_os_error
from rave_core.file_kinds import (HDF5_SIGNATURE, WHAT_A_RUN_IS, ZIP_SIGNATURE, first_bytes,
                                  is_training_checkpoint)
from rave_core.run import RunError, find_checkpoint, sha256_of
from rave_core.text import listed

from ..output_lock import is_lock_file
from ..sidecar import FOLDER_SIDECAR, find_sidecar, read_sidecar, recorded_path, sidecar_file_of
from ..targets import registry


class CheckUsageError(ValueError):
    """The artefact or options cannot be checked at all (exit code 2)."""


#: What a file is, by its suffix, as messages name it (a suffix not here: "a .X file").
FILE_KINDS = {".ts": "a TorchScript file", ".onnx": "an ONNX graph", ".h5": "an HDF5 file"}


#: The target a file of a suffix several targets write is checked as when neither a
#: sidecar nor its name (:func:`target_named_by`) says which: a file nn~ loads, the offline
#: graph (a policy, not a list of targets: any other suffix takes its first target by
#: name, and a new target needs nothing here).
SUFFIX_DEFAULTS = {".ts": "nn_tilde", ".onnx": "onnx"}


def suffix_targets() -> Dict[str, str]:
    """The target a file without a sidecar is checked as by its suffix alone (where its
    name does not say it: :func:`target_named_by`): every suffix a registered target
    writes, the suffixes more targets write first (``.ts``, ``.onnx``, ``.h5``), each with
    its :data:`SUFFIX_DEFAULTS` target, else the first of its targets by name."""
    by_suffix: Dict[str, List[str]] = {}
    for name, target in sorted(registry().items()):
        if target.suffix and target.kind != "folder":
            by_suffix.setdefault(target.suffix, []).append(name)
    ordered = sorted(by_suffix.items(), key=lambda item: (-len(item[1]), item[0]))
    return {suffix: SUFFIX_DEFAULTS.get(suffix) if SUFFIX_DEFAULTS.get(suffix) in names
            else names[0] for suffix, names in ordered}


def suffix_kinds() -> Dict[str, str]:
    """What a file named with each suffix of :func:`suffix_targets` is taken for."""
    return {suffix: FILE_KINDS.get(suffix, f"a {suffix} file") for suffix in suffix_targets()}


def folder_targets() -> List[str]:
    """The targets whose export is a folder (anira), by name."""
    return sorted(name for name, target in registry().items() if target.kind == "folder")


def target_named_by(artifact: Path) -> Optional[str]:
    """The target whose export names its file as ``artifact`` is named,
    ``<name>.<target><suffix>`` (``brave.supercollider.ts``: supercollider), or None."""
    found = [name for name, target in registry().items()
             if target.suffix and target.kind != "folder"
             and artifact.name.endswith(f".{name}{target.suffix}")
             and len(artifact.name) > len(f".{name}{target.suffix}")]
    return max(found, key=len, default=None)


def _expected() -> Tuple[List[str], List[str]]:
    """What ``check`` takes without a sidecar, as messages list it: the suffixes of
    :func:`suffix_targets` and the folder targets."""
    return list(suffix_targets()), folder_targets()


def _or(words: Sequence[str]) -> str:
    """``a, b or c``."""
    words = list(words)
    return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else "".join(words)


def _a(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _expected_artifact() -> str:
    """``a .ts, .onnx, .h5 or an anira folder``."""
    suffixes, folders = _expected()
    return "a " + _or([*suffixes, *([_a(f"{_or(folders)} folder")] if folders else [])])


def _expected_artifacts() -> str:
    """``.ts, .onnx or .h5 files, or anira folders``."""
    suffixes, folders = _expected()
    files = f"{_or(suffixes)} files" if suffixes else ""
    return ", or ".join(x for x in (files, f"{_or(folders)} folders" if folders else "") if x)


#: First bytes of the artefacts that have a signature: a TorchScript file is a zip archive,
#: Minifusion's an HDF5 file (ONNX, a protobuf message, has none).
SIGNATURES = {ZIP_SIGNATURE: (".ts", "a TorchScript file (a zip archive)"),
              HDF5_SIGNATURE: (".h5", "an HDF5 file")}


def _signature(artifact: Path):
    """``(suffix, what)`` of the artefact kind ``artifact``'s first bytes say, or None."""
    head = first_bytes(artifact)
    return next((kind for magic, kind in SIGNATURES.items() if head.startswith(magic)), None)


def _is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` is a training run (``config.gin`` and ``*.ckpt`` below it) or a
    folder of one holding checkpoints (``version_0/``, ``checkpoints/``: config.gin up to
    three levels above, as :func:`rave_core.run.find_config` finds it)."""
    try:
        if not any(folder.rglob("*.ckpt")):
            return False
    except OSError:
        return False
    return any((up / "config.gin").is_file() for up in [folder, *folder.parents][:4])


def _export_first(path: Path, what: str) -> CheckUsageError:
    """The usage error for a run or checkpoint given to ``check``: it checks exports."""
    return CheckUsageError(f"{path} is {what}, not an export: export it first "
                           f"(rave-deploy export {path} -o FOLDER), then check what it "
                           "writes (rave-deploy check FOLDER)")


def _anira_like(folder: Path) -> bool:
    """Whether ``folder`` holds what an anira export does (graphs and their JSON
    configuration), sidecar or not."""
    return folder.is_dir() and any(folder.glob("*.json")) and any(folder.glob("*.onnx"))


def identify(artifact: Path):
    """The sidecar of ``artifact`` (or ``{}``) and the name of its target."""
    try:
        sidecar = read_sidecar(artifact)
    except FileNotFoundError:
        sidecar = None
    except (ValueError, UnicodeDecodeError, OSError) as err:  # JSONDecodeError is a ValueError
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckUsageError(f"{sidecar_file_of(artifact)} is not a readable rave-deploy "
                              f"sidecar ({reason}): re-export, or move it away and pass "
                              "--run RUN") from None
    if sidecar is not None:
        if not isinstance(sidecar, dict) or not isinstance(sidecar.get("target"), str):
            raise CheckUsageError(f"{sidecar_file_of(artifact)} names no target: it is not a "
                                  "rave-deploy sidecar; re-export, or move it away and pass "
                                  "--run RUN")
        return sidecar, sidecar["target"]
    if _anira_like(artifact):
        return {}, "anira"
    if artifact.is_file() and (artifact.parent / FOLDER_SIDECAR).is_file():
        # a graph of a folder export: checked alone, it would fail for want of the others
        raise CheckUsageError(f"{artifact} is part of the anira export {artifact.parent}: "
                              f"check the folder (rave-deploy check {artifact.parent})")
    if artifact.is_file() and is_training_checkpoint(artifact):
        # a zip too, but no TorchScript file: "rename it to .ts" would be wrong
        raise _export_first(artifact, "a training checkpoint (torch.save)")
    # the target its name says (as export names it), else its suffix's
    name = ((None if artifact.is_dir() else target_named_by(artifact))
            or suffix_targets().get(artifact.suffix))
    signed = _signature(artifact) if artifact.is_file() else None
    if name is not None and signed is not None and signed[0] != artifact.suffix:
        # e.g. a TorchScript file renamed .onnx: its loader would only say "parsing failed"
        raise CheckUsageError(f"{artifact} is {signed[1]}, not what its suffix "
                              f"{artifact.suffix} says: rename it to {artifact.stem}{signed[0]}")
    if name is None:
        raise CheckUsageError(
            f"{artifact}: unknown artefact type (no rave-deploy sidecar, suffix "
            f"{artifact.suffix or 'none'}): expected {_expected_artifact()}"
            + (f"; it is {signed[1]}: rename it to {artifact.stem}{signed[0]}" if signed else ""))
    return {}, name


def given_path(given: Union[str, Path]) -> Path:
    """``given`` (a path as the user typed it) as a Path to an existing file or folder.

    Raises:
        CheckUsageError: it is empty (an unset shell variable), does not exist, or cannot
            be looked at (a name too long, a folder that cannot be searched).
    """
    if str(given) == "":
        raise CheckUsageError("an empty path was given (an unset shell variable?): name the "
                              "artefacts to check")
    path = Path(given)
    try:
        os.stat(path)
    except FileNotFoundError:
        raise CheckUsageError(f"{path} does not exist") from None
    except PermissionError:
        raise CheckUsageError(f"{path} cannot be read (permission denied): make it and its "
                              "folders readable") from None
    except OSError as err:   # a name too long, a file where a folder should be, ...
        raise CheckUsageError(describe_os_error(err, path)) from None
    return path


def expand_artifacts(paths: Sequence[Union[str, Path]]) -> List[Path]:
    """The artefacts named by what a user gives ``rave-deploy check``, each once (by the
    file it resolves to), in the order given: a sidecar beside its artefact
    (``model.ts.json``) stands for the artefact, so that ``check exports/*`` works; a
    folder that is not itself an artefact (an ``--output`` folder) stands for the
    artefacts in it that have sidecars (:func:`_artifacts_in`; an export's lock file
    there is not one). Anything else is kept as
    given, for :func:`prepare_check` to accept or refuse.

    Raises:
        CheckUsageError: a path that is empty, missing or unreadable (:func:`given_path`),
            or a folder with nothing to check.
    """
    out: List[Path] = []
    seen = set()
    for given in map(given_path, paths):
        named = [given]
        if given.suffix == ".json" and given.is_file() and given.with_suffix("").exists():
            named = [given.with_suffix("")]
        elif given.is_dir() and not (given / FOLDER_SIDECAR).is_file():
            named = _artifacts_in(given)
        for path in named:
            if os.path.realpath(path) not in seen:   # `a.onnx ./x/../a.onnx`, a link
                seen.add(os.path.realpath(path))
                out.append(path)
    return out


def _artifacts_in(folder: Path) -> List[Path]:
    """The artefacts with sidecars in ``folder`` (an export's ``--output``), with a warning
    for each artefact there without one (it is not checked: nothing names its run); or
    ``[folder]`` for a folder that looks like an anira export without its sidecar. A
    folder named like an artefact (``my.ts/``) is a folder like any other; when it holds
    nothing to check, the message says it is a folder, not the file its name suggests.

    Raises:
        CheckUsageError: the folder has nothing to check.
    """
    try:
        # (an export's lock file, left by an export killed outright, is nothing to check)
        entries = sorted(q for q in folder.iterdir() if not is_lock_file(q))
    except OSError as err:
        raise CheckUsageError(f"cannot list {folder}: {describe_os_error(err, '')}") from None
    with_sidecar = [q for q in entries if not q.name.endswith(".json") and find_sidecar(q)]
    without = [q for q in entries if q not in with_sidecar and (
        (q.suffix in suffix_targets() and q.is_file()) or _anira_like(q))]
    if with_sidecar:
        for q in without:
            warnings.warn(f"{q} has no sidecar: check it on its own with --run RUN")
        return with_sidecar
    if _anira_like(folder):
        return [folder]
    if not without and _is_run_folder(folder):
        raise _export_first(folder, "a training run (config.gin and checkpoints)"
                            if (folder / "config.gin").is_file() else
                            "a folder of a training run (checkpoints)")
    # a folder named like a file (`my.ts/`): the user may have taken it for one
    kind = suffix_kinds().get(folder.suffix)
    named = f"{folder} is a folder, not {kind}: " if kind else ""
    if not entries:
        what = f"an empty folder, not {kind}" if kind else "empty"
        raise CheckUsageError(f"{folder} is {what}: give the files or folder rave-deploy "
                              "export wrote")
    if without:
        raise CheckUsageError(f"{named}no artefacts with sidecars in {folder} (found "
                              f"{listed([q.name for q in without])} without one: check them "
                              "with --run RUN)")
    # folders shown as such: `my.ts/` inside is a folder, not a file to check
    held = [q.name + ("/" if q.is_dir() else "") for q in entries]
    raise CheckUsageError(f"{named}no artefacts in {folder} (it holds {listed(held)}): "
                          f"expected {_expected_artifacts()}")


@dataclass
class CheckPlan:
    """What checking an artefact needs, validated before any check runs
    (:func:`prepare_check`)."""

    artifact: Path
    sidecar: Dict[str, object]
    target: str
    source: str                   # the run or checkpoint to load
    ema_weights: bool
    #: the sidecar's ``source.checkpoint`` as written (relative to its folder, or absolute
    #: from older versions) where ``source`` comes from it; None for ``--run``
    recorded: Optional[str] = None
    #: the style audio the file was taught (``export --style-*``; a
    #: :class:`~rave_deploy.style_teaching.StyleAudio`), there and unchanged; None if none
    style: Optional[object] = None


_MISSING = object()


def _damaged_sidecar(artifact: Path, field: str, value: object) -> CheckUsageError:
    shown = "missing" if value is _MISSING else f"{json.dumps(value)[:60]}"
    return CheckUsageError(f"{sidecar_file_of(artifact)} is damaged: its {field!r} field is "
                           f"{shown}, not what rave-deploy writes there; re-export, or pass "
                           "--run RUN (the run directory or checkpoint it was exported from)")


def prepare_check(artifact, run: Optional[str] = None) -> CheckPlan:
    """Everything about checking ``artifact`` that can be refused without running a check:
    it exists, its sidecar is readable and names a known target, the run to check against
    is there and (when the sidecar records its SHA-256) is the checkpoint the file was
    exported from, the style audio it was taught (``export --style-*``) is there unchanged.
    ``rave-deploy check`` prepares every artefact before checking any.

    The sidecar's ``source.checkpoint`` is relative to the sidecar's folder (the one read,
    beside a symbolic link's target for a link; absolute from older versions), so a
    project folder moved whole is checked without ``--run``.

    Raises:
        CheckUsageError, RunError: bad usage (exit code 2), the message says what to do:
            also for a path that is empty, missing or unreadable, or an empty file.
    """
    artifact = given_path(artifact)
    if artifact.is_file() and artifact.stat().st_size == 0:
        # (its loader's error would not say so, nor would "no sidecar")
        raise CheckUsageError(f"{artifact} is empty (0 bytes): copy or export it again")
    sidecar, target_name = identify(artifact)
    if target_name not in registry():
        raise CheckUsageError(f"{artifact}: target {target_name!r} is not known to this version "
                              f"(known: {', '.join(sorted(registry()))})")
    origin: Dict[str, object] = {}
    if sidecar:
        value = sidecar.get("source", _MISSING)
        if isinstance(value, dict):
            origin = value
            checkpoint = origin.get("checkpoint", _MISSING)
            if not run and not (isinstance(checkpoint, str) and checkpoint):
                raise _damaged_sidecar(artifact, "source.checkpoint", checkpoint)
        elif not run:
            raise _damaged_sidecar(artifact, "source", value)
    recorded = origin.get("checkpoint")
    named = _recorded_checkpoint(artifact, recorded)  # (None: not a usable path)
    if run:
        source = run
    elif named is not None:
        source = str(named)
    else:
        raise CheckUsageError(f"{artifact} has no rave-deploy sidecar naming its run: pass "
                              "--run RUN (the run directory or checkpoint it was exported from)")
    _same_checkpoint(artifact, str(source), origin, explicit=bool(run), named=named)
    return CheckPlan(artifact, sidecar, target_name, str(source),
                     bool(origin.get("ema_weights")), recorded=None if run else str(recorded),
                     style=_style_audio(artifact, sidecar))


def _style_audio(artifact: Path, sidecar: Dict[str, object]):
    """The style audio the sidecar of ``artifact`` names (``export --style-*``: its
    ``style`` field, paths relative to the sidecar's folder), found there unchanged (by
    SHA-256); None when the file was taught none. The check teaches its reference again
    from it, minutes in: a file gone is refused before any artefact is checked.

    Raises:
        CheckUsageError: a style file gone, changed or unreadable, or a damaged field.
    """
    style = sidecar.get("style") if sidecar else None
    if not style:
        return None
    from ..style_teaching import StyleAudio, StyleAudioError  # (imports torch)

    try:
        return StyleAudio.from_sidecar(style, sidecar_file_of(artifact))
    except StyleAudioError as err:
        raise CheckUsageError(str(err)) from None
    except OSError as err:  # a file that cannot be read
        raise CheckUsageError(f"the style audio {artifact} was taught from cannot be read "
                              f"({describe_os_error(err)}): make it readable, or export "
                              "again") from None
    except (AttributeError, KeyError, TypeError, ValueError):  # not what export writes
        raise _damaged_sidecar(artifact, "style", style) from None


def _recorded_checkpoint(artifact: Path, recorded: object) -> Optional[Path]:
    """The checkpoint the sidecar of ``artifact`` names (``recorded``, its
    ``source.checkpoint``), as a path to open (:func:`recorded_path`); None where it
    names none."""
    if not isinstance(recorded, str) or not recorded:
        return None
    return recorded_path(artifact, recorded)


def _same_checkpoint(artifact: Path, source: str, origin: Dict[str, object],
                     explicit: bool, named: Optional[Path] = None) -> None:
    """Refuse a checkpoint that is not the one the artefact was exported from (its SHA-256
    differs from the sidecar's ``source.checkpoint_sha256``): its parity checks would fail
    for a reason that is not the export's (e.g. training continued and overwrote it).
    ``named``: the checkpoint the sidecar names, resolved (:func:`_recorded_checkpoint`)."""
    path = Path(source)
    if not path.exists():
        # RunError as open_run words it, with where the path came from: the sidecar's
        # path as written there (relative to its folder, as export writes it)
        shown, where = path, ""
        if not explicit:
            recorded = str(origin.get("checkpoint"))
            relative = not Path(recorded).is_absolute()
            shown = recorded if relative else path
            where = (f" (the run named in {sidecar_file_of(artifact)}"
                     + (", relative to that file's folder" if relative else "")
                     + "); pass --run RUN to check against the run it was exported from")
        raise RunError(f"{shown} does not exist: {WHAT_A_RUN_IS}{where}")
    expected = origin.get("checkpoint_sha256")
    if not isinstance(expected, str) or not expected:
        return  # an older sidecar, or none: nothing to compare with
    try:
        checkpoint = path if path.is_file() else find_checkpoint(path)
        digest = sha256_of(checkpoint)  # cached: open_run's hash reads none again
    except (RunError, OSError):
        return  # loading it reports the problem, in its own words
    if digest == expected.lower():
        return
    if not explicit or (named is not None and _same_file(checkpoint, named)):
        raise CheckUsageError(f"the checkpoint {checkpoint} changed since the export (SHA-256 "
                              "differs): export again, or pass --run with the checkpoint it was "
                              "exported from")
    which = f"--run {source}" + ("" if _same_file(checkpoint, path) else f" (its {checkpoint.name})")
    raise CheckUsageError(f"{which} is not the checkpoint {artifact} was exported from (SHA-256 "
                          f"differs from the one in {sidecar_file_of(artifact)}): pass --run "
                          "with that checkpoint, or export again from this one")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or a.samefile(b)
    except OSError:
        return False


__all__ = ["CheckPlan", "CheckUsageError", "SIGNATURES", "expand_artifacts", "given_path",
           "identify", "prepare_check", "suffix_kinds", "suffix_targets"]
