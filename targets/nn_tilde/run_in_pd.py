"""Play an exported file through nn~ in a real PureData, without a sound card, and compare
what Pd recorded with rave-deploy's emulation of nn~ (the one `rave-deploy check` uses).

    python targets/nn_tilde/run_in_pd.py exports/my_brave.nn_tilde.ts \
        --nn-tilde ~/Documents/Pd/externals/nn_tilde --block 128

Pd runs in batch mode (``pd -nogui -nosound -batch``; tested with Pd 0.53.1): a generated
patch reads a test signal into an array, plays it through ``[nn~ FILE forward N]`` (with
``bufsize N`` sent on load, as ``example.pd`` does, and ``set deterministic 1``) and records
the output with ``[tabwrite~]`` (which stores values under 2**-63 as 0: so does the
comparison). The same file is then run through
:class:`rave_deploy.nn_tilde_emulation.NnTildeHost` in this process, and the two outputs
are compared sample by sample over the recorded span. Exit code 0 when they agree (to
``--tolerance`` of the peak; the default, 0, asks for identical samples) and the output
is not silent, 1 otherwise, 2 for bad arguments or when Pd cannot run.

``--methods encode-decode`` plays the signal through ``[nn~ FILE encode N]`` whose latent
outlets feed ``[nn~ FILE decode N]`` (each object loads its own copy of the file, as in a
patch that plays with the latent between the two) and compares with the emulation of the
same two objects.

``--nn-tilde`` is the folder holding ``nn~.pd_linux`` (``.pd_darwin``, ``.dll``), as nn~'s
release unpacks it. Files with several channels (a model trained on a stereo dataset)
play one array per channel (needs as many outputs as inputs).
"""
from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rave_core.file_kinds import not_torchscript  # noqa: E402
from rave_deploy.check.recording import RecordingComparison, compare_recording  # noqa: E402
from rave_deploy.host_rates import host_rate, other_rate_warning  # noqa: E402
from rave_deploy.nn_tilde_emulation import (apply_attributes, attribute_value,  # noqa: E402
                                            nn_tilde_buffer)

#: Pd's signal vector: the recording stops on a vector boundary.
PD_VECTOR = 64

#: What a run plays: one ``forward`` object, or an ``encode`` object into a ``decode`` one.
METHODS = ("forward", "encode-decode")


def as_tabwrite_stores(signal: np.ndarray) -> np.ndarray:
    """``signal`` (float32) as Pd's ``[tabwrite~]`` stores it: values whose exponent is
    tiny or huge (Pd's ``PD_BIGORSMALL``: below 2**-63, about 1.1e-19, or at least 2**65,
    and inf or NaN) become 0."""
    bits = np.ascontiguousarray(signal, np.float32).view(np.uint32) & 0x60000000
    return np.where((bits == 0) | (bits == 0x60000000), np.float32(0), signal)


def _set_messages(settings: Sequence[Tuple[str, str]]) -> str:
    """One Pd message box sending ``set deterministic 1``, then each ``set NAME VALUE``
    (a comma separates messages in a box; ``\\,`` in the file)."""
    messages = ["set deterministic 1"] + [f"set {name} {value}" for name, value in settings]
    return " \\, ".join(messages)


def _arrays(name: str, channels: int) -> List[str]:
    """Pd arrays holding a file's channels: ``in``, ``in1``, ``in2``..."""
    return [name] + [f"{name}{k}" for k in range(1, channels)]


