"""What a model file is, told from its first bytes and, for a zip archive, its list of
entries, without loading it (and without torch): a training checkpoint (``torch.save``),
a TorchScript file (``torch.jit.save``), an HDF5 file.

Both ``torch.save`` (torch >= 1.6) and ``torch.jit.save`` write zip archives; a
TorchScript archive holds its code (``<name>/code/``) and constants (``constants.pkl``),
a checkpoint only its pickle (``<name>/data.pkl``) and tensors. Given the one for the
other, ``torch.load`` warns and then calls the file corrupted, and ``rave-deploy check``
would have told the user to rename a checkpoint to ``.ts``.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import BinaryIO, List, Optional, Union

#: First bytes of a zip archive (its first local file header): what ``torch.save``
#: (torch >= 1.6) and ``torch.jit.save`` write.
ZIP_SIGNATURE = b"PK\x03\x04"
#: First bytes of an HDF5 file (Minifusion's model file).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: First byte of a pickle of protocol 2 or more (``torch.save`` before torch 1.6).
PICKLE_OPCODE = b"\x80"
#: What a RUN argument names: the end of every message refusing one that does not exist.
WHAT_A_RUN_IS = "give a run directory (with config.gin) or a .ckpt file"


def first_bytes(path: Path, n: int = 8) -> bytes:
    """The first ``n`` bytes of the file ``path`` (``b""`` where it cannot be read: the
    reader that opens it says why)."""
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def zip_entries(source: Union[Path, BinaryIO]) -> Optional[List[str]]:
    """The entry names of the zip archive ``source`` (a path or a binary file), or None
    where it is not one that can be read."""
    try:
        with zipfile.ZipFile(source) as archive:
            return archive.namelist()
    except (OSError, EOFError, ValueError, NotImplementedError, zipfile.BadZipFile,
            zipfile.LargeZipFile):
        return None


def _is_torchscript_entries(names: List[str]) -> bool:
    return any((len(parts) > 2 and parts[1] == "code") or name.endswith("/constants.pkl")
               for name, parts in ((n, n.split("/")) for n in names))


def is_torchscript_archive(source: Union[Path, BinaryIO]) -> bool:
    """Whether ``source`` (a path or a binary file) is a TorchScript archive."""
    names = zip_entries(source)
    return bool(names) and _is_torchscript_entries(names)


def is_training_checkpoint(path: Path) -> bool:
    """Whether the file ``path`` is a ``torch.save`` file: a zip holding ``data.pkl`` and
    no TorchScript code, or (torch before 1.6) a pickle named ``.ckpt``, ``.pt`` or
    ``.pth``."""
    head = first_bytes(path, 4)
    if head[:1] == PICKLE_OPCODE:
        return Path(path).suffix.lower() in (".ckpt", ".pt", ".pth")
    if not head.startswith(ZIP_SIGNATURE):
        return False
    names = zip_entries(path)
    return (bool(names) and not _is_torchscript_entries(names)
            and any(n == "data.pkl" or n.endswith("/data.pkl") for n in names))


def not_torchscript(path: Path, target: str) -> Optional[str]:
    """Why ``path`` is not a TorchScript file a host can load, told from its first bytes
    (without torch), or None when it is one: torch's own error for the others is a
    traceback about a "zip archive" that names none of them. ``target``: the export to ask
    for instead (``.TARGET.ts``, ``rave-deploy export RUN -t TARGET``); the host scripts
    (targets/*/run_in_*.py) call this before loading a file."""
    give = f"give the .{target}.ts export (rave-deploy export RUN -t {target})"
    if path.is_dir():
        what = ("an anira export (a folder of ONNX graphs)" if any(path.glob("*.onnx"))
                else "a folder")
        return f"{path} is {what}, not a TorchScript file: {give}"
    if not path.is_file():
        return f"{path}: no such file; {give}"
    head = first_bytes(path)
    if head.startswith(ZIP_SIGNATURE) and is_torchscript_archive(path):
        return None
    if is_training_checkpoint(path):
        return (f"{path} is a training checkpoint, not an export: export it first "
                f"(rave-deploy export {path} -t {target})")
    if head.startswith(HDF5_SIGNATURE):
        what = "an HDF5 file (Minifusion's model file)"
    elif head.startswith(ZIP_SIGNATURE):
        what = "a zip archive that holds no TorchScript code"
    elif path.suffix.lower() == ".onnx":
        what = "an ONNX graph"
    elif not head:
        what = "empty" if path.stat().st_size == 0 else "unreadable"
    else:
        what = "not a TorchScript file (not a zip archive)"
    return f"{path} is {what}: {give}"
