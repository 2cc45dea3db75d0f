"""Play an exported file through the RAVE UGens or NN.ar in a real SuperCollider server,
without a sound card, and compare what scsynth wrote with what the UGen's code implies.

    python targets/supercollider/run_in_scsynth.py exports/my_brave.supercollider.ts \
        --ugens ~/.local/share/SuperCollider/Extensions/RAVE --server-block 64

sclang (headless) writes a non-realtime score with one synth, ``Out.ar(0, RAVE.new(FILE,
SoundIn.ar(0), 0, 1))``; ``scsynth -N`` renders it over a test signal (tested with
SuperCollider 3.13.0 and rave-supercollider daf2695). The RAVE UGen gathers
``decode_params[1]`` samples (the model's ratio), calls ``forward`` on them, and plays the
result from the server block in which the gathering ended: a server block of ``z`` samples
smaller than the ratio ``R`` delays the output by ``R - z`` samples (the sidecar's
``host_latency_samples.rave_ugens``), a larger one none. The same file is then run here
that way, one ``(1, 1, R)`` call after another from zero states, under the legacy graph
executor the UGens switch scsynth to, and the two outputs are compared sample by sample.
Exit code 0 when they agree (to ``--tolerance`` of the peak; the default, 0, asks for
identical samples) and the output is not silent, 1 otherwise (the UGen could not load the
file, or played something else), 2 for bad arguments or when SuperCollider cannot run.

With ``--ugen encoder-decoder`` the synth is ``RAVEDecoder.new(FILE, RAVEEncoder.new(FILE,
L, SoundIn.ar(0)))`` instead (``L`` the file's latent size; each UGen loads its own copy).
RAVEEncoder calls ``encode`` on every ``R`` gathered samples and holds the latent at
control rate (zeros before the first); RAVEDecoder reads its control inputs once per
server block and calls ``decode`` on one frame whenever it starts a new ``R``-sample
output block. At a server block ``z < R`` the decoder therefore decodes, for output block
``k``, the latent of input block ``k - 1`` (zeros for ``k = 0``); at ``z = R``, that of
block ``k`` (the encoder runs first in the same server block). That is what is computed
here and compared, for ``z <= R``.

With ``--ugen nn-ar`` the synth is NN.ar's ``NN(key, \\forward).ar(SoundIn.ar(0), B)``
(elgiano/nn.ar, the nn~ port for SuperCollider; ``B`` is ``--buffer-size``, by default
the model's largest ratio, as the UGen's own default). In NRT NN.ar needs the model's
description before the score is written, so the server first runs a score that only
loads the file and writes it (``/nn_load`` with an info file). Without a real-time
server, NN.ar runs the model in the audio thread: it gathers ``B`` samples, calls
``forward`` on them and plays the result from the server block in which the gathering
ended, a delay of ``B - z`` samples (server blocks above ``B`` are refused: NN.ar
disables itself). That is what is computed here, under the default graph executor
(NN.ar does not switch it). NN.ar also plays files with several channels (a model
trained on a stereo dataset): one input and one output bus per channel. ``--set NAME VALUE``
puts the pair in NN.ar's ``attributes:`` argument (set before its first call; a v3
file's ``learn_source``, for one) and on the copies the expected output is computed with.

The UGen cannot switch a file's ``deterministic`` attribute, so the server plays a copy of
the file saved with it on (same weights, same code): a file without the switch (acids-rave's
exports) draws noise, and cannot agree exactly. ``--ugens`` is the folder the plugin's
build installs: ``RAVE_scsynth.so`` (``.scx`` on macOS) and ``Classes/RAVE.sc``; for NN.ar,
``NNModel_scsynth.so`` (``.scx``) and ``Classes/NN.sc`` (with its other class files).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rave_core.file_kinds import not_torchscript  # noqa: E402
from rave_deploy.check.recording import RecordingComparison, compare_recording  # noqa: E402
from rave_deploy.host_rates import host_rate, other_rate_warning  # noqa: E402
from rave_deploy.nn_tilde_emulation import apply_attributes, attribute_value  # noqa: E402

#: Where Debian's and SuperCollider's Linux packages put the core UGens (In, Out).
DEFAULT_SC_PLUGINS = "/usr/lib/SuperCollider/plugins"
#: What scsynth prints when the RAVE UGen failed to load the file: it still renders,
#: and the input bus then shows through on the output.
LOAD_ERRORS = ("error loading the model", "model load failed")


@dataclass(frozen=True)
class UGenFamily:
    """A SuperCollider plugin that plays TorchScript files: the files its build installs
    (the binary at the top of its folder, the class files in ``Classes/``), what scsynth
    prints once it has loaded a file, and what when it could not."""

    name: str
    binaries: Tuple[str, ...]
    class_file: str
    loaded: str
    load_errors: Tuple[str, ...]


RAVE_UGENS = UGenFamily("the RAVE UGen", ("RAVE*.so", "RAVE*.scx", "RAVE*.dll"), "RAVE.sc",
                        "block size:", LOAD_ERRORS)
NN_AR = UGenFamily("NN.ar", ("NNModel*.so", "NNModel*.scx", "NNModel*.dll"), "NN.sc",
                   "NNModelDesc: loaded", ("can't load model",))


def _sclang_string(text: str) -> str:
    # sclang's string literals escape quotes and backslashes as JSON does, and have no \u
    return json.dumps(text, ensure_ascii=False)


#: The synths ``--ugen`` chooses from: what plays input bus 0 into output bus 0.
UGENS = ("forward", "encoder-decoder", "nn-ar", "nn-ar-encode-decode")


def family_of(ugen: str) -> UGenFamily:
    """The plugin a ``--ugen`` choice runs in."""
    return NN_AR if ugen.startswith("nn-ar") else RAVE_UGENS


def _sound_in(channels: int) -> str:
    return "SoundIn.ar(0)" if channels == 1 else f"SoundIn.ar((0..{channels - 1}))"


def _nn_ar_synth(ugen: str, buffer_size: int, channels: int = 1,
                 settings: Sequence[Tuple[str, str]] = ()) -> str:
    """``settings``: ``(NAME, VALUE)`` pairs every NN.ar UGen of the synth passes in its
    ``attributes:`` argument (numbers; NN.ar sets them before its first call)."""
    b, inputs = int(buffer_size), _sound_in(channels)
    attrs = ""
    if settings:
        pairs = ", ".join(f"\\{name}, {float(value):g}" for name, value in settings)
        attrs = f", attributes: [{pairs}]"
    if ugen == "nn-ar":
        return f"NN(\\raveDeploy, \\forward).ar({inputs}, {b}{attrs})"
    if ugen == "nn-ar-encode-decode":
        return (f"NN(\\raveDeploy, \\decode).ar(NN(\\raveDeploy, \\encode)"
                f".ar({inputs}, {b}{attrs}), {b}{attrs})")
    raise ValueError(f"unknown NN.ar synth {ugen!r}: nn-ar or nn-ar-encode-decode")


def _synth(ugen: str, model: str, latent_size: int) -> str:
    m = _sclang_string(model)
    if ugen == "forward":
        return f"RAVE.new({m}, SoundIn.ar(0), 0, 1)"
    if ugen == "encoder-decoder":
        return f"RAVEDecoder.new({m}, RAVEEncoder.new({m}, {int(latent_size)}, SoundIn.ar(0)))"
    raise ValueError(f"unknown ugen {ugen!r}: one of {', '.join(UGENS)}")


def score_script(model: str, score: str, seconds: float, ugen: str = "forward",
                 latent_size: int = 0) -> str:
    """An sclang program that writes the NRT score ``score`` (one synth playing input bus
    0 through the RAVE UGens of ``ugen`` (see :data:`UGENS`) into output bus 0 for
    ``seconds``) and exits. ``latent_size``: the file's, for RAVEEncoder's outputs."""
    return "\n".join([
        "(",
        "var def = SynthDef(\\raveDeployCheck, {",
        f"    Out.ar(0, {_synth(ugen, model, latent_size)});",
        "});",
        "Score([",
        "    [0.0, ['/d_recv', def.asBytes]],",
        "    [0.0, ['/s_new', \\raveDeployCheck, 1000, 0, 0]],",
        f"    [{seconds:.6f}, ['/c_set', 0, 0]]",   # the score ends at its last command
        f"]).writeOSCFile({_sclang_string(score)});",
        "\"score written\".postln;",
        "0.exit;",
        ")",
        "",
    ])


def _find(ugens: Path, patterns: Tuple[str, ...]) -> Optional[Path]:
    """The first file matching ``patterns`` in ``ugens`` or one folder below (the
    plugin's install layout: the binary at the top, the class file in ``Classes/``)."""
    for pattern in patterns:
        found = sorted(ugens.glob(pattern)) + sorted(ugens.glob(f"*/{pattern}"))
        if found:
            return found[0]
    return None


def _plugin_binary(ugens: Path, family: UGenFamily = RAVE_UGENS) -> Optional[Path]:
    return _find(ugens, family.binaries)


def nn_ar_info_script(model: str, info: str, score: str) -> str:
    """An sclang program that writes an NRT score which only loads ``model`` into NN.ar
    (model 0), its description written to ``info`` by the server, and exits."""
    return "\n".join([
        "(",
        "Score([",
        f"    [0.0, NN.loadMsg(0, {_sclang_string(model)}, {_sclang_string(info)})],",
        "    [0.01, ['/c_set', 0, 0]]",
        f"]).writeOSCFile({_sclang_string(score)});",
        "\"score written\".postln;",
        "0.exit;",
        ")",
        "",
    ])


def nn_ar_score_script(model: str, info: str, score: str, seconds: float,
                       buffer_size: int, ugen: str = "nn-ar", channels: int = 1,
                       settings: Sequence[Tuple[str, str]] = ()) -> str:
    """An sclang program that writes the NRT score ``score``: NN.ar loads ``model`` (as
    model 0, described by ``info``, from :func:`nn_ar_info_script`'s run) and one synth
    plays input bus 0 (buses 0 to ``channels - 1``) through ``forward`` (``ugen``
    "nn-ar"), or through ``encode`` into ``decode`` ("nn-ar-encode-decode", each UGen its
    own instance of the model), with ``buffer_size`` into output bus 0 (and up) for
    ``seconds``; each UGen sets the ``settings`` attributes (``(NAME, VALUE)`` pairs).

    NN.ar's own ``NN.nrt`` / ``NN.load`` fail in NRT (nn.ar eb36a3a: the load message asks
    a nil info path for ``standardizePath``), so this does what they mean to do: read the
    description, register the model, and put the load message in the score."""
    m, i = _sclang_string(model), _sclang_string(info)
    return "\n".join([
        "(",
        "Environment[\\nn_nrt -> NNNRTEnv()].use {",
        "    var def;",
        f"    NN.prReadInfoFile({i});",
        f"    NN.prPut(\\raveDeploy, NNModel.fromInfo(NN.prGetCachedInfo({m}), 0));",
        "    def = SynthDef(\\raveDeployCheck, {",
        f"        Out.ar(0, {_nn_ar_synth(ugen, buffer_size, channels, settings)});",
        "    });",
        "    Score([",
        f"        [0.0, NN.loadMsg(0, {m}, {i})],",
        "        [0.0, ['/d_recv', def.asBytes]],",
        "        [0.0, ['/s_new', \\raveDeployCheck, 1000, 0, 0]],",
        f"        [{seconds:.6f}, ['/c_set', 0, 0]]",
        f"    ]).writeOSCFile({_sclang_string(score)});",
        "    \"score written\".postln;",
        "};",
        "0.exit;",
        ")",
        "",
    ])


def render_in_scsynth(model: Path, ugens: Path, signal: np.ndarray, sr: int,
                      server_block: int, sclang: str = "sclang", scsynth: str = "scsynth",
                      sc_plugins: str = DEFAULT_SC_PLUGINS, timeout: float = 600.0,
                      ugen: str = "forward", latent_size: int = 0, buffer_size: int = -1,
                      settings: Sequence[Tuple[str, str]] = ()
                      ) -> Tuple[Optional[np.ndarray], str]:
    """Render ``signal`` ``(T,)`` through the synth of ``ugen`` (:data:`UGENS`) in
    ``scsynth -N``; returns the output (``None`` when the UGen could not load ``model``) and
    the log of every program run. ``buffer_size``: NN.ar's (``ugen="nn-ar"``). NN.ar also
    plays ``(channels, T)`` signals, one input and output bus per channel, and then returns
    ``(channels, T)``. ``settings``: attributes NN.ar's UGens set (``(NAME, VALUE)``
    pairs). Raises ``RuntimeError`` when sclang or scsynth cannot run."""
    import soundfile as sf

    family = family_of(ugen)
    classes = _find(ugens, (family.class_file,))
    binary = _plugin_binary(ugens, family)
    if classes is None or binary is None:
        raise RuntimeError(f"{ugens}: {family.name} is not there (expected "
                           f"{family.binaries[0].replace('*', '_scsynth')} or .scx and "
                           f"Classes/{family.class_file}, as its build installs them)")
    channels = 1 if signal.ndim == 1 else signal.shape[0]
    if channels > 1 and family is not NN_AR:
        raise ValueError(f"{family.name} feeds one channel: play a mono signal")
    seconds = signal.shape[-1] / sr
    # -U replaces scsynth's plugin path: SuperCollider's own UGens, then the plugin's
    plugins = os.pathsep.join(([sc_plugins] if sc_plugins else []) + [str(binary.parent)])
    # headless sclang: no display; Qt's web engine refuses its sandbox as root
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QTWEBENGINE_DISABLE_SANDBOX="1")
    log = ""
    with tempfile.TemporaryDirectory(prefix="rave_scsynth_") as tmp:
        work = Path(tmp)

        def score_from_sclang(program: str, score: str) -> None:
            nonlocal log
            (work / "score.scd").write_text(program)
            lang = subprocess.run([sclang, "-l", str(work / "sclang.yaml"),
                                   str(work / "score.scd")], cwd=work, capture_output=True,
                                  text=True, timeout=timeout, env=env)
            log += "sclang:\n" + (lang.stdout + lang.stderr).strip() + "\n"
            if not (work / score).exists():
                raise RuntimeError(f"sclang wrote no score (exit code {lang.returncode}): "
                                   f"if it does not know {family.name}, --ugens lacks "
                                   f"Classes/{family.class_file}; {log}")

        def render(score: str, inputs: str, output: str) -> None:
            nonlocal log
            server = subprocess.run(
                [scsynth, "-N", score, inputs, output, str(sr), "WAV", "float",
                 "-i", str(channels), "-o", str(channels), "-z", str(server_block),
                 "-U", plugins],
                cwd=work, capture_output=True, text=True, timeout=timeout)
            log += "scsynth:\n" + (server.stdout + server.stderr).strip() + "\n"
            if not (work / output).exists():
                raise RuntimeError(f"scsynth wrote no output (exit code {server.returncode})"
                                   f": check --sc-plugins and the log; {log}")

        sf.write(work / "in.wav", signal.T.astype(np.float32), sr, subtype="FLOAT")
        (work / "sclang.yaml").write_text(
            f"includePaths:\n  - {json.dumps(str(classes.parent))}\n"
            "excludePaths: []\npostInlineWarnings: false\n")
        if family is NN_AR:
            info = str(work / "model.yaml")
            score_from_sclang(nn_ar_info_script(str(model), info, str(work / "info.osc")),
                              "info.osc")
            render("info.osc", "_", "info.wav")
            if any(e in log for e in family.load_errors):
                return None, log.strip()
            if not Path(info).exists():
                raise RuntimeError(f"NN.ar wrote no description of {model.name}: build it "
                                   "for this SuperCollider and libtorch, and pass its folder "
                                   f"as --ugens; {log}")
            program = nn_ar_score_script(str(model), info, str(work / "score.osc"), seconds,
                                         buffer_size, ugen, channels, settings)
        else:
            program = score_script(str(model), str(work / "score.osc"), seconds, ugen,
                                   latent_size)
        score_from_sclang(program, "score.osc")
        render("score.osc", "in.wav", "out.wav")
        log = log.strip()
        if any(e in log for e in family.load_errors):
            return None, log
        if family.loaded not in log:  # printed once the UGen has loaded the file
            raise RuntimeError(f"scsynth never created {family.name}: build it for this "
                               "SuperCollider and libtorch, and pass its folder as --ugens; "
                               f"{log}")
        rendered, _ = sf.read(work / "out.wav", dtype="float32", always_2d=True)
    return (rendered[:, 0] if channels == 1 else rendered[:, :channels].T.copy()), log