def batch_patch(model: str, block: int, n_samples: int, record_ms: float,
                methods: str = "forward", latent_size: int = 0, channels: int = 1,
                settings: Sequence[Tuple[str, str]] = ()) -> str:
    """A Pd patch that plays array ``in`` (read from ``in.wav``) through
    ``[nn~ model forward block]`` into array ``out`` and writes ``out.wav`` after
    ``record_ms`` of logical time, then quits. On load, in this order: read the signal,
    ``set deterministic 1``, ``bufsize block``, DSP on, start playing and recording.

    ``methods="encode-decode"``: ``[nn~ model encode block]`` instead, its
    ``latent_size`` outlets joined to the inlets of a ``[nn~ model decode block]`` that
    feeds ``out``; both objects get the two set-up messages.

    ``channels`` > 1: one array, ``[tabplay~]`` and ``[tabwrite~]`` per channel (``in``,
    ``in1``...; ``out``, ``out1``...), channel k into nn~'s inlet k and from its outlet k;
    ``in.wav`` and ``out.wav`` hold every channel.

    ``settings``: more ``set NAME VALUE`` messages, sent after ``set deterministic 1``
    (e.g. ``("learn_source", "1")`` for a v3 file's style transfer).

    Once ``out.wav`` is written, every nn~ gets ``reload`` before Pd quits: nn~ reloads
    under the lock its compute thread holds while it runs the model, so Pd does not exit
    with a model call in flight. Exiting then tears libtorch down under that call, and
    nn~ prints errors (``Invalid (backend, op) pair``, ``Could not find schema for
    aten::cat.out``) for a call whose output was never going to be recorded."""
    if methods not in METHODS:
        raise ValueError(f"methods {methods!r}: one of {', '.join(METHODS)}")
    if methods == "encode-decode" and latent_size < 1:
        raise ValueError("encode-decode needs the latent size (the encoder's outlets)")
    if channels < 1:
        raise ValueError(f"channels {channels}: at least 1")
    first = "forward" if methods == "forward" else "encode"
    ins, outs = _arrays("in", channels), _arrays("out", channels)
    lines = [
        "#N canvas 0 0 640 480 12;",
        "#X obj 20 20 loadbang;",                                   # 0
        "#X obj 20 50 t b b b b b;",                                # 1
        f"#X msg 300 80 read -resize in.wav {' '.join(ins)};",      # 2
        "#X obj 300 110 soundfiler;",                               # 3
        "#X obj 20 240 tabplay~ in;",                               # 4
        f"#X obj 20 280 nn~ {model} {first} {block};",              # 5
        "#X obj 20 320 tabwrite~ out;",                             # 6
        f"#X msg 160 80 bufsize {block};",                          # 7
        f"#X msg 160 110 {_set_messages(settings)};",               # 8
        f"#X obj 20 400 delay {record_ms:g};",                      # 9
        f"#X msg 20 430 write -wave -bytes 4 out.wav {' '.join(outs)};",  # 10
        "#X obj 20 460 soundfiler;",                                # 11
        "#X msg 250 520 \\; pd quit;",                              # 12
        "#X obj 20 370 t b b;",                                     # 13
        "#X msg 400 20 \\; pd dsp 1;",                              # 14
        "#X obj 400 200 array define in;",                          # 15
        f"#X obj 400 230 array define out {n_samples};",            # 16
    ]
    # a trigger fires right to left: read, deterministic, bufsize, dsp, then play
    edges = [(0, 0, 1, 0), (1, 4, 2, 0), (2, 0, 3, 0), (1, 3, 8, 0), (1, 2, 7, 0),
             (1, 1, 14, 0), (1, 0, 13, 0), (7, 0, 5, 0), (8, 0, 5, 0), (13, 1, 4, 0),
             (13, 1, 6, 0), (4, 0, 5, 0), (13, 0, 9, 0), (9, 0, 10, 0),
             (10, 0, 11, 0)]
    nn_objects, plays, writes = [5], [4], [6]
    for k in range(1, channels):  # the other channels' arrays, players and recorders
        x = 400 + 80 * k
        lines += [f"#X obj {x} 260 array define {ins[k]};",
                  f"#X obj {x} 290 array define {outs[k]} {n_samples};",
                  f"#X obj {x} 240 tabplay~ {ins[k]};",
                  f"#X obj {x} 320 tabwrite~ {outs[k]};"]
        play, write = len(lines) - 3, len(lines) - 2
        plays.append(play)
        writes.append(write)
        edges += [(13, 1, play, 0), (13, 1, write, 0), (play, 0, 5, k)]
    if methods == "forward":
        last = 5
    else:
        lines.append(f"#X obj 20 340 nn~ {model} decode {block};")
        last = len(lines) - 2
        nn_objects.append(last)
        edges += [(5, k, last, k) for k in range(latent_size)]
        edges += [(7, 0, last, 0), (8, 0, last, 0)]
    edges += [(last, k, writes[k], 0) for k in range(channels)]
    # written: reload every nn~ (right outlet first), then quit
    finish, reload = len(lines) - 1, len(lines)
    lines += ["#X obj 250 460 t b b;", "#X msg 330 490 reload;"]
    edges += [(11, 0, finish, 0), (finish, 1, reload, 0), (finish, 0, 12, 0)]
    edges += [(reload, 0, n, 0) for n in nn_objects]
    lines += [f"#X connect {a} {o} {b} {i};" for a, o, b, i in edges]
    return "\n".join(lines) + "\n"


