"""Discriminators, losses and residual vector quantisation.

(a) Built from acids-rave's operative configs, the discriminator and the two audio
    distances carry exactly acids-rave's state-dict keys and shapes (before and after
    weight-norm removal); so does the discrete config's RVQ.
(b) Numerics: GAN losses, spectral distance, STFT, discriminator output shapes, RVQ.
"""
from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Dict

import gin
import pytest
import torch
import torch.nn as nn

from rave_core import losses
from rave_core.models import discriminators as D
from rave_core.models import quantization as Q
from rave_core.nn.weight_norm import remove_weight_norm
from tests.conftest import REFERENCE, reference_dir

STATE_DICTS = REFERENCE / "state_dicts"
RUNS = REFERENCE / "acids_rave_runs"
BEFORE = "state_dict_before_weight_norm_removal"
AFTER = "state_dict_after_weight_norm_removal"
PREFIXES = ("discriminator.", "audio_distance.", "multiband_audio_distance.")
CONFIGS = ["v1", "v2", "v3", "brave", "discrete", "v2_small", "v2_causal", "c128_r10"]

# the reference material's manifests: without them, the tests fail saying where it was looked for
needs_reference = pytest.mark.usefixtures("reference_material")


@pytest.fixture
def reference_material() -> Path:
    return reference_dir()

for _cls in (torch.nn.Conv1d, torch.nn.Conv2d):
    try:
        gin.external_configurable(_cls, module="torch.nn")
    except ValueError:
        pass  # registered already (rave_core.config or another test)


def _probe(discriminator=None, audio_distance=None, multiband_audio_distance=None,
           vq=None) -> Dict[str, object]:
    return dict(discriminator=discriminator, audio_distance=audio_distance,
                multiband_audio_distance=multiband_audio_distance, vq=vq)


try:
    _probe = gin.configurable("probe", module="rave_core_test_discriminators")(_probe)
except ValueError:  # module imported twice
    pass

# ------------------------------------------------------------------------------ config helper
_ALIASES = {
    "blocks": "rave.blocks", "discriminator": "rave.discriminator", "core": "rave.core",
    "model": "rave.model", "cc": "cached_conv", "convs": "cached_conv.convs",
    "pqmf": "rave.pqmf", "dataset": "rave.dataset", "quantization": "rave.quantization",
    "descript_discriminator": "rave.descript_discriminator", "nn": "torch.nn",
}


def _local_translate(text: str) -> str:
    """Drop imports and expand module aliases at selector and ``@reference`` positions."""
    body = [line for line in text.splitlines()
            if not re.match(r"^\s*(import\s+\S|from\s+\S+\s+import\s)", line)]
    names = "|".join(sorted(map(re.escape, _ALIASES), key=len, reverse=True))
    pattern = re.compile(rf"(^|@)((?:\w+/)*)({names})\.(?=[A-Za-z_])", re.MULTILINE)
    return pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{_ALIASES[m.group(3)]}.",
                       "\n".join(body))


def _translate(text: str) -> str:
    try:  # prefer the project's loader when it is there
        from rave_core.config import translate_acids_config
    except ImportError:
        return _local_translate(text)
    return translate_acids_config(text)


def test_local_translate_rewrites_only_selectors():
    text = ("from rave import core\nimport torch.nn as nn\n"
            "scales/discriminator.ConvNet.conv = @nn.Conv2d\n"
            "core.MultiScaleSTFT.scales = [2048]\n"
            "model.RAVE.feature_matching_fun = @feature_matching/core.mean_difference\n"
            "x.name = 'core.blocks'\n")
    out = _local_translate(text)
    assert "import" not in out
    assert "scales/rave.discriminator.ConvNet.conv = @torch.nn.Conv2d" in out
    assert "rave.core.MultiScaleSTFT.scales = [2048]" in out
    assert "@feature_matching/rave.core.mean_difference" in out
    assert "'core.blocks'" in out


