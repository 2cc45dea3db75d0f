"""Stream a wav file through a rave-deploy ``onnx_streaming`` graph, block by block.

    python example_onnxruntime.py model.onnx_streaming.onnx in.wav out.wav --block 512

Needs only ``onnxruntime``, ``numpy`` and ``soundfile``: the graph carries its state in
and out explicitly (``state_in_k`` -> ``state_out_k``), so this loop is all a host does.
"""
import argparse
import json

import numpy as np
import onnxruntime as ort
import soundfile as sf


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--block", type=int, default=0, help="block size (default: the ratio)")
    parser.add_argument("--trim-latency", action="store_true",
                        help="drop the model's latency from the start of the output")
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1          # one thread: no hand-offs at small blocks
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])

    meta = session.get_modelmeta().custom_metadata_map
    problem = not_streaming(meta, [i.name for i in session.get_inputs()], args.model)
    if problem:
        parser.exit(2, f"error: {problem}\n")
    sr, ratio = int(meta["sample_rate"]), int(meta["block_multiple"])
    channels, latency = int(meta["channels"]), int(meta["latency_samples"])
    fixed = json.loads(meta["block_size"]) if meta["block_size"] != "dynamic" else None
    block = fixed or args.block or ratio
    if block % ratio:
        raise SystemExit(f"--block {block} must be a multiple of {ratio}")

    audio, file_sr = sf.read(args.input, dtype="float32", always_2d=True)   # (time, channels)
    if file_sr != sr:
        raise SystemExit(f"{args.input} is at {file_sr} Hz; the model runs at {sr} Hz: resample it first")
    audio = audio[:, :channels] if audio.shape[1] >= channels else np.repeat(audio[:, :1], channels, 1)
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
    sf.write(args.output, y, sr)
    print(f"{n / sr:.2f} s at {sr} Hz, block {block}, latency {latency} samples "
          f"({1000 * latency / sr:.1f} ms) -> {args.output}")


if __name__ == "__main__":
    main()
