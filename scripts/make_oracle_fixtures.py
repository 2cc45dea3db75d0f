"""Generate numerical oracle fixtures from acids-rave 2.3.1 for rave_core's tests.

This script is a *developer tool*: it imports and calls the real acids-rave
package (it contains no acids-rave code) and is never run in CI. CI only reads
the files it writes, ``tests/fixtures/oracle/<cfg>.pt`` and
``tests/fixtures/oracle/overrides.json``, with ``torch.load(..., weights_only=True)``.

How to run (from the repository root), in a virtualenv of its own holding acids-rave
2.3.1 with torch 2.5 and gin-config 0.5.0 (never this project's .venv)::

    python3.11 -m venv oracle && oracle/bin/pip install "torch==2.5.*" \
        --index-url https://download.pytorch.org/whl/cpu
    oracle/bin/pip install acids-rave==2.3.1 gin-config==0.5.0
    oracle/bin/python scripts/make_oracle_fixtures.py \
        [--runs ../shared/reference/acids_rave_runs] \
        [--out tests/fixtures/oracle] [cfg ...]

It takes ~15 s on CPU, is deterministic (re-running gives identical tensors)
and rewrites every fixture file plus overrides.json. It only imports ``rave``,
``gin`` and ``cached_conv`` (acids-rave's wheel also installs top-level
``scripts``/``tests`` packages; nothing here imports those names).

What it does, for each reference run config (v1, v2, v2_small, v3, v2_causal,
discrete, brave, c128_r10, and v2 composed with wasserstein and with spherical):

1. Reads ``<runs>/<cfg>/config.gin`` (acids-rave's operative config), appends the
   override lines listed in ``OVERRIDES[cfg]`` (shrinking CAPACITY / LATENT_SIZE /
   ...; RATIOS, N_BAND, dilations and PQMF attenuation are left alone) and parses
   the resulting text with ``gin.parse_config`` (the file starts with
   ``from __gin__ import dynamic_registration``). The override lines are stored
   in ``overrides.json`` as ``{cfg: [line, ...]}``: appending exactly those lines
   to the same config.gin reproduces the model.
2. Builds ``rave.RAVE()`` non-streaming (``cached_conv.use_cached_conv(False)``)
   after ``torch.manual_seed(0)``, then re-initialises every parameter except the
   PQMF's (see ``reinit``) so that activations are neither ~0 nor saturated, and
   fills the buffers ``latent_pca`` (random orthogonal), ``latent_mean``
   (randn*0.1) and ``fidelity`` (increasing, ending at 1). For the discrete
   config the RVQ codebooks are filled with random values and marked initialised.
   ``model.eval()``.
3. Computes (no_grad) on ``x = 0.5*randn(1, 1, 8192)`` and a random latent ``z``:
   pqmf_analysis, pqmf_synthesis, encode, latent_mean (variational only),
   decoder_out (multiband), decode, and the streaming variants decode_streaming /
   encode_streaming from a second RAVE built with ``use_cached_conv(True)`` that
   loads the same state dict.
4. Saves one dict per config (tensors, ints, floats, strs, lists, dicts only).

Randomness: a decoder is "random" when it adds noise at inference time
(GeneratorV2 with a ``noise_module``: v2_small). For those configs
``decoder_random`` is True and every decoder call (decoder_out, decode,
decode_streaming) is made right after ``torch.manual_seed(DECODER_NOISE_SEED)``
(recorded as ``decoder_out_noise_seed``). v1's ``blocks.Generator`` builds a
noise branch too, but only adds it when ``decoder.warmed_up`` is non-zero (it
is 0 in the saved state dict), so its output is deterministic; it still draws
from the RNG, so the same seeding rule is applied to every config anyway.

Streaming caveats (facts about acids-rave, measured with this script): the
streaming model starts from zero caches, so on inputs this short the streamed
output is dominated by start-up/edge transients and is NOT a delayed copy of the
eager output; on long inputs the v2 family matches eager delayed by the
reference decoder delay (v2: 12512 samples, rel. err ~6e-7), while v1/brave/
c128_r10 (odd multiband delay) do not match at all (rel. err ~1). The fixtures
record what acids-rave's streaming model outputs for exactly these inputs.

Keys of each fixture file (shapes for batch 1):
    cfg, acids_rave_version, torch_version, overrides (list[str]),
    latent_size, decoder_latent_size, ratio, n_band, encoder_kind, decoder_kind,
    decoder_random (bool), decoder_out_noise_seed (int, -1 if not random),
    x (1,1,N), pqmf_analysis (1,n_band,N/n_band), pqmf_synthesis (1,1,N),
    encode (1,C,N/ratio), latent_mean (variational only, first half of encode),
    z (1,decoder_latent_size,N/ratio), decoder_out (1,n_band,N/n_band),
    decode (1,1,N), state_dict (dict, non-streaming model, before weight-norm
    removal, without discriminator./audio_distance./multiband_audio_distance.),
    rvq_indices / rvq_quantized (discrete only: encoder.rvq.encode / decode of
    ``encode``),
    when streaming worked: stream_flush_frames (int, F), z_streaming
    (1,decoder_latent_size,N/ratio+F) = z followed by F zero frames,
    decode_streaming (1,1,N+F*ratio), encode_streaming (1,C,N/ratio+F) from
    x_streaming = x followed by F*ratio zeros (not stored); else
    streaming_error (str); streaming_notes (str).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from importlib.metadata import version

import torch

N_SAMPLES = 8192
X_SEED = 1
Z_SEED = 2
MODEL_SEED = 0
DECODER_NOISE_SEED = 1234
# Range of the weight-norm magnitudes (weight_g) drawn by `reinit`; chosen so that the
# tanh outputs are neither ~0 nor saturated (Snake activations make v3 hotter).
WEIGHT_G_RANGE = {"v3": (0.7, 1.4)}
WEIGHT_G_RANGE_DEFAULT = (0.75, 1.5)
# Zeros appended to x / z for the streaming runs, per config: more than acids-rave's
# encoder and decoder streaming delays (reference README: v1 8448/17040, v2 and v3
# 14208/12512, v2_small 5504/5024, v2_causal 0/1696, discrete 9600/8672,
# brave and c128_r10 0/112 samples), rounded up to whole latent frames.
STREAM_FLUSH_SAMPLES = {
    "v1": 18432, "v2": 16384, "v3": 16384, "v2_small": 6144, "v2_causal": 4096,
    "discrete": 10240, "brave": 1024, "c128_r10": 1024,
    "v2_wasserstein": 16384, "v2_spherical": 16384,
}
SKIP_PREFIXES = ("discriminator.", "audio_distance.", "multiband_audio_distance.")

CONFIGS = ["v1", "v2", "v2_small", "v3", "v2_causal", "discrete", "brave", "c128_r10",
           "v2_wasserstein", "v2_spherical"]
# Configs with no reference run: acids-rave's own config files, composed as
# `rave train --config v2 --config wasserstein` composes them.
COMPOSED = {"v2_wasserstein": ("v2", "wasserstein"), "v2_spherical": ("v2", "spherical")}

# Lines appended verbatim to each config.gin (later bindings win in gin).
OVERRIDES = {
    "v1": ["CAPACITY = 4", "LATENT_SIZE = 8"],
    "v2": ["CAPACITY = 4", "LATENT_SIZE = 8"],
    "v2_small": ["CAPACITY = 4", "LATENT_SIZE = 8", "blocks.NoiseGeneratorV2.hidden_size = 8"],
    "v3": ["CAPACITY = 4", "LATENT_SIZE = 8"],
    "v2_causal": ["CAPACITY = 4", "LATENT_SIZE = 8"],
    "discrete": [
        "CAPACITY = 4",
        "LATENT_SIZE = 8",
        "NUM_QUANTIZERS = 2",
        "CODEBOOK_SIZE = 16",
        "NOISE_AUGMENTATION = 4",
    ],
    "brave": ["CAPACITY = 4", "LATENT_SIZE = 8"],
    "c128_r10": ["CAPACITY = 4", "LATENT_SIZE = 8"],
    "v2_wasserstein": ["CAPACITY = 4", "LATENT_SIZE = 8", "NOISE_AUGMENTATION = 4"],
    "v2_spherical": ["CAPACITY = 4", "LATENT_SIZE = 8"],
}


def parse_config(gin, cfg_path: str, overrides: list[str]) -> None:
    gin.clear_config()
    cfg = os.path.basename(os.path.dirname(cfg_path))
    if cfg in COMPOSED:  # acids-rave's shipped files (on gin's search path once rave is imported)
        gin.parse_config_files_and_bindings([f"{name}.gin" for name in COMPOSED[cfg]], overrides)
        return
    with open(cfg_path) as f:
        text = f.read()
    text = text.rstrip("\n") + "\n\n# fixture overrides\n" + "\n".join(overrides) + "\n"
    gin.parse_config(text)


def build(gin, rave, cc, cfg_path, overrides, streaming: bool):
    cc.use_cached_conv(streaming)
    try:
        parse_config(gin, cfg_path, overrides)
        model = rave.RAVE()
    finally:
        cc.use_cached_conv(False)
    return model


@torch.no_grad()
def reinit(model, gen: torch.Generator, g_range=WEIGHT_G_RANGE_DEFAULT) -> None:
    """Small random parameters (PQMF filters untouched) and random buffers."""
    for name, p in model.named_parameters():
        if name.startswith(("pqmf.",) + SKIP_PREFIXES):
            continue
        if name.endswith("weight_g"):
            # weight-norm magnitude: per-output-slice norm of the effective weight
            p.copy_(torch.empty_like(p).uniform_(*g_range, generator=gen))
        elif name.endswith(".alpha"):  # Snake
            p.copy_(torch.empty_like(p).uniform_(0.5, 1.5, generator=gen))
        elif p.ndim >= 2:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=gen) * (1.2 / math.sqrt(fan_in)))
        elif name.endswith("bias"):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        else:  # 1-D scale (BatchNorm weight)
            p.copy_(torch.empty_like(p).uniform_(0.5, 1.5, generator=gen))

    for name, b in model.named_buffers():
        if name.startswith(("pqmf.",) + SKIP_PREFIXES):
            continue
        if name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
        elif name.endswith("running_var"):
            b.copy_(torch.empty_like(b).uniform_(0.5, 1.5, generator=gen))
        elif name.endswith("_codebook.embed"):
            b.copy_(torch.randn(b.shape, generator=gen) * 0.5)
        elif name.endswith("_codebook.embed_avg"):
            b.copy_(torch.randn(b.shape, generator=gen) * 0.5)
        elif name.endswith("_codebook.cluster_size"):
            b.copy_(torch.rand(b.shape, generator=gen) * 4)
        elif name.endswith("_codebook.inited"):
            b.fill_(1.0)

    n = model.latent_pca.shape[0]
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen))
    model.latent_pca.copy_(q)
    model.latent_mean.copy_(torch.randn(n, generator=gen) * 0.1)
    f = torch.rand(n, generator=gen) + 0.05
    f = torch.cumsum(f, 0)
    model.fidelity.copy_(f / f[-1])


def c(t: torch.Tensor) -> torch.Tensor:
    """Own, contiguous storage (torch.save would otherwise store the whole base)."""
    return t.detach().clone().contiguous()


def decoder_is_random(model) -> bool:
    return getattr(model.decoder, "noise_module", None) is not None


def decoder_latent_size(model) -> int:
    """Input channels of the first convolution of decoder.net (not of waveform_module,
    which GeneratorV2 registers first when it has a noise module)."""
    for m in model.decoder.net.modules():
        if isinstance(m, torch.nn.Conv1d):
            return int(m.in_channels)
    raise RuntimeError("cannot find the decoder's first convolution")


def best_lag(streamed: torch.Tensor, eager: torch.Tensor):
    """Diagnostic only: delay d minimising |streamed[d:d+n] - eager| over the first 3/4
    of the eager output (its right edge differs: eager pads, streaming sees zeros)."""
    n = eager.shape[-1]
    m = max(1, (3 * n) // 4)
    best = (None, float("inf"))
    for d in range(streamed.shape[-1] - n + 1):
        a, b = streamed[..., d:d + m], eager[..., :m]
        err = ((a - b).norm() / b.norm().clamp_min(1e-12)).item()
        if err < best[1]:
            best = (d, err)
    return best


def make_one(cfg: str, runs: str, out_dir: str, gin, rave, cc, verbose=True):
    cfg_path = os.path.join(runs, cfg, "config.gin")
    overrides = OVERRIDES[cfg]

    torch.manual_seed(MODEL_SEED)
    model = build(gin, rave, cc, cfg_path, overrides, streaming=False)
    reinit(model, torch.Generator().manual_seed(MODEL_SEED),
           WEIGHT_G_RANGE.get(cfg, WEIGHT_G_RANGE_DEFAULT))
    model.eval()

    random_dec = decoder_is_random(model)
    variational = isinstance(model.encoder, rave.blocks.VariationalEncoder)
    discrete = isinstance(model.encoder, rave.blocks.DiscreteEncoder)

    x = 0.5 * torch.randn(1, 1, N_SAMPLES, generator=torch.Generator().manual_seed(X_SEED))
    res: dict = {}
    notes = []
    with torch.no_grad():
        mb = model.pqmf(x)
        syn = model.pqmf.inverse(mb)
        enc = model.encode(x)
        ratio = x.shape[-1] // enc.shape[-1]
        dls = decoder_latent_size(model)
        z = torch.randn(1, dls, N_SAMPLES // ratio, generator=torch.Generator().manual_seed(Z_SEED))
        torch.manual_seed(DECODER_NOISE_SEED)
        dec_mb = model.decoder(z)
        torch.manual_seed(DECODER_NOISE_SEED + 1)
        dec_other = model.decoder(z)
        measured_random = not torch.equal(dec_mb, dec_other)
        if measured_random != random_dec:
            raise RuntimeError(f"{cfg}: decoder randomness {measured_random} != noise_module "
                               f"presence {random_dec}")
        torch.manual_seed(DECODER_NOISE_SEED)
        y = model.decode(z)

        res.update(
            x=c(x), pqmf_analysis=c(mb), pqmf_synthesis=c(syn), encode=c(enc), z=c(z),
            decoder_out=c(dec_mb), decode=c(y),
        )
        if variational:
            res["latent_mean"] = c(enc.chunk(2, 1)[0])
        if discrete:
            idx = model.encoder.rvq.encode(enc)
            res["rvq_indices"] = c(idx)
            res["rvq_quantized"] = c(model.encoder.rvq.decode(idx))
        if isinstance(model.encoder, rave.blocks.SphericalEncoder):
            sphere = model.encoder.reparametrize(enc)[0]
            angles = rave.blocks.unit_norm_vector_to_angles(sphere.clone())
            res["sphere"] = c(sphere)
            res["sphere_angles"] = c(angles)
            res["sphere_from_angles"] = c(rave.blocks.angles_to_unit_norm_vector(angles.clone()))

    sd = {k: c(v) for k, v in model.state_dict().items() if not k.startswith(SKIP_PREFIXES)}

    # ---- streaming (cached_conv) ----
    try:
        torch.manual_seed(MODEL_SEED)
        smodel = build(gin, rave, cc, cfg_path, overrides, streaming=True)
        missing, unexpected = smodel.load_state_dict(model.state_dict(), strict=False)
        if unexpected:
            raise RuntimeError(f"unexpected keys when loading into streaming model: {unexpected[:5]}")
        if missing:
            notes.append(f"streaming load missing keys: {missing[:5]}")
        smodel.eval()
        # The eager inputs are followed by zeros so that the streamed outputs run
        # past acids-rave's streaming delay (up to ~17k samples) and contain the
        # delayed image of the whole eager input.
        extra_frames = -(-STREAM_FLUSH_SAMPLES[cfg] // ratio)
        z_s = torch.cat([z, torch.zeros(1, z.shape[1], extra_frames)], -1)
        x_s = torch.cat([x, torch.zeros(1, 1, extra_frames * ratio)], -1)
        with torch.no_grad():
            torch.manual_seed(DECODER_NOISE_SEED)
            ys = [smodel.decode(z_s[..., i:i + 1]) for i in range(z_s.shape[-1])]
            res["decode_streaming"] = c(torch.cat(ys, -1))
            zs = [smodel.encode(x_s[..., i:i + ratio]) for i in range(0, x_s.shape[-1], ratio)]
            res["encode_streaming"] = c(torch.cat(zs, -1))
        res["z_streaming"] = c(z_s)  # x_streaming is not stored: it is x followed by zeros
        res["stream_flush_frames"] = int(extra_frames)
        notes.append(
            "decode_streaming: z_streaming (= z followed by stream_flush_frames zero frames) fed "
            "one latent frame at a time to model.decode of a use_cached_conv(True) RAVE "
            "(fresh zero caches); encode_streaming: x followed by stream_flush_frames*ratio "
            "zero samples (not stored), fed in "
            "blocks of `ratio` samples to model.encode of the same streaming model, after the "
            "decode pass (encoder and decoder caches are independent). Outputs are delayed "
            "w.r.t. the eager ones."
        )
        if random_dec:
            notes.append("decode_streaming is random (noise module); seeded once before the loop, "
                         "so it is not an exact delayed copy of `decode`.")
    except Exception as e:  # noqa: BLE001
        res["streaming_error"] = "".join(traceback.format_exception_only(type(e), e)).strip()
        notes.append("streaming failed")

    res.update(
        cfg=cfg,
        acids_rave_version=version("acids-rave"),
        torch_version=str(torch.__version__),
        overrides=list(overrides),
        latent_size=int(model.latent_size),
        decoder_latent_size=dls,
        ratio=int(ratio),
        n_band=int(mb.shape[1]),
        n_samples=N_SAMPLES,
        seeds={"model": MODEL_SEED, "x": X_SEED, "z": Z_SEED, "decoder_noise": DECODER_NOISE_SEED},
        encoder_kind=type(model.encoder).__name__ + "/" + type(model.encoder.encoder).__name__,
        decoder_kind=type(model.decoder).__name__,
        decoder_random=bool(random_dec),
        decoder_out_noise_seed=DECODER_NOISE_SEED if random_dec else -1,
        streaming_notes=" ".join(notes),
        state_dict=sd,
    )

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{cfg}.pt")
    torch.save(res, path)

    if verbose:
        def st(t):
            return f"{tuple(t.shape)} std={t.float().std():.3g} max={t.abs().max():.3g}"
        print(f"--- {cfg}: {os.path.getsize(path)/1024:.0f} KiB")
        for k in ["pqmf_analysis", "pqmf_synthesis", "encode", "z", "decoder_out", "decode",
                  "decode_streaming", "encode_streaming", "rvq_quantized"]:
            if k in res:
                print(f"    {k:18s} {st(res[k])}")
        sat = (res["decoder_out"].abs() > 0.99).float().mean().item()
        print(f"    decoder_out |v|>0.99 fraction: {sat:.3f}")
        if "streaming_error" in res:
            print("    streaming_error:", res["streaming_error"])
        else:
            lag, err = best_lag(res["decode_streaming"], res["decode"])
            print(f"    (diagnostic, edge effects dominate such short inputs) "
                  f"decode_streaming ~ decode delayed by {lag} samples, rel. err {err:.2g}")
            lag, err = best_lag(res["encode_streaming"], res["encode"])
            print(f"    encode_streaming ~ encode delayed by {lag} frames, rel. err {err:.2g}")
    return path, res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    # the reference material beside the clone, as the tests find it
    ap.add_argument("--runs", default=os.path.join(here, "..", "..", "shared", "reference",
                                                   "acids_rave_runs"))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "oracle"))
    ap.add_argument("cfgs", nargs="*", default=CONFIGS)
    args = ap.parse_args(argv)

    import gin
    import cached_conv as cc
    import rave  # noqa: F401  (registers configurables, adds gin search path)
    import rave.blocks  # noqa: F401

    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    out_dir = os.path.normpath(args.out)
    rows = []
    for cfg in args.cfgs:
        path, r = make_one(cfg, args.runs, out_dir, gin, rave, cc)
        rows.append((cfg, os.path.getsize(path), r))

    ov_path = os.path.join(out_dir, "overrides.json")
    with open(ov_path, "w") as f:
        json.dump({c_: OVERRIDES[c_] for c_ in CONFIGS}, f, indent=2)
        f.write("\n")

    print()
    hdr = f"{'cfg':10s} {'KiB':>5s} {'lat':>4s} {'dec_in':>6s} {'ratio':>5s} {'encode':>12s} {'decoder_out':>13s} {'random':>6s} streaming"
    print(hdr)
    for cfg, size, r in rows:
        stream = "ok" if "decode_streaming" in r else "FAILED"
        print(f"{cfg:10s} {size/1024:5.0f} {r['latent_size']:4d} {r['decoder_latent_size']:6d} "
              f"{r['ratio']:5d} {str(tuple(r['encode'].shape)):>12s} {str(tuple(r['decoder_out'].shape)):>13s} "
              f"{str(r['decoder_random']):>6s} {stream}")


if __name__ == "__main__":
    sys.exit(main())