def _build_from_config(name: str) -> Dict[str, object]:
    """Bind acids-rave's ``config.gin`` of ``name`` and return RAVE's training factories."""
    text = (RUNS / name / "config.gin").read_text()
    wanted = {}
    for key in ("discriminator", "audio_distance", "multiband_audio_distance"):
        m = re.search(rf"^model\.RAVE\.{key}\s*=\s*(@\S+)", text, re.MULTILINE)
        assert m, f"{name}: no model.RAVE.{key}"
        wanted[key] = m.group(1)
    m = re.search(r"^blocks\.DiscreteEncoder\.vq_cls\s*=\s*(@\S+)", text, re.MULTILINE)
    if m:
        wanted["vq"] = m.group(1)
    probe = "\n".join(f"rave_core_test_discriminators.probe.{k} = {v}"
                      for k, v in wanted.items())
    gin.clear_config()
    gin.parse_config(_translate(text + "\n" + probe + "\n"), skip_unknown=True)
    return _probe()


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def _shapes(module: nn.Module, prefix: str) -> Dict[str, list]:
    return {prefix + k: list(v.shape) for k, v in module.state_dict().items()}


def _reference(name: str, section: str, prefixes=PREFIXES) -> Dict[str, list]:
    sd = json.loads((STATE_DICTS / f"{name}.json").read_text())[section]
    return {k: v["shape"] for k, v in sd.items() if k.startswith(prefixes)}


def _diff(ours: Dict[str, list], ref: Dict[str, list]) -> str:
    missing = sorted(set(ref) - set(ours))[:5]
    extra = sorted(set(ours) - set(ref))[:5]
    shapes = sorted(k for k in set(ours) & set(ref) if ours[k] != ref[k])[:5]
    return f"missing {missing}, unexpected {extra}, wrong shapes {shapes}"


@needs_reference
@pytest.mark.parametrize("name", CONFIGS)
def test_state_dict_matches_acids_rave(name, clean_gin):
    built = _build_from_config(name)
    modules = {
        "discriminator.": built["discriminator"](n_channels=1),
        "audio_distance.": built["audio_distance"](),
        "multiband_audio_distance.": built["multiband_audio_distance"](),
    }
    ours = {}
    for prefix, module in modules.items():
        ours.update(_shapes(module, prefix))
    ref = _reference(name, BEFORE)
    assert ours == ref, _diff(ours, ref)

    after = {}
    for prefix, module in modules.items():
        after.update(_shapes(remove_weight_norm(module), prefix))
    ref_after = _reference(name, AFTER)
    assert after == ref_after, _diff(after, ref_after)


@needs_reference
def test_discrete_rvq_matches_acids_rave(clean_gin):
    built = _build_from_config("discrete")
    rvq = built["vq"]()
    ours = _shapes(rvq, "encoder.rvq.")
    ref = _reference("discrete", BEFORE, prefixes=("encoder.rvq.",))
    assert ours == ref, _diff(ours, ref)
    assert len(rvq.layers) == 16
    assert float(rvq.layers[0]._codebook.inited) == 0.0  # k-means on the first batch


@needs_reference
@pytest.mark.parametrize("name,count", [("v1", 7_751_619), ("v2", 27_130_952),
                                        ("v3", 42_519_760), ("brave", 1_940_451)])
def test_discriminator_parameter_count(name, count, clean_gin):
    disc = _build_from_config(name)["discriminator"](n_channels=1)
    assert sum(p.numel() for p in disc.parameters()) == count


