"""How text from outside the program (file names, a library's error messages) is shown in
the one-line messages of the training and export tools."""
from __future__ import annotations


def printable(text: str) -> str:
    """``text`` with the bytes of a name that is not UTF-8 (which Python holds as lone
    surrogates, ``'caf\\udce9'``) shown as ``\\xe9``, as Python writes them: a strict
    UTF-8 stream (stdout, an HTML file, a JSON parser) cannot take them raw."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def clipped(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, at the end of its last sentence that
    fits, else of its last word that fits (then with ``...``): a cut mid-word reads as a
    typo, or as the whole message."""
    if len(text) <= limit:
        return text
    head = text[:limit - 3]
    sentence = head.rfind(". ")
    if sentence > limit // 2:   # whole sentences that say most of it
        return head[:sentence + 1]
    word = head.rfind(" ")
    return (head[:word] if word > 0 else head).rstrip(" ,;:") + "..."


def listed(names, most: int = 5) -> str:
    """``a, b, c`` (and how many more, past ``most``): the names a message gives of what
    is in a folder, without flooding the line."""
    names = list(names)
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more
