"""What an artefact's file name may hold: the files travel to the machine of the concert
(Max and the RAVE VST run on Windows too), and to the shells that copy them there."""
from __future__ import annotations

import unicodedata

#: characters Windows refuses in a file name
WINDOWS_RESERVED = '<>:"|?*'
#: longest name: with ".onnx_streaming.onnx.json" and a temporary suffix, under the 255
#: bytes file systems hold
MAX_NAME_BYTES = 200


def plain_file_name(text: str, fallback: str = "model") -> str:
    """``text`` made a name every host's machine takes: reserved and control characters
    become ``_``, a leading ``.`` or ``-`` goes, and the name is cut to
    :data:`MAX_NAME_BYTES` bytes (at a character boundary)."""
    name = "".join("_" if c in WINDOWS_RESERVED or c in "/\\"
                   or unicodedata.category(c) == "Cc" else c for c in text)
    name = name.lstrip(".-").strip()
    name = name.encode()[:MAX_NAME_BYTES].decode(errors="ignore")
    return name or fallback