def test_configurable_names_resolve(clean_gin):
    gin.parse_config("""
        rave.core.MultiScaleSTFT.scales = [256, 128]
        rave.core.MultiScaleSTFT.sample_rate = 16000
        rave.core.MultiScaleSTFT.num_mels = None
        rave.core.MultiScaleSTFT.normalized = False
        rave.core.MultiScaleSTFT.magnitude = True
        rave.core.AudioDistanceV1.log_epsilon = 1e-7
        rave.core.AudioDistanceV1.multiscale_stft = @rave.core.MultiScaleSTFT
        feature_matching/rave.core.mean_difference.relative = True
        feature_matching/rave.core.mean_difference.norm = 'L1'
        rave.core.get_augmented_latent_size.latent_size = 16
        rave.core.get_augmented_latent_size.noise_augmentation = 8
        rave.quantization.ResidualVectorQuantization.num_quantizers = 2
        rave.quantization.ResidualVectorQuantization.dim = 4
        rave.quantization.ResidualVectorQuantization.codebook_size = 8
        rave.descript_discriminator.DescriptDiscriminator.rates = []
        rave.descript_discriminator.DescriptDiscriminator.sample_rate = 44100
        rave_core_test_discriminators.probe.discriminator = @feature_matching/rave.core.mean_difference
        rave_core_test_discriminators.probe.audio_distance = @rave.core.get_augmented_latent_size()
    """)
    probe = _probe()
    assert probe["audio_distance"] == 24
    fm = probe["discriminator"]
    t, v = torch.tensor([2., -2.]), torch.tensor([1., -1.])
    assert torch.isclose(fm(t, v), torch.tensor(0.5))  # L1 / mean|target|
    assert losses.AudioDistanceV1().multiscale_stft.scales == [256, 128]
    assert len(Q.ResidualVectorQuantization().layers) == 2


# ------------------------------------------------------------------------------ GAN losses
def test_hinge_gan_known_values():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.5])
    dis, gen = losses.hinge_gan(real, fake)
    # relu(1 - real) = [0, .5, 2], relu(1 + fake) = [0, 1, 2.5]
    assert torch.isclose(dis, torch.tensor(6.0 / 3))
    assert torch.isclose(gen, torch.tensor(0.5 / 3))


def test_ls_and_nonsaturating_gan():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.0])
    dis, gen = losses.ls_gan(real, fake)
    assert torch.isclose(dis, torch.tensor((0 + 4 + 0 + 4) / 2.0))
    assert torch.isclose(gen, torch.tensor((1 + 1) / 2.0))
    dis, gen = losses.nonsaturating_gan(torch.zeros(3), torch.zeros(3))
    assert torch.isclose(dis, torch.tensor(2 * math.log(2)))
    assert torch.isclose(gen, torch.tensor(math.log(2)))


def test_mean_difference():
    t, v = torch.tensor([1.0, -3.0]), torch.tensor([0.0, -1.0])
    assert torch.isclose(losses.mean_difference(t, v), torch.tensor(1.5))
    assert torch.isclose(losses.mean_difference(t, v, norm="L2"), torch.tensor(2.5))
    assert torch.isclose(losses.mean_difference(t, v, norm="L1", relative=True),
                         torch.tensor(1.5 / 2))
    assert torch.isclose(losses.mean_difference(t, v, norm="L2", relative=True),
                         torch.tensor(2.5 / 5))
    with pytest.raises(ValueError):
        losses.mean_difference(t, v, norm="L3")


def test_feature_matching_loss_follows_training_step():
    r = [[torch.ones(2), torch.full((2,), 2.0), torch.zeros(2)],
         [torch.ones(3), torch.ones(3)]]
    f = [[torch.zeros(2), torch.full((2,), 1.0), torch.ones(2)],
         [torch.ones(3), torch.zeros(3)]]
    l1 = lambda a, b: (a - b).abs().mean()  # noqa: E731
    # skip 0: disc 0 -> (1 + 1 + 1) / 3 = 1, disc 1 -> (0 + 1) / 2; mean = 0.75
    assert torch.isclose(losses.feature_matching_loss(r, f, l1, 0), torch.tensor(0.75))
    # skip 1: disc 0 -> (1 + 1) / 2, disc 1 -> 1 / 1; mean = 1
    assert torch.isclose(losses.feature_matching_loss(r, f, l1, 1), torch.tensor(1.0))


def test_split_features_and_adversarial_losses():
    feats = [[torch.arange(4.0).reshape(4, 1), torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])]]
    real, fake = losses.split_features(feats)
    assert real[0][0].flatten().tolist() == [0.0, 1.0] and fake[0][0].flatten().tolist() == [2.0, 3.0]
    dis, gen, pr, pf = losses.adversarial_losses(real, fake, losses.hinge_gan)
    assert torch.isclose(dis, torch.tensor(0.0)) and torch.isclose(gen, torch.tensor(1.0))
    assert torch.isclose(pr, torch.tensor(1.0)) and torch.isclose(pf, torch.tensor(-1.0))


