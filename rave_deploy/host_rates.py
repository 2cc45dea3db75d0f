"""The sample rate an exported file runs at, for the host-side scripts
(``targets/*/run_in_*.py``): read from its sidecar without torch, and the warning for a
host run at another rate.

No host resamples: nn~ and the SuperCollider UGens feed the model whatever rate the
host runs at, so a file played at another rate hears its input too fast or too slow.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple, Union


def sidecar_rates(model: Path) -> Union[None, str, Tuple[int, int]]:
    """``(sample_rate, model_sample_rate)`` the sidecar of ``model`` records (the rate
    the file runs at, and the model's own: they differ in a file exported with --sr),
    None without a sidecar, or the line saying why it cannot be read."""
    sidecar = Path(str(model) + ".json")
    if not sidecar.is_file():
        return None
    try:
        data = json.loads(sidecar.read_text())
        rate = int(data["sample_rate"])
        own = int(data.get("model_sample_rate") or rate)
    except (OSError, ValueError, KeyError, TypeError, AttributeError,
            UnicodeDecodeError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return (f"{sidecar}: not a readable rave-deploy sidecar (sample_rate: {reason}); "
                "export again, or move it away and pass --sr")
    if rate <= 0 or own <= 0:
        return (f"{sidecar}: sample_rate {rate} is not a rate; export again, or move it "
                "away and pass --sr")
    return rate, own


def host_rate(model: Path, sr: Optional[int]) -> Tuple[int, Optional[int], Optional[int]]:
    """``(rate the host runs at, the file's rate, the model's own rate)`` for a host-side
    script given ``--sr sr`` (None: the sidecar's ``sample_rate``, else 44100); the last
    two None without a sidecar.

    Raises:
        ValueError: ``sr`` is not a rate, or the sidecar cannot be read (the message says
            what to do).
    """
    if sr is not None and sr <= 0:
        raise ValueError(f"--sr {sr}: a sample rate is a number of Hz above 0 (e.g. 44100)")
    rates = sidecar_rates(model)
    if isinstance(rates, str):
        raise ValueError(rates)
    file_rate, model_rate = rates or (None, None)
    return sr or file_rate or 44100, file_rate, model_rate


def other_rate_warning(model: Path, sr: int, file_rate: int, model_rate: int,
                       player: str, host: str, target: str,
                       compared_with: str) -> Optional[str]:
    """The warning for playing ``model`` (made for ``file_rate`` Hz) through ``player``
    (nn~, the RAVE UGen) in ``host`` (Pd, scsynth) at ``sr`` Hz, or None when the rates
    agree. ``compared_with``: what the script compares the host's output with (fed the
    same samples, so the comparison still holds)."""
    if sr == file_rate:
        return None
    speed = (f"{sr / file_rate:.3g} times too fast" if sr > file_rate
             else f"{file_rate / sr:.3g} times too slow")
    instead = (f", or export it for {sr} Hz (rave-deploy export RUN -t {target} --sr {sr})"
               if sr % model_rate == 0 else "")
    return (f"warning: --sr {sr}: {model.name} runs at {file_rate} Hz (its sidecar's "
            f"sample_rate) and {player} does not resample: in {host} at {sr} Hz the model "
            f"hears its input {speed}, and plays at the wrong pitch and timbre. The "
            f"comparison with {compared_with} (fed the same samples) holds all the same; "
            f"play it at {file_rate} Hz{instead}")