def record_in_pd(model: Path, nn_tilde: Path, signal: np.ndarray, sr: int, block: int,
                 pd: str = "pd", timeout: float = 600.0, methods: str = "forward",
                 latent_size: int = 0, settings: Sequence[Tuple[str, str]] = ()
                 ) -> Tuple[np.ndarray, str]:
    """Play ``signal`` ``(T,)`` or ``(channels, T)`` through nn~ in a batch-mode Pd (the
    patch of :func:`batch_patch`); returns what ``[tabwrite~]`` recorded, ``(T',)`` or
    ``(channels, T')`` with ``T'`` the whole vectors Pd computed before writing (the rest
    of the array stays zero, and is cut), and Pd's log. Raises ``RuntimeError`` when Pd
    wrote nothing or could not create ``[nn~]``."""
    import soundfile as sf

    channels, n = (1, len(signal)) if signal.ndim == 1 else signal.shape
    record_ms = 1000.0 * n / sr
    with tempfile.TemporaryDirectory(prefix="rave_pd_") as tmp:
        work = Path(tmp)
        shutil.copyfile(model, work / "model.ts")
        sf.write(work / "in.wav", signal.T.astype(np.float32), sr, subtype="FLOAT")
        (work / "run.pd").write_text(batch_patch("model.ts", block, n, record_ms,
                                                 methods, latent_size, channels,
                                                 settings))
        cmd = [pd, "-nogui", "-nosound", "-batch", "-r", str(sr), "-stderr",
               "-path", str(nn_tilde), "-open", "run.pd"]
        done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=timeout)
        log = (done.stdout + done.stderr).strip()
        if not (work / "out.wav").exists():
            raise RuntimeError(f"Pd wrote no recording (exit code {done.returncode}); "
                               f"its log:\n{log}")
        if "couldn't create" in log:
            raise RuntimeError("Pd could not create an object (is --nn-tilde an nn~ built for "
                               f"this Pd and its libtorch found?); its log:\n{log}")
        recorded, _ = sf.read(work / "out.wav", dtype="float32", always_2d=True)
    # the delay fires on the vector where record_ms falls: that vector is not recorded
    recorded = recorded[:int(record_ms * sr / 1000.0) // PD_VECTOR * PD_VECTOR].T
    return (recorded[0] if signal.ndim == 1 else recorded), log


def compare_with_emulation(module, block: int, signal: np.ndarray, recorded: np.ndarray,
                           decoder=None, settings: Sequence[Tuple[str, str]] = ()
                           ) -> RecordingComparison:
    """Run ``signal`` through :class:`NnTildeHost` (``forward``, deterministic, buffer
    ``block``, from zero states) and compare with ``recorded`` over its length (both
    ``(T,)``, or both ``(channels, T)``).

    ``decoder``: a second copy of the file (Pd loads one per ``[nn~]``) for encode-decode:
    ``module`` encodes, its latent signals go through ``decoder``'s ``decode``, and the
    latency is the sum of the two objects'.

    ``settings``: the ``set NAME VALUE`` messages Pd sent, applied to each copy through
    its setter, the value read as the attribute's type (``NAME_params``)."""
    import torch

    from rave_deploy.nn_tilde_emulation import NnTildeHost

    copies = [module] if decoder is None else [module, decoder]
    for copy in copies:
        if hasattr(copy, "set_deterministic"):
            copy.set_deterministic(True)
        apply_attributes(copy, settings)
        if hasattr(copy, "reset"):  # Pd loads the file afresh: start from silence too
            copy.reset()
    hosts = ([NnTildeHost(module, "forward", block)] if decoder is None else
             [NnTildeHost(module, "encode", block), NnTildeHost(decoder, "decode", block)])
    signal = np.atleast_2d(signal)
    length = recorded.shape[-1]
    n = -(-length // PD_VECTOR) * PD_VECTOR
    y = np.zeros((1, signal.shape[0], n), np.float32)
    y[0, :, :min(n, signal.shape[-1])] = signal[:, :n]
    with torch.inference_mode():
        for host in hosts:
            y = host.run(y)
    emulated = as_tabwrite_stores(y[0, :, :length])
    emulated = emulated.reshape(recorded.shape)
    return compare_recording(recorded, emulated, "Pd", "emulation",
                             sum(h.latency for h in hosts), "nn~")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="an exported nn_tilde .ts file")
    p.add_argument("--nn-tilde", type=Path, required=True,
                   help="folder holding nn~'s Pd external (nn~.pd_linux / .pd_darwin / .dll)")
    p.add_argument("--block", type=int, default=2048, help="nn~'s buffer size N (default 2048)")
    p.add_argument("--seconds", type=float, default=3.0, help="test signal length (default 3)")
    p.add_argument("--sr", type=int, default=None,
                   help="Pd's sample rate (default: the sidecar's sample_rate, else 44100)")
    p.add_argument("--pd", default="pd", help="the Pd executable (default: pd on PATH)")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="allowed max |Pd - emulation| as a share of the peak (default 0)")
    p.add_argument("--methods", choices=METHODS, default="forward",
                   help="forward: one [nn~ FILE forward N]; encode-decode: [nn~ FILE encode "
                        "N] into [nn~ FILE decode N] (default forward)")
    p.add_argument("--set", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="also send `set NAME VALUE` to nn~ on load (repeatable), e.g. "
                        "--set learn_source 1 for a v3 file's style transfer")
    args = p.parse_args(argv)

    problem = not_torchscript(args.model, "nn_tilde")
    if problem:
        p.error(problem)
    if not args.nn_tilde.is_dir() or not any(args.nn_tilde.glob("nn~.*")):
        p.error(f"{args.nn_tilde}: no nn~ external there (expected nn~.pd_linux, "
                "nn~.pd_darwin or nn~.dll): pass the folder nn~'s release unpacks to")
    if shutil.which(args.pd) is None:
        p.error(f"{args.pd}: Pd not found (install Pd, e.g. apt install "
                "puredata-core, or pass --pd /path/to/pd)")
    if args.block <= 0 or args.block & (args.block - 1):
        p.error(f"--block {args.block}: nn~'s buffer size is a power of two")
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        p.error(f"--seconds {args.seconds:g}: the test signal's length is a number of "
                "seconds above 0 (default 3)")
    try:
        sr, file_rate, model_rate = host_rate(args.model, args.sr)
    except ValueError as err:
        p.error(str(err))

    import torch

    from rave_deploy.check.signals import musical_signal
    try:
        module = torch.jit.load(str(args.model))
    except RuntimeError as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        p.error(f"{args.model}: torch cannot load this TorchScript file ({reason}): "
                "export it again (rave-deploy export RUN -t nn_tilde)")
    module.eval()
    if not all(hasattr(module, a) for a in ("forward_params", "get_methods")):
        p.error(f"{args.model.name} has no forward_params: not a file nn~ can play "
                "(rave-deploy check says what it lacks; export with -t nn_tilde)")
    encode_decode = args.methods == "encode-decode"
    if encode_decode and not (hasattr(module, "encode_params")
                              and hasattr(module, "decode_params")):
        p.error(f"{args.model.name} has no encode and decode methods: export it with "
                "rave-deploy export --target nn_tilde, or play --methods forward")
    if encode_decode:
        channels, out_channels = (int(module.encode_params[0]),
                                  int(module.decode_params[2]))
    else:
        channels, out_channels = (int(module.forward_params[0]),
                                  int(module.forward_params[2]))
    if channels != out_channels:
        p.error(f"{args.model.name} takes {channels} and gives {out_channels} channels; "
                "this script plays files with as many outputs as inputs (export with "
                "--channels left at the model's)")
    latent_size = int(module.encode_params[2]) if encode_decode else 0
    settings = [tuple(pair) for pair in args.set]
    for name, value in settings:
        try:
            attribute_value(module, name, value)
        except ValueError as err:
            p.error(f"--set {name} {value}: {err}")
    buffer = nn_tilde_buffer(module, args.block)
    latency = (2 if encode_decode else 1) * (2 * buffer - PD_VECTOR)
    n = int(args.seconds * sr)
    if n // PD_VECTOR * PD_VECTOR <= latency:
        shortest = math.ceil(100 * (latency + 2 * buffer) / sr) / 100
        p.error(f"--seconds {args.seconds:g}: {n} samples at {sr} Hz, no more than nn~'s "
                f"latency at N = {buffer} ({latency} samples): Pd would record none of the "
                f"model's output; give --seconds {shortest:g} or more")
    if buffer != args.block:
        print(f"note: --block {args.block} is below the model's largest ratio: nn~ raises "
              f"its buffer to N = {buffer} (and says so in Pd's log), as the emulation "
              "does", file=sys.stderr)
    warning = file_rate and other_rate_warning(args.model, sr, file_rate, model_rate, "nn~",
                                               "Pd", "nn_tilde", "the emulation")
    if warning:
        print(warning, file=sys.stderr)
    signal = musical_signal(sr, n, channels, seed=1)
    if channels == 1:
        signal = signal[0]
    try:
        recorded, log = record_in_pd(args.model, args.nn_tilde, signal, sr, args.block,
                                     pd=args.pd, methods=args.methods,
                                     latent_size=latent_size, settings=settings)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    decoder = torch.jit.load(str(args.model)).eval() if encode_decode else None
    result = compare_with_emulation(module, buffer, signal, recorded, decoder, settings)
    if not hasattr(module, "set_deterministic"):
        print("note: this file has no `deterministic` attribute: it draws noise, so Pd's "
              "output and the emulation's cannot agree exactly", file=sys.stderr)
    print("Pd's log:\n  " + "\n  ".join(log.splitlines()))
    extra = "".join(f", {name} {value}" for name, value in settings)
    asked = "" if buffer == args.block else f" (--block {args.block} raised)"
    print(f"{args.model.name} in Pd through nn~ ({args.methods}, N = {buffer}{asked}, "
          f"{sr} Hz, deterministic{extra}):")
    for line in result.lines():
        print("  " + line)
    ok = result.agrees(args.tolerance)
    print("PASS: Pd's output is the emulation's" if ok else
          "FAIL: nn~ played silence in Pd (its log above may say why)" if result.host_peak == 0
          else "FAIL: Pd's output differs from the emulation")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