def test_augmented_latent_size():
    assert losses.get_augmented_latent_size(128, 128) == 256


# ------------------------------------------------------------------------------ spectra
def test_stft_of_sine_peaks_at_its_bin():
    sr, n_fft, k = 44100, 1024, 37
    t = torch.arange(8192) / sr
    x = torch.sin(2 * math.pi * (k * sr / n_fft) * t)
    spec = losses.Spectrogram(n_fft, hop_length=n_fft // 4)(x.reshape(1, 1, -1))
    assert spec.shape == (1, 1, n_fft // 2 + 1, 1 + 8192 // (n_fft // 4))  # centred frames
    mag = spec.abs()[0, 0, :, 4:-4].mean(-1)
    assert int(mag.argmax()) == k
    window = torch.hann_window(n_fft)
    assert torch.allclose(mag[k], window.sum() / 2, rtol=1e-3)
    # normalized=True divides by the window's energy, as torchaudio's "window" norm
    norm = losses.Spectrogram(n_fft, hop_length=n_fft // 4, normalized=True)(x)
    assert torch.allclose(norm, spec[0, 0] / window.pow(2).sum().sqrt(), atol=1e-4)


def test_uncentred_stft_frame_is_a_windowed_dft():
    x = torch.randn(2, 3, 600, dtype=torch.float64)
    spec = losses.Spectrogram(256, hop_length=64, center=False)
    spec.window = spec.window.double()
    out = spec(x)
    assert out.shape == (2, 3, 129, 1 + (600 - 256) // 64)
    frame = x[1, 2, 128:384] * torch.hann_window(256, dtype=torch.float64)
    assert torch.allclose(out[1, 2, :, 2], torch.fft.rfft(frame), atol=1e-9)


def test_multiscale_stft():
    msstft = losses.MultiScaleSTFT([512, 128], sample_rate=44100)
    assert sorted(msstft.state_dict()) == ["stfts.0.window", "stfts.1.window"]
    out = msstft(torch.randn(2, 3, 4096))
    assert [o.shape for o in out] == [(6, 257, 33), (6, 65, 129)]
    assert all((o >= 0).all() for o in out)
    cplx = losses.MultiScaleSTFT([128], sample_rate=44100, magnitude=False)(torch.randn(1, 1, 512))
    assert cplx[0].shape == (1, 65, 17, 2)
    mel = losses.MultiScaleSTFT([512], sample_rate=16000, num_mels=40)
    assert mel.mel_scales[0].mel.shape == (40, 257)
    assert mel(torch.randn(1, 1, 2048))[0].shape == (1, 40, 17)


def test_mel_filterbank_is_slaney():
    fb = losses.mel_filterbank(16000, 512, 40)
    assert fb.shape == (40, 257) and (fb >= 0).all()
    peaks = fb.argmax(1)
    assert (peaks[1:] >= peaks[:-1]).all()  # ordered from low to high
    # Slaney normalisation: every triangle has unit area in Hz (up to sampling)
    area = fb.sum(1) * (16000 / 512)
    assert abs(float(area[20:].mean()) - 1.0) < 0.05


def test_audio_distance_v1_zero_for_identical_and_grows_with_noise():
    torch.manual_seed(0)
    dist = losses.AudioDistanceV1(lambda: losses.MultiScaleSTFT([2048, 512, 128], 44100), 1e-7)
    x = torch.randn(2, 1, 8192)
    assert float(dist(x, x)["spectral_distance"]) == 0.0
    noise = torch.randn_like(x)
    values = [float(dist(x, x + a * noise)["spectral_distance"]) for a in (0.01, 0.1, 1.0)]
    assert 0 < values[0] < values[1] < values[2]


# ------------------------------------------------------------------------------ discriminators
def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _period_convnet(**kw):
    return D.ConvNet(out_size=1, capacity=4, n_layers=3, kernel_size=(5, 1), stride=4,
                     conv=nn.Conv2d, **kw)


def test_multi_period_discriminator_shapes():
    mpd = D.MultiPeriodDiscriminator([2, 3, 5], _period_convnet, n_channels=1)
    x = torch.randn(2, 1, 1001)
    out = mpd(x)
    assert len(out) == 3
    for maps, p in zip(out, [2, 3, 5]):
        assert len(maps) == 4  # three strided convs and the score
        rows = math.ceil(1001 / p)
        for i, m in enumerate(maps[:-1]):
            rows = _conv_out(rows, 5, 4, 2)
            assert m.shape == (2, 4 * 2**i, rows, p)
        assert maps[-1].shape == (2, 1, rows, p)


def test_multi_scale_and_combined_discriminators():
    def scale_net(**kw):
        return D.ConvNet(out_size=1, capacity=4, n_layers=2, kernel_size=15, stride=4,
                         conv=nn.Conv1d, **kw)

    msd = lambda n_channels: D.MultiScaleDiscriminator(3, scale_net, n_channels)  # noqa: E731
    mpd = lambda n_channels: D.MultiPeriodDiscriminator([2, 3], _period_convnet, n_channels)  # noqa: E731
    combined = D.CombineDiscriminators([mpd, msd], n_channels=2)
    out = combined(torch.randn(2, 2, 1024))
    assert len(out) == 5
    lengths = [1024, 512, 256]
    for maps, n in zip(out[2:], lengths):
        n1 = _conv_out(n, 15, 4, 7)
        assert [m.shape for m in maps] == [(2, 4, n1), (2, 8, _conv_out(n1, 15, 4, 7)),
                                           (2, 1, _conv_out(n1, 15, 4, 7))]


def test_spectral_discriminators_run():
    mssd = D.MultiScaleSpectralDiscriminator(
        [256, 128], lambda n_channels: D.EncodecConvNet(4, n_channels))
    out = mssd(torch.randn(2, 1, 2048))
    assert len(out) == 2 and len(out[0]) == 6
    assert out[0][-1].shape[:2] == (2, 1)
    assert sorted(k for k in mssd.state_dict() if k.startswith("specs")) == [
        "specs.0.window", "specs.1.window"]

    def net1d(in_size, out_size):
        return D.ConvNet(in_size, out_size, capacity=4, n_layers=2, kernel_size=3, stride=1,
                         conv=nn.Conv1d)

    out = D.MultiScaleSpectralDiscriminator1d([256], net1d)(torch.randn(2, 1, 2048))
    assert out[0][-1].shape == (2, 1, 1 + (2048 - 256) // 64)


def test_descript_discriminator_outputs():
    torch.manual_seed(0)
    disc = D.DescriptDiscriminator(rates=[2], periods=[2, 3], fft_sizes=[256], sample_rate=44100)
    x = torch.randn(1, 1, 4096)
    out = disc(x)
    assert [len(m) for m in out] == [6, 6, 7, 26]
    assert out[0][-1].shape[:2] == (1, 1) and out[0][-1].shape[-1] == 2
    assert out[2][-1].shape == (1, 1, 4096 // 2 // 4**4)
    assert out[3][-1].shape == (1, 1, 1 + 4096 // 64, sum(
        math.ceil(math.ceil(math.ceil((hi - lo) / 2) / 2) / 2)
        for lo, hi in disc.discriminators[3].bands))
    assert "discriminators.2.downsampler" in disc.state_dict()
    # scale and DC offset do not change the decision
    out2 = disc(3 * x + 1)
    assert torch.allclose(out[0][-1], out2[0][-1], atol=1e-4)


# ------------------------------------------------------------------------------ quantization
def _rvq_with_codebooks(num_quantizers=2, dim=4, size=8, seed=0):
    torch.manual_seed(seed)
    rvq = Q.ResidualVectorQuantization(num_quantizers, dim=dim, codebook_size=size)
    for layer in rvq.layers:
        cb = layer._codebook
        codes = torch.randn(size, dim)
        cb.embed.copy_(codes)
        cb.embed_avg.copy_(codes)
        cb.cluster_size.fill_(10.0)
        cb.inited.fill_(1.0)
    return rvq


def test_rvq_reconstructs_a_codebook_vector_exactly():
    rvq = _rvq_with_codebooks().eval()
    rvq.layers[1]._codebook.embed[3] = 0.0  # the residual of an exact code is zero
    code = rvq.layers[0].codebook[5]
    x = code.reshape(1, 4, 1).repeat(2, 1, 3)  # (batch, dim, time)
    q, loss, idx = rvq(x)
    assert torch.equal(q, x)
    assert idx.shape == (2, 2, 3) and (idx[:, 0] == 5).all() and (idx[:, 1] == 3).all()
    assert float(loss) == 0.0
    assert torch.equal(rvq.encode(x), idx)
    assert torch.equal(rvq.decode(idx), x)


def test_rvq_commitment_loss_zero_for_a_code_in_training():
    rvq = _rvq_with_codebooks(num_quantizers=1).train()
    code = rvq.layers[0].codebook[2].clone()
    x = code.reshape(1, 4, 1).repeat(1, 1, 5).requires_grad_()
    q, loss, idx = rvq(x)
    assert torch.equal(q.detach(), x.detach()) and (idx == 2).all()
    assert loss.item() == 0.0 and loss.requires_grad
    q.sum().backward()  # straight-through: identity gradient
    assert torch.equal(x.grad, torch.ones_like(x))

    y = (code + 0.5).reshape(1, 4, 1).repeat(1, 1, 5)
    rvq.layers[0]._codebook.embed.copy_(rvq.layers[0]._codebook.embed_avg)
    _, loss, _ = rvq(y)
    assert loss.item() > 0


def test_rvq_training_updates_codebook_by_ema_and_kmeans_init():
    torch.manual_seed(0)
    # As acids-rave, k-means init sets embed_avg to the centroids (not their sums), so the
    # codes first shrink and then converge at the EMA's pace: a fast decay keeps this short.
    rvq = Q.ResidualVectorQuantization(2, dim=3, codebook_size=4, kmeans_iters=5,
                                       decay=0.5).train()
    centres = torch.tensor([[5., 0, 0], [0, 5., 0], [0, 0, 5.], [-5., 0, 0]])
    z = centres[torch.randint(0, 4, (256,))] + 0.01 * torch.randn(256, 3)
    x = z.t().reshape(1, 3, 256)
    before = copy.deepcopy(rvq.state_dict())
    rvq(x)
    cb = rvq.layers[0]._codebook
    assert float(cb.inited) == 1.0 and not torch.equal(cb.embed, before["layers.0._codebook.embed"])
    for _ in range(20):
        rvq(x)
    rvq.eval()
    q, _, _ = rvq(x)
    assert (q - x).abs().mean() < 0.1
    # with projections (codebook_dim != dim), keys gain project_in / project_out
    keys = Q.ResidualVectorQuantization(1, dim=8, codebook_size=4, codebook_dim=2).state_dict()
    assert "layers.0.project_in.weight" in keys and "layers.0.project_out.bias" in keys


def test_wasserstein_and_spherical_regularisations():
    """WasserteinEncoder: MMD near 0 for standard normal frames, large for shifted ones;
    noise channels appended. SphericalEncoder: unit frames, finite where a frame is all
    zeros (acids-rave's division gives NaN there, which ended a CAPACITY 8 run by step 4),
    no regularisation term."""
    from rave_core.models.encoders import SphericalEncoder, WasserteinEncoder

    g = torch.Generator().manual_seed(0)
    wass = WasserteinEncoder(lambda n_channels: torch.nn.Identity(), noise_augmentation=3)
    normal = torch.randn(4, 8, 64, generator=g)
    z, reg = wass.reparametrize(normal)
    assert z.shape == (4, 11, 64) and torch.equal(z[:, :8], normal)
    _, far = wass.reparametrize(normal + 3)
    assert float(reg) < 0.05 < float(far)

    sphere = SphericalEncoder(lambda n_channels: torch.nn.Identity())
    z = torch.randn(2, 8, 16, generator=g)
    z[1, :, 5] = 0
    unit, reg = sphere.reparametrize(z)
    assert torch.isfinite(unit).all() and float(reg) == 0
    norms = unit.norm(dim=1)
    assert float(norms[1, 5]) == 0
    norms[1, 5] = 1
    torch.testing.assert_close(norms, torch.ones(2, 16))
