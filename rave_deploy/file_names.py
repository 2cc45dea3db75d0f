"""What an artefact's file name may hold: the files travel to the machine of the concert
(Max and the RAVE VST run on Windows too), and to the shells that copy them there."""
from __future__ import annotations

import unicodedata

#: characters Windows refuses in a file name
WINDOWS_RESERVED = '<>:"|?*'
#: names Windows keeps for devices, whatever follows the first dot (``con.nn_tilde.ts``)
WINDOWS_DEVICES = frozenset(["con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                             *(f"lpt{i}" for i in range(1, 10))])
#: longest name: with ".onnx_streaming.onnx.json" and a temporary suffix, under the 255
#: bytes file systems hold
MAX_NAME_BYTES = 200


def is_windows_device(name: str) -> bool:
    """Whether Windows reads ``name`` (and so every file named after it) as a device."""
    return name.split(".")[0].strip().lower() in WINDOWS_DEVICES


def plain_file_name(text: str, fallback: str = "model") -> str:
    """``text`` made a name every host's machine takes: reserved and control characters
    and spaces (which PureData's and Max's object boxes split arguments at) become ``_``,
    a leading ``.`` or ``-`` goes, a Windows device name gets a ``_``, and the name is cut
    to :data:`MAX_NAME_BYTES` bytes (at a character boundary)."""
    name = "".join("_" if c in WINDOWS_RESERVED or c in "/\\" or c.isspace()
                   or unicodedata.category(c) == "Cc" else c for c in text.strip())
    name = name.lstrip(".-")
    if is_windows_device(name):
        first, dot, rest = name.partition(".")
        name = f"{first.strip()}_{dot}{rest}"
    name = name.encode()[:MAX_NAME_BYTES].decode(errors="ignore")
    return name or fallback
