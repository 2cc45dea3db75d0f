"""Stream a wav file through a rave-deploy ``onnx_streaming`` graph, block by block.

    python example_onnxruntime.py model.onnx_streaming.onnx in.wav out.wav --block 512

Needs only ``onnxruntime``, ``numpy`` and ``soundfile``: the graph carries its state in
and out explicitly (``state_in_k`` -> ``state_out_k``), so this loop is all a host does.
The output is written as 32-bit float samples (as the graph computes them: nothing
clipped or rounded), in the format its extension names (``.wav``, ``.flac``...; a format
without float samples gets 24-bit samples (FLAC) or its own (OGG), and a note says so).
A file with more channels than the model takes is mixed down (a note says so).
"""
import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import soundfile as sf

#: First bytes of the files given here by mistake: a TorchScript file (a zip archive),
#: Minifusion's model (HDF5). An ONNX graph (protobuf) has no signature.
SIGNATURES = {b"PK\x03\x04": "a TorchScript file (a zip archive; -t nn_tilde or "
                              "supercollider), not an ONNX graph",
              b"\x89HDF\r\n\x1a\n": "an HDF5 file (Minifusion's model), not an ONNX graph"}
GIVE = "give NAME.onnx_streaming.onnx (rave-deploy export RUN -t onnx_streaming)"


def not_a_graph(path: str):
    """Why ``path`` is not an ONNX graph file to load (None if it may be one)."""
    if os.path.isdir(path):
        what = ("an anira export (a folder), not an onnx_streaming graph"
                if os.path.isfile(os.path.join(path, "forward.onnx")) else "a folder")
        return f"{path} is {what}: {GIVE}"
    if not os.path.isfile(path):
        return f"{path}: no such file; {GIVE}"
    with open(path, "rb") as f:
        head = f.read(8)
    for magic, what in SIGNATURES.items():
        if head.startswith(magic):
            return f"{path} is {what}: {GIVE}"
    return None if head else f"{path} is empty: {GIVE}"


