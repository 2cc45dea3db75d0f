"""One-line wording of file-system errors, shared by the training and export tools.

Write-side wording: each reason says what to do when a file or folder of ours could not be
written (a full disk, a read-only folder). Read-side failures (an audio file or checkpoint
that cannot be opened) are worded where they are read, since the fix there is
"make it readable", not "choose another folder".
"""
from __future__ import annotations

import errno
from typing import Optional

_OS_REASONS = {
    errno.ENOSPC: "no space left on device: free some space or choose another folder",
    errno.EDQUOT: "disk quota exceeded: free some space or choose another folder",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "permission denied: choose a folder you can write to",
    errno.EROFS: "read-only file system: choose a folder you can write to",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
    errno.EISDIR: "it is a folder, not a file: choose another path",
    errno.ENOENT: "no such file or folder, and none can be created there: choose another path",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno.EIO: "input/output error: the disk or network share failed",
    errno.EFBIG: "file too large for this file system (or this process's file-size limit): "
                 "choose another folder",
}


def describe_os_error(err: OSError, path: Optional[object] = None) -> str:
    """One line for a file-system error: the path and what to do, no ``[Errno n]`` noise.

    ``path`` replaces the error's own file name (``""`` leaves the path out)."""
    reason = (_OS_REASONS.get(err.errno or -1) or err.strerror or str(err).strip()
              or type(err).__name__)
    filename = err.filename if path is None else (str(path) or None)
    return f"{filename}: {reason}" if filename else reason


def os_error_in(err: Optional[BaseException]) -> Optional[OSError]:
    """The first ``OSError`` in ``err``'s chain (itself, its cause or context), or None:
    a library that wraps a failed write (torch.save, the ONNX exporter) hides a full disk
    in its own exception type."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
