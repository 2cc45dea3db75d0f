"""What an artefact's file name may hold: the files travel to the machine of the concert
(Max and the RAVE VST run on Windows too), and to the shells that copy them there.

The rules are stated once, here: :func:`name_problem` says why a name breaks one (what
``rave-deploy export --name`` refuses), :func:`plain_file_name` repairs a name that does
(the default name, taken from the run's folder), and whatever it returns passes
:func:`name_problem`."""
from __future__ import annotations

import unicodedata
from typing import Optional

from rave_core.text import printable

#: characters Windows refuses in a file name
WINDOWS_RESERVED = '<>:"|?*'
#: characters that make a name a path: it would be written into another folder
SEPARATORS = "/\\"
#: names Windows keeps for devices, whatever follows the first dot (``con.nn_tilde.ts``)
WINDOWS_DEVICES = frozenset(["con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                             *(f"lpt{i}" for i in range(1, 10))])
#: the bytes file systems hold in a file name
FILE_NAME_BYTES = 255
#: what writing a file adds to its name while it is written (rave_deploy.io's temporary
#: ``.<file name>.<pid>.<8 random characters>.partial``, for any 32-bit pid)
TEMPORARY_EXTRA_BYTES = len("." + "." + "4294967295" + "." + "abcdefgh" + ".partial")
#: longest name: room is left for a target's ``.<target><suffix>.json`` (its sidecar's
#: name; :data:`MAX_TARGET_SUFFIX_BYTES`) and :data:`TEMPORARY_EXTRA_BYTES`
MAX_NAME_BYTES = 200
#: longest ``.<target><suffix>.json`` a target may write after a name of
#: :data:`MAX_NAME_BYTES` bytes (26: today's longest is ``.onnx_streaming.onnx.json``,
#: 25); :func:`rave_deploy.targets.register` refuses a target with a longer one
MAX_TARGET_SUFFIX_BYTES = FILE_NAME_BYTES - MAX_NAME_BYTES - TEMPORARY_EXTRA_BYTES


def is_windows_device(name: str) -> bool:
    """Whether Windows reads ``name`` (and so every file named after it) as a device."""
    return name.split(".")[0].strip().lower() in WINDOWS_DEVICES


def is_control(c: str) -> bool:
    """Whether ``c`` is a control character (newline, tab, escape, NUL, DEL, ...)."""
    return unicodedata.category(c) == "Cc"


def is_undecodable(c: str) -> bool:
    """Whether ``c`` stands for a byte that is not UTF-8 (a name read from a Latin-1 file
    system holds ``'caf\\udce9'``): Windows and macOS take UTF-8 names only."""
    return unicodedata.category(c) == "Cs"


def name_bytes(name: str) -> int:
    """The bytes ``name`` takes on disk (a name that is not UTF-8 holds its bytes as lone
    surrogates, ``'caf\\udce9'``: each is one byte)."""
    return len(name.encode("utf-8", "surrogateescape"))


def name_problem(name: str, flag: str = "--name") -> Optional[str]:
    """Why ``name`` cannot be the name of an artefact's files, as the message refusing
    ``flag NAME`` (the first problem found), or None for a plain name."""
    example = f"e.g. {flag} my_model"
    if (not name.strip() or name.startswith(".") or "\0" in name
            or any(sep in name for sep in SEPARATORS)):
        return (f"{flag} {name!r}: give a plain file name (no folders, not starting with '.'), "
                f"{example}; --output sets the folder")
    if any(is_control(c) for c in name):
        return (f"{flag} {name!r}: control characters (newlines, tabs, ...) cannot be in a "
                f"file name hosts and scripts handle; give a plain name, {example}")
    if any(is_undecodable(c) for c in name):
        return (f"{flag} '{printable(name)}': not UTF-8 text, which Windows and macOS need "
                f"in a file name; give a plain name, {example}")
    if any(c in WINDOWS_RESERVED for c in name):
        # the files travel to the machine of the concert: Max and the VST run on Windows too
        return (f"{flag} {name!r}: {' '.join(WINDOWS_RESERVED)} cannot be in a file name on "
                f"Windows; give a plain name, {example}")
    if is_windows_device(name):
        return (f"{flag} {name!r}: Windows reads files named {name.split('.')[0]}.* as a "
                f"device, not a file; give another name, {example}")
    if name.startswith("-"):
        return (f"{flag} {name!r}: a file name starting with '-' reads as an option to the "
                f"commands given the file (rave-deploy check, cp); give a plain name, {example}")
    if name_bytes(name) > MAX_NAME_BYTES:
        # file systems hold 255 bytes a name; the target's suffix and the sidecar's follow
        return (f"{flag}: {name_bytes(name)} bytes, more than the {MAX_NAME_BYTES} that leave "
                "room for the target's suffix and the sidecar's (file names hold 255 bytes); "
                "give a shorter name")
    return None


def target_name_problem(target: str, suffix: str) -> Optional[str]:
    """Why a target named ``target`` writing ``suffix`` files cannot be registered (its
    sidecar's name ``<name>.<target><suffix>.json``, with a name of
    :data:`MAX_NAME_BYTES` bytes, would not fit in a file name while it is written), or
    None."""
    tail = f".{target}{suffix}.json"
    if name_bytes(tail) <= MAX_TARGET_SUFFIX_BYTES:
        return None
    return (f"target {target!r}: its sidecar's name ends in {tail!r}, {name_bytes(tail)} "
            f"bytes, more than the {MAX_TARGET_SUFFIX_BYTES} a --name of {MAX_NAME_BYTES} "
            f"bytes and a temporary's {TEMPORARY_EXTRA_BYTES} leave of a file name's "
            f"{FILE_NAME_BYTES}: give the target a shorter name (or lower "
            "rave_deploy.file_names.MAX_NAME_BYTES)")


def plain_file_name(text: str, fallback: str = "model") -> str:
    """``text`` made a name :func:`name_problem` accepts: separators, Windows' reserved
    characters, control characters, bytes that are not UTF-8 and spaces (which PureData's and Max's object boxes
    split arguments at, though ``--name`` may hold them) become ``_``, a leading ``.`` or
    ``-`` goes, a Windows device name gets a ``_``, and the name is cut to
    :data:`MAX_NAME_BYTES` bytes (at a character boundary); ``fallback`` if nothing is
    left."""
    name = "".join("_" if c in WINDOWS_RESERVED or c in SEPARATORS or is_control(c)
                   or is_undecodable(c) or c.isspace() else c for c in text.strip())
    name = name.lstrip(".-")
    if is_windows_device(name):
        first, dot, rest = name.partition(".")
        name = f"{first.strip()}_{dot}{rest}"
    name = name[:MAX_NAME_BYTES]   # a character takes one byte or more
    while name_bytes(name) > MAX_NAME_BYTES:
        name = name[:-1]
    return name or fallback