def output_format(path: str):
    """``(format, subtype)`` soundfile writes ``path`` with: its extension's format, with
    float samples where the format has them; or the line saying why it cannot."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"output {path} is a folder: name the file to write (e.g. out.wav)"
    if not os.path.isdir(folder):
        return f"output {path}: no folder {folder}; create it first"
    if not os.access(folder, os.W_OK):
        return f"output {path}: folder {folder} is not writable"
    ext = os.path.splitext(path)[1].lstrip(".").upper()
    if ext not in sf.available_formats():
        return (f"output {path}: {'.' + ext.lower() if ext else 'no extension'} is not an "
                "audio format soundfile writes: name it .wav (or .flac, .aiff...)")
    subtype = next((t for t in ("FLOAT", "PCM_24") if sf.check_format(ext, t)),
                   sf.default_subtype(ext))
    return ext, subtype


def write_atomically(path: str, audio: np.ndarray, sr: int, fmt: str, subtype: str):
    """Write ``audio`` to ``path`` through a temporary file beside it: a failure leaves
    nothing half-written (and an older file at ``path`` as it was)."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")   # made as any new file is
    try:
        sf.write(tmp, audio, sr, subtype=subtype, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def not_streaming(meta, inputs, path: str):
    """Why the graph at ``path`` (its metadata, its input names) is not an onnx_streaming
    graph, which this loop needs (None if it is one)."""
    graph = meta.get("graph")
    states = [name for name in inputs if name.startswith("state_in_")]
    if graph == "streaming" or (graph is None and states and inputs[0] == "audio_in"):
        return None
    right = path[:-len(".onnx.onnx")] + ".onnx_streaming.onnx" if path.endswith(".onnx.onnx") \
        else "the onnx_streaming export (NAME.onnx_streaming.onnx)"
    if graph == "flat_state":
        what = "a graph of an anira export (one flat state, for anira), not an onnx_streaming one"
    elif graph == "offline" or meta.get("streaming") == "false" or not states:
        what = ("the offline graph (-t onnx: the whole signal in one call, no state "
                "inputs): run block by block it would restart at every block and write "
                "wrong audio")
    else:
        what = f"a {graph} graph, not an onnx_streaming one"
    return f"{path} is {what}; give {right} (rave-deploy export RUN -t onnx_streaming)"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an onnx_streaming graph (NAME.onnx_streaming.onnx)")
    parser.add_argument("input", help="the audio file to play through it")
    parser.add_argument("output", help="the file to write (.wav: 32-bit float samples)")
    parser.add_argument("--block", type=int, default=0, help="block size (default: the ratio)")
    parser.add_argument("--trim-latency", action="store_true",
                        help="drop the model's latency from the start of the output")
    args = parser.parse_args(argv)

    # Everything is checked before any audio is processed.
    problem = not_a_graph(args.model)
    if problem:
        parser.error(problem)
    if args.block < 0:
        parser.error(f"--block {args.block}: a block is a number of samples above 0")
    if not os.path.isfile(args.input):
        parser.error(f"input {args.input}: no such file")
    try:
        info = sf.info(args.input)
    except RuntimeError as err:   # soundfile.LibsndfileError
        parser.error(f"input {args.input} is not an audio file soundfile can read "
                     f"({str(err).strip().splitlines()[-1]})")
    if info.frames == 0:
        parser.error(f"input {args.input} holds no samples")
    written = output_format(args.output)
    if isinstance(written, str):
        parser.error(written)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1          # one thread: no hand-offs at small blocks
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    except Exception as err:   # onnxruntime's errors have no common public base class
        parser.error(f"{args.model} is not an ONNX graph onnxruntime can load "
                     f"({str(err).strip().splitlines()[0]}): {GIVE}")

    meta = session.get_modelmeta().custom_metadata_map
    problem = not_streaming(meta, [i.name for i in session.get_inputs()], args.model)
    if problem:
        parser.error(problem)
    try:
        sr, ratio = int(meta["sample_rate"]), int(meta["block_multiple"])
        channels, latency = int(meta["channels"]), int(meta["latency_samples"])
        fixed = json.loads(meta["block_size"]) if meta["block_size"] != "dynamic" else None
    except (KeyError, ValueError) as err:
        parser.error(f"{args.model} lacks rave-deploy's metadata ({err}): {GIVE}")
    if fixed and args.block and args.block != fixed:
        parser.error(f"--block {args.block}: {args.model} was exported with a fixed block "
                     f"of {fixed} samples (--block-size {fixed}); pass --block {fixed} or "
                     "leave --block out (or export again without --block-size: any "
                     f"multiple of {ratio})")
    block = fixed or args.block or ratio
    if block % ratio:
        parser.error(f"--block {block}: the graph takes a multiple of {ratio} samples "
                     f"(e.g. {ratio}, {2 * ratio}, {4 * ratio})")
    if info.samplerate != sr:
        parser.error(f"input {args.input} is at {info.samplerate} Hz; the model runs at "
                     f"{sr} Hz: resample it first")

    audio, _ = sf.read(args.input, dtype="float32", always_2d=True)   # (time, channels)
    if audio.shape[1] > channels:
        kept = "mixed down to mono (the mean of its channels)" if channels == 1 else \
            f"its first {channels} kept, the others dropped"
        print(f"note: {args.input} has {audio.shape[1]} channels and the model takes "
              f"{channels}: {kept}", file=sys.stderr)
        audio = audio.mean(1, keepdims=True) if channels == 1 else audio[:, :channels]
    elif audio.shape[1] < channels:
        print(f"note: {args.input} has {audio.shape[1]} channel(s) and the model takes "
              f"{channels}: its first channel fed to each", file=sys.stderr)
        audio = np.repeat(audio[:, :1], channels, 1)
    n = audio.shape[0]
    total = -(-(n + latency) // block) * block              # room for the delayed tail
    x = np.zeros((1, channels, total), np.float32)
    x[0, :, :n] = audio.T

    # Inputs: audio first, then the states; outputs: audio first, then the next states.
    states = {i.name: np.zeros(i.shape, np.float32) for i in session.get_inputs()[1:]}
    next_names = [o.name for o in session.get_outputs()[1:]]
    out = []
    for start in range(0, total, block):
        result = session.run(None, {"audio_in": x[..., start:start + block], **states})
        out.append(result[0])
        states = {name.replace("state_out_", "state_in_"): value
                  for name, value in zip(next_names, result[1:])}
    y = np.concatenate(out, -1)[0].T                          # (time, channels)
    y = y[latency:latency + n] if args.trim_latency else y[:n + latency]
    fmt, subtype = written
    if subtype != "FLOAT":
        print(f"note: {fmt} has no float samples: {args.output} is written as {subtype} "
              "(name it .wav for 32-bit float)", file=sys.stderr)
    try:
        write_atomically(args.output, y, sr, fmt, subtype)
    except (OSError, RuntimeError) as err:   # a full disk, a folder made read-only since
        parser.exit(1, f"error: could not write {args.output} ({err}); nothing was written\n")
    print(f"{n / sr:.2f} s at {sr} Hz, block {block}, latency {latency} samples "
          f"({1000 * latency / sr:.1f} ms) -> {args.output} ({subtype})")


if __name__ == "__main__":
    main()