def _forward_in_blocks(module, signal: np.ndarray, n: int, block: int,
                       legacy: bool) -> np.ndarray:
    """``forward`` on one ``(1, C, block)`` call after another over ``signal`` ``(T,)`` or
    ``(C, T)`` (zeros past its end), at least ``n`` samples, shaped as ``signal``; under
    the legacy graph executor if ``legacy``."""
    import contextlib

    import torch

    from rave_deploy.targets.supercollider import legacy_graph_executor

    channels = np.atleast_2d(signal)
    x = np.zeros((channels.shape[0], -(-n // block) * block), np.float32)
    x[:, :min(x.shape[1], channels.shape[1])] = channels[:, :x.shape[1]]
    with (legacy_graph_executor() if legacy else contextlib.nullcontext()), \
            torch.inference_mode():
        blocks = [module.forward(torch.from_numpy(x[:, i:i + block])[None])
                  for i in range(0, x.shape[1], block)]
    played = torch.cat(blocks, -1)[0].numpy()
    return played[0] if signal.ndim == 1 else played


def _delayed(played: np.ndarray, n: int, delay: int) -> np.ndarray:
    """``played`` ``(..., T)`` delayed by ``delay`` samples, ``n`` long."""
    out = np.zeros(played.shape[:-1] + (n,), np.float32)
    if n > delay:
        out[..., delay:] = played[..., :n - delay]
    return out


def ugen_output(module, signal: np.ndarray, n: int, server_block: int) -> Tuple[np.ndarray, int]:
    """What the RAVE UGen plays for ``signal`` over ``n`` samples: ``forward`` on one
    ``(1, 1, R)`` block after another from zero states (``R = decode_params[1]``), under the
    legacy graph executor, delayed by ``R - server_block`` samples when that is positive.
    Returns the output ``(n,)`` and that delay."""
    ratio = int(module.decode_params[1])
    delay = max(ratio - server_block, 0)
    return _delayed(_forward_in_blocks(module, signal, n, ratio, True), n, delay), delay


def nn_ar_buffer(module, buffer_size: int = -1) -> int:
    """The buffer NN.ar runs ``module`` with for its ``bufferSize`` argument, resolved as
    nn~ resolves its own: the largest ratio of the model's methods for -1 (its default),
    0 (its no-thread mode) or anything below that ratio, else the next power of two."""
    from rave_deploy.nn_tilde_emulation import nn_tilde_buffer

    return nn_tilde_buffer(module, buffer_size)


def _nn_ar_block(module, server_block: int, buffer_size: int) -> int:
    block = nn_ar_buffer(module, buffer_size)
    if server_block > block:
        raise ValueError(f"server block {server_block} > NN.ar's buffer {block}: NN.ar "
                         "disables itself then; use a larger --buffer-size")
    return block


def nn_ar_output(module, signal: np.ndarray, n: int, server_block: int,
                 buffer_size: int = -1) -> Tuple[np.ndarray, int]:
    """What NN.ar's ``forward`` UGen plays in NRT for ``signal`` over ``n`` samples:
    ``forward`` on one ``(1, C, B)`` block after another from zero states (``B`` from
    :func:`nn_ar_buffer`), under the default graph executor, delayed by
    ``B - server_block``. Returns the output (``(n,)``, or ``(C, n)`` for a ``(C, T)``
    signal) and that delay."""
    block = _nn_ar_block(module, server_block, buffer_size)
    delay = block - server_block
    return _delayed(_forward_in_blocks(module, signal, n, block, False), n, delay), delay


def nn_ar_encode_decode_output(encoder, decoder, signal: np.ndarray, n: int,
                               server_block: int, buffer_size: int = -1
                               ) -> Tuple[np.ndarray, int]:
    """What NN.ar's ``decode`` UGen fed by its ``encode`` UGen plays in NRT for ``signal``
    over ``n`` samples: nn~'s buffering (:class:`NnTildeHost`: latent held for ``ratio``
    samples, read back as the last sample of each group) computed at once for each full
    buffer, ``B - server_block`` samples per UGen; ``encoder`` and ``decoder`` two copies
    of the file (each UGen has its own instance), from zero states, under the default
    graph executor. Returns the output (``(n,)``, or ``(C, n)`` for a ``(C, T)`` signal)
    and the delay of the pair."""
    import torch

    from rave_deploy.nn_tilde_emulation import NnTildeHost

    block = _nn_ar_block(encoder, server_block, buffer_size)
    hosts = [NnTildeHost(encoder, "encode", block, vector=server_block, threaded=False),
             NnTildeHost(decoder, "decode", block, vector=server_block, threaded=False)]
    channels = np.atleast_2d(signal)
    y = np.zeros((1, channels.shape[0], -(-n // server_block) * server_block), np.float32)
    y[0, :, :min(n, channels.shape[1])] = channels[:, :n]
    with torch.inference_mode():
        for host in hosts:
            y = host.run(y)
    played = y[0, :, :n]
    return (played[0] if signal.ndim == 1 else played), sum(h.latency for h in hosts)


def encoder_decoder_output(encoder, decoder, signal: np.ndarray, n: int,
                           server_block: int) -> Tuple[np.ndarray, int]:
    """What ``RAVEDecoder`` fed by ``RAVEEncoder`` plays for ``signal`` over ``n`` samples
    (``server_block <= R``): ``encoder.encode`` on one ``(1, 1, R)`` block after another,
    then ``decoder.decode`` on one ``(1, L, 1)`` frame after another, output block ``k``
    decoding the latent of input block ``k - 1`` (zeros first) when ``server_block < R``,
    of block ``k`` when equal; both from zero states (two copies of the file, as each UGen
    loads its own), under the legacy graph executor. Returns the output ``(n,)`` and the
    delay against the offline chain, in samples (``R`` or 0)."""
    import torch

    from rave_deploy.targets.supercollider import legacy_graph_executor

    ratio, latent = int(decoder.decode_params[1]), int(decoder.decode_params[0])
    if server_block > ratio:
        raise ValueError(f"server block {server_block} > ratio {ratio}: the encoder then "
                         "runs several blocks per server block, which is not computed here; "
                         f"use a server block of {ratio} or less")
    frames = -(-n // ratio)
    x = np.zeros(frames * ratio, np.float32)
    x[:min(len(x), len(signal))] = signal[:len(x)]
    with legacy_graph_executor(), torch.inference_mode():
        z = [encoder.encode(torch.from_numpy(x[i:i + ratio]).reshape(1, 1, ratio))
             .reshape(-1)[:latent] for i in range(0, len(x), ratio)]
        delay = ratio if server_block < ratio else 0
        if delay:
            z = [torch.zeros(latent)] + z[:-1]
        played = torch.cat([decoder.decode(frame.reshape(1, latent, 1))[0, 0]
                            for frame in z]).numpy()
    return played[:n], delay


def compare_with_ugen_code(module, signal: np.ndarray, rendered: np.ndarray,
                           server_block: int, ugen: str = "forward",
                           second=None, buffer_size: int = -1,
                           settings: Sequence[Tuple[str, str]] = ()) -> RecordingComparison:
    """Compare ``rendered`` with :func:`ugen_output` of ``module`` (``ugen`` "forward"),
    with :func:`encoder_decoder_output` of ``module`` and ``second`` (a second copy of
    the file), with :func:`nn_ar_output` ("nn-ar", its ``buffer_size``) or with
    :func:`nn_ar_encode_decode_output` ("nn-ar-encode-decode", ``module`` and
    ``second``), from zero states. NN.ar's: ``signal`` and ``rendered`` both ``(T,)`` or
    both ``(channels, T)``; ``settings``: the attributes NN.ar set before its first call
    (``(NAME, VALUE)`` pairs), set on both copies the same way."""
    for m in (module, second):
        if m is None:
            continue
        apply_attributes(m, settings)
        if hasattr(m, "reset"):  # scsynth loads afresh: from silence too
            m.reset()
    if ugen == "nn-ar":
        expected, delay = nn_ar_output(module, signal, rendered.shape[-1], server_block,
                                       buffer_size)
        return compare_recording(rendered, expected, "scsynth", "expected", delay, "NN.ar")
    if ugen == "nn-ar-encode-decode":
        expected, delay = nn_ar_encode_decode_output(module, second, signal, rendered.shape[-1],
                                                     server_block, buffer_size)
        return compare_recording(rendered, expected, "scsynth", "expected", delay,
                                 "the NN.ar pair")
    if ugen == "encoder-decoder":
        expected, delay = encoder_decoder_output(module, second, signal, rendered.shape[-1],
                                                 server_block)
        return compare_recording(rendered, expected, "scsynth", "expected", delay,
                                 "the UGen pair")
    expected, delay = ugen_output(module, signal, rendered.shape[-1], server_block)
    return compare_recording(rendered, expected, "scsynth", "expected", delay, "the UGen")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="an exported supercollider .ts file")
    p.add_argument("--ugens", type=Path, required=True,
                   help="folder holding the UGen's plugin: the RAVE UGen (RAVE_scsynth.so / "
                        ".scx and Classes/RAVE.sc) or, with --ugen nn-ar, NN.ar "
                        "(NNModel_scsynth.so / .scx and Classes/NN.sc)")
    p.add_argument("--server-block", type=int, default=64,
                   help="scsynth's block size, -z (default 64, scsynth's own default)")
    p.add_argument("--seconds", type=float, default=3.0, help="test signal length (default 3)")
    p.add_argument("--sr", type=int, default=None,
                   help="the server's sample rate (default: the sidecar's sample_rate, else 44100)")
    p.add_argument("--sclang", default="sclang", help="the sclang executable (default: on PATH)")
    p.add_argument("--scsynth", default="scsynth", help="the scsynth executable (default: on PATH)")
    p.add_argument("--sc-plugins", default=DEFAULT_SC_PLUGINS,
                   help=f"folder of SuperCollider's own UGens (default {DEFAULT_SC_PLUGINS})")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="allowed max |scsynth - expected| as a share of the peak (default 0)")
    p.add_argument("--ugen", choices=UGENS, default="forward",
                   help="forward: RAVE.new (the default); encoder-decoder: RAVEDecoder fed "
                        "by RAVEEncoder (server blocks up to the ratio); nn-ar: NN.ar's "
                        "forward UGen; nn-ar-encode-decode: NN.ar's decode UGen fed by its "
                        "encode UGen")
    p.add_argument("--buffer-size", type=int, default=-1,
                   help="with --ugen nn-ar: its bufferSize argument (default -1: the "
                        "model's largest ratio)")
    p.add_argument("--set", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="with --ugen nn-ar or nn-ar-encode-decode: also pass NAME VALUE in "
                        "NN.ar's attributes: argument (repeatable, numbers), e.g. --set "
                        "learn_source 1 for a v3 file's style transfer")
    args = p.parse_args(argv)

    family = family_of(args.ugen)
    target = "nn_tilde" if family is NN_AR else "supercollider"  # NN.ar plays nn~'s files
    problem = not_torchscript(args.model, target)
    if problem:
        p.error(problem)
    if not args.ugens.is_dir() or _plugin_binary(args.ugens, family) is None:
        built_by = "nn.ar's" if family is NN_AR else "rave-supercollider's"
        p.error(f"{args.ugens}: {family.name} is not there (expected "
                f"{family.binaries[0].replace('*', '_scsynth')} or .scx): pass the folder "
                f"{built_by} build installs")
    for tool in (args.sclang, args.scsynth):
        if shutil.which(tool) is None:
            p.error(f"{tool}: not found (install SuperCollider, e.g. apt install "
                    "supercollider-server supercollider-language, or pass its path)")
    if args.server_block <= 0 or args.server_block & (args.server_block - 1):
        p.error(f"--server-block {args.server_block}: {family.name} expects a power of two")
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
                f"export it again (rave-deploy export RUN -t {target})")
    module.eval()
    if not hasattr(module, "decode_params") or not hasattr(module, "forward_params"):
        p.error(f"{args.model.name} has no decode_params / forward_params: not a file "
                f"{family.name} can run (`rave-deploy check` says what it lacks)")
    channels, out_channels = int(module.forward_params[0]), int(module.forward_params[2])
    if channels != 1 and family is not NN_AR:
        p.error(f"{args.model.name} takes {channels} channels; the RAVE UGens feed one: "
                "play it with --ugen nn-ar (NN.ar passes every channel)")
    if channels != out_channels:
        p.error(f"{args.model.name} takes {channels} and gives {out_channels} channels; "
                "this script plays files with as many outputs as inputs (export with "
                "--channels left at the model's)")
    settings = [tuple(pair) for pair in args.set]
    if settings and family is not NN_AR:
        p.error("--set: the RAVE UGens set no attributes; use --ugen nn-ar or "
                "nn-ar-encode-decode (NN.ar's attributes: argument)")
    for name, value in settings:
        try:
            try:
                float(value)
            except ValueError:
                raise ValueError("NN.ar's attributes: take numbers; give one (1 or 0 for "
                                 "on or off)") from None
            if isinstance(attribute_value(module, name, value), str):
                raise ValueError("a text attribute, which NN.ar's attributes: cannot set")
        except ValueError as err:
            p.error(f"--set {name} {value}: {err}")
    ratio, latent_size = int(module.decode_params[1]), int(module.decode_params[0])
    buffer = nn_ar_buffer(module, args.buffer_size)  # NN.ar's; the RAVE UGens ignore it
    if args.ugen == "encoder-decoder" and args.server_block > ratio:
        p.error(f"--ugen encoder-decoder: --server-block {args.server_block} is above the "
                f"model's ratio ({ratio}); use {ratio} or less")
    if family is NN_AR and args.server_block > buffer:
        p.error(f"--ugen {args.ugen}: --server-block {args.server_block} is above NN.ar's buffer "
                f"({buffer}), where NN.ar disables itself; pass --buffer-size "
                f"{args.server_block} or more")
    # the delay the synth puts before the model's first output, and the model's block
    z = args.server_block
    unit = buffer if family is NN_AR else ratio
    delay = {"forward": max(ratio - z, 0), "encoder-decoder": ratio if z < ratio else 0,
             "nn-ar": buffer - z, "nn-ar-encode-decode": 2 * (buffer - z)}[args.ugen]
    n = int(args.seconds * sr)
    if n <= delay + unit:
        shortest = math.ceil(100 * (delay + 2 * unit) / sr) / 100
        p.error(f"--seconds {args.seconds:g}: {n} samples at {sr} Hz, not more than "
                f"{family.name}'s delay ({delay} samples) and one call of the model "
                f"({unit}): the server would play none of its output; give --seconds "
                f"{shortest:g} or more")
    warning = file_rate and other_rate_warning(
        args.model, sr, file_rate, model_rate, family.name, "scsynth", target,
        "the expected output")
    if warning:
        print(warning, file=sys.stderr)
    signal = musical_signal(sr, n, channels, seed=1)
    if channels == 1:
        signal = signal[0]
    deterministic = hasattr(module, "set_deterministic")
    if deterministic:
        module.set_deterministic(True)
    else:
        print("note: this file has no `deterministic` attribute: it draws noise, so the "
              "server's output and the expected one cannot agree exactly", file=sys.stderr)
    if hasattr(module, "reset"):
        module.reset()
    with tempfile.TemporaryDirectory(prefix="rave_model_") as tmp:
        played = Path(tmp) / args.model.name
        module.save(str(played))  # the file with `deterministic` on, from zero states
        try:
            rendered, log = render_in_scsynth(played, args.ugens, signal, sr,
                                              args.server_block, args.sclang, args.scsynth,
                                              args.sc_plugins, ugen=args.ugen,
                                              latent_size=latent_size,
                                              buffer_size=args.buffer_size,
                                              settings=settings)
            second = (torch.jit.load(str(played))
                      if args.ugen in ("encoder-decoder", "nn-ar-encode-decode") else None)
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    print("log:\n  " + "\n  ".join(log.splitlines()))
    if rendered is None:
        print(f"FAIL: {family.name} could not load {args.model.name} (its error is in the "
              "log above); scsynth played its input (or nothing) instead")
        return 1
    result = compare_with_ugen_code(module, signal, rendered, args.server_block, args.ugen,
                                    second, args.buffer_size, settings)
    through = {"forward": "RAVE.new (forward",
               "encoder-decoder": "RAVEEncoder into RAVEDecoder (encode, decode",
               "nn-ar": f"NN.ar (forward, buffer {buffer}",
               "nn-ar-encode-decode": f"NN.ar's encode into its decode (buffer {buffer}"
               }[args.ugen]
    print(f"{args.model.name} in scsynth through {through}, server block "
          f"{args.server_block}, {sr} Hz{', deterministic' if deterministic else ''}):")
    for line in result.lines():
        print("  " + line)
    ok = result.agrees(args.tolerance)
    print("PASS: scsynth's output is the expected one" if ok else
          f"FAIL: {family.name} played silence (the log above may say why)"
          if result.host_peak == 0 else "FAIL: scsynth's output differs from the expected one")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
