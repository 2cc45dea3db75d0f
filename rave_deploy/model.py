"""The export-ready model every target serves: one streaming core, no second implementation.

:class:`DeployModel` wraps a trained RAVE as hosts use it (acids-rave's export
conventions):

* ``encode``: audio -> latent, reparametrised (or the posterior mean when
  ``deterministic``), centred on the learned latent mean, rotated by the learned PCA, and
  cut to the first ``latent_size`` dimensions, those that reach ``fidelity`` of the
  variance (rounded up to a power of two, as RAVE does).
* ``decode``: the inverse: fill the dimensions beyond the cut (noise, or zeros when
  ``deterministic``, i.e. the learned mean), rotate back, add the mean, decode.
* discrete (RVQ) models: ``encode`` returns one code index per quantiser (as floats),
  ``decode`` sums the codes of the indices it is given (:mod:`rave_deploy.codebooks`),
  as acids-rave exports them; ``fidelity`` does not apply. Likewise for the other
  latents acids-rave trains: a ``wasserstein`` model's latent as it is, a ``spherical``
  one's as its ``D - 1`` angles (:mod:`rave_deploy.spherical_latent`).
* weight norm folded, noise branches off when ``deterministic``, streaming layers set up
  for exact block-by-block processing (their state owned by each layer).

TorchScript targets script it (inside nn~'s ``Module``); ONNX targets trace it with the
state of :func:`rave_core.nn.streaming_layers` passed in and out explicitly.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from rave_core.models.encoders import DiscreteEncoder, SphericalEncoder, VariationalEncoder
from rave_core.models.rave import RAVE
from rave_core.nn.conv import Conv1d, ConvTranspose1d
from rave_core.nn.streaming import set_matmul_streaming, set_streaming, streaming_layers
from rave_core.nn.weight_norm import copy_model, remove_weight_norm

from .codebooks import ResidualCodebooks
# the values of --cpu-kernels (a module of their own: the CLI offers them without torch)
from .cpu_kernels import CPU_KERNELS
from .latent_folding import decoder_input_conv, encoder_output_conv, fold_latent_path
from .spherical_latent import from_angles, to_angles
from .style_transfer import freeze_adain, make_style_learnable


class DeployError(ValueError):
    """A model or option a target cannot serve; the message says why and what to do."""


def cut_latent_size(fidelity: torch.Tensor, threshold: float) -> Tuple[int, bool]:
    """Latent dimensions kept for ``threshold`` of the variance, and whether the latent
    statistics were ever computed (an all-zero ``fidelity`` means they were not)."""
    f = fidelity.detach().cpu().numpy()
    trained = bool(np.any(f > 0))
    reached = f > threshold
    if trained and not reached.any():
        return len(f), trained  # the threshold is never passed: every dimension is needed
    n = max(int(np.argmax(reached)), 1)
    return min(2**math.ceil(math.log2(n)), len(f)), trained


def fold_batch_norms(module: nn.Module) -> int:
    """Fold every eval-mode ``BatchNorm1d`` that directly follows a convolution in a
    ``Sequential`` into that convolution (v1 / BRAVE encoders). Returns how many."""
    folded = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(1, len(seq)):
            bn, conv = seq[i], seq[i - 1]
            if not (isinstance(bn, nn.BatchNorm1d) and isinstance(conv, Conv1d)):
                continue
            with torch.no_grad():
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                conv.weight.mul_(scale[:, None, None])
                conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
            seq[i] = nn.Identity()
            folded += 1
    return folded


# Host block the TorchScript weight layout is tuned for unless told (`--block-size`): the
# block RAVE models most often run at (v2's ratio). Only layers outside the row sums'
# range that compute 3 frames or fewer change layout (v2, v2_small); BRAVE has none, so
# its file is the same at any block (docs/streaming.md, "Weights laid out ...").
DEFAULT_TUNED_BLOCK = 2048


class DeployModel(nn.Module):
    """Export wrapper of a :class:`~rave_core.models.rave.RAVE`.

    Args:
        model: the trained model (left untouched: a copy is prepared).
        fidelity: share of latent variance the exported latent keeps (0 < f <= 1).
        deterministic: posterior mean instead of a sample, zeros instead of noise, no
            noise branch: the same input always gives the same output.
        streaming: set the layers up for block-by-block processing.
        matmul_streaming: compute short streaming blocks as matrix products (faster in
            TorchScript on CPU; ONNX runtimes fuse convolutions better themselves).
        tuned_block: with ``matmul_streaming``, the block (samples) whose per-layer frame
            counts decide each weight's memory layout (default :data:`DEFAULT_TUNED_BLOCK`;
            speed only, every block gives the same output).
        fold_latent: with ``deterministic``, fold the latent path (posterior mean, PCA,
            cut, fill) into the encoder's last and decoder's first convolution
            (:mod:`rave_deploy.latent_folding`): fewer weights to read per call, same
            output up to float rounding. ``decode`` then appends a channel of ones to its
            input itself. Ignored (``latent_folded`` stays False) where the model's
            layers do not have that shape, and for models that are not variational.
        cpu_kernels: with ``matmul_streaming``, one of :data:`CPU_KERNELS`.
        learnable_style: v3's AdaIN layers become
            :class:`~rave_deploy.style_transfer.StyleTransfer` layers a host can teach
            (TorchScript files); otherwise they apply what the checkpoint learned and
            nothing more (ONNX, the eager reference).

    Shapes (``latent_size``: the kept dimensions; a discrete model's quantiser count, a
    spherical model's ``D - 1`` angles): ``encode``: ``(batch, channels, N) -> (batch,
    latent_size, N / ratio)``; ``decode``: ``(batch, latent_size, T) -> (batch, channels,
    T * ratio)``;
    ``forward``: ``(batch, channels, N) -> (batch, channels, N)``.
    """

    def __init__(self, model: RAVE, fidelity: float = 0.95, deterministic: bool = False,
                 streaming: bool = True, matmul_streaming: bool = False,
                 tuned_block: Optional[int] = None, fold_latent: bool = False,
                 cpu_kernels: str = "portable", learnable_style: bool = False) -> None:
        super().__init__()
        if not 0 < fidelity <= 1:
            raise DeployError(f"--fidelity must be in (0, 1], got {fidelity}")
        if cpu_kernels not in CPU_KERNELS:
            raise DeployError(f"cpu_kernels must be one of {', '.join(CPU_KERNELS)}, "
                              f"got {cpu_kernels!r}")
        model = copy_model(model).eval()
        remove_weight_norm(model)
        fold_batch_norms(model)  # fewer ops per streaming call, same function
        if learnable_style:
            make_style_learnable(model)  # found again by style_transfer.style_layers
        else:
            freeze_adain(model)
        model.set_noise(not deterministic)
        delays = model.streaming_delays()

        self.pqmf = model.pqmf
        self.variational = isinstance(model.encoder, VariationalEncoder)
        self.spherical = isinstance(model.encoder, SphericalEncoder)
        discrete = isinstance(model.encoder, DiscreteEncoder)
        # discrete: the convolutional encoder, then the codebooks (the quantiser's
        # training machinery stays behind); None for every other model
        self.encoder = model.encoder.encoder if discrete else model.encoder
        self.codebooks: Optional[ResidualCodebooks] = (
            ResidualCodebooks(model.encoder.rvq) if discrete else None)
        self.decoder = model.decoder
        self.register_buffer("latent_pca", model.latent_pca.clone())
        self.register_buffer("latent_mean", model.latent_mean.clone())
        self.register_buffer("fidelity", model.fidelity.clone())

        self.sr = int(model.sr)
        self.n_channels = int(model.n_channels)
        self.ratio = int(model.ratio)
        self.full_latent_size = int(model.latent_size)
        self.decoder_latent_size = int(model.decoder_latent_size)
        self.noise_augmentation = self.decoder_latent_size - self.full_latent_size
        self.deterministic = deterministic
        if self.codebooks is not None:
            # hosts see one code index per quantiser, none cut (the RAVE VST sizes its
            # latent by full_latent_size); noise_augmentation above counts the codes'
            # dimensions, which decode feeds the decoder
            self.full_latent_size = self.codebooks.num_quantizers
        if self.spherical:
            self.full_latent_size -= 1  # the angles of a direction: one fewer, none cut
        self.latent_size = self.full_latent_size
        self.latent_statistics_trained = True
        if self.variational:
            self.latent_size, trained = cut_latent_size(model.fidelity, fidelity)
            self.latent_statistics_trained = trained
            if not trained:
                warnings.warn(
                    "this checkpoint's latent statistics were never computed (its fidelity "
                    "curve is all zeros): the exported latent falls to 1 dimension. Train "
                    "past a validation step, or export with --fidelity 1 to keep all "
                    f"{self.full_latent_size} dimensions.", stacklevel=2)
                if fidelity >= 1:
                    self.latent_size = self.full_latent_size
            self.latent_size = min(self.latent_size, self.full_latent_size)
        if self.codebooks is not None and not self.codebooks.initialised:
            warnings.warn(
                "this checkpoint's codebooks were never initialised (they are set by k-means "
                "on the first training batch): every latent maps to code 0 and decode plays "
                "one sound. Export a checkpoint saved after training started.", stacklevel=2)
        self.fidelity_threshold = float(fidelity)
        self.latent_folded = False
        if fold_latent:
            self.latent_folded = self._fold_latent()
        self.encode_delay = int(delays.encode)
        self.decode_delay = int(delays.decode)
        self.latency_samples = int(delays.forward)
        self.streaming = streaming
        set_matmul_streaming(self, matmul_streaming)
        set_streaming(self, streaming)
        self.tuned_block = 0  # samples; set when weights are laid out for a block
        self.packed_layers = 0  # layers on oneDNN's packed products, see cpu_kernels
        if matmul_streaming and streaming:
            self.lay_out_weights_for_block(tuned_block or DEFAULT_TUNED_BLOCK)
            if cpu_kernels == "onednn":
                self.pack_products_with_onednn()

    def pack_products_with_onednn(self) -> int:
        """Let every layer with a large enough weight compute its products of more than
        a few rows through oneDNN, on a weight it packs at its first such call (see
        :data:`rave_core.nn.conv.MIN_WEIGHTS_PACKED`). Needs this torch to have oneDNN;
        the file then needs the host's libtorch to have it too. Returns the layer count;
        with none (every weight below the threshold) the model stays ``portable``, with a
        warning (the user asked for oneDNN)."""
        if not torch.backends.mkldnn.is_available():
            raise DeployError("this torch was built without oneDNN (torch.backends.mkldnn): "
                              "export with --cpu-kernels portable")
        self.packed_layers = sum(bool(m.use_packed_product()) for m in self.modules()
                                 if hasattr(m, "use_packed_product"))
        if not self.packed_layers:
            from rave_core.nn import conv  # (its threshold read now: tests lower it)
            warnings.warn(
                f"--cpu-kernels onednn: no layer of this model has a weight of "
                f"{conv.MIN_WEIGHTS_PACKED} values or more (in an ungrouped convolution), "
                "where oneDNN's packed weights pay: the file is portable (its sidecar says "
                '"cpu_kernels": "portable") and loads in every libtorch', stacklevel=2)
        return self.packed_layers

    @property
    def cpu_kernels(self) -> str:
        """The :data:`CPU_KERNELS` the model's products use: ``onednn`` once a layer packs
        its weight, else ``portable``."""
        return "onednn" if self.packed_layers else "portable"

    @property
    def latent_kind(self) -> str:
        """What the exported latent channels hold: ``variational`` (PCA coordinates of the
        posterior), ``discrete`` (code indices), ``spherical`` (angles) or
        ``wasserstein`` (the latent as it is)."""
        if self.variational:
            return "variational"
        if self.codebooks is not None:
            return "discrete"
        return "spherical" if self.spherical else "wasserstein"

    def forget_packed_weights(self) -> None:
        """Drop every packed weight (they cannot be saved; each layer packs again at its
        next product). Done before scripting."""
        for m in self.modules():
            if hasattr(m, "forget_packed_weight"):
                m.forget_packed_weight()

    def _fold_latent(self) -> bool:
        if not self.variational:
            return False  # no posterior, PCA or cut: codes, angles or the latent as it is
        if not self.deterministic:
            raise DeployError("fold_latent needs a deterministic variational model: a sampled "
                              "latent or noise fill cannot be folded into the convolutions")
        enc = encoder_output_conv(self.encoder)
        dec = decoder_input_conv(self.decoder, self.decoder_latent_size)
        if enc is None or dec is None or enc.out_channels != 2 * self.full_latent_size:
            return False
        fold_latent_path(enc, dec, self.latent_pca, self.latent_mean, self.latent_size)
        return True

    # ---------------------------------------------------------------- methods
    def _analysis(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        bands = self.pqmf(x.reshape(batch * self.n_channels, 1, x.shape[-1]))
        return bands.reshape(batch, -1, bands.shape[-1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(self._analysis(x.contiguous()))
        if self.latent_folded:
            return z  # already the kept PCA coordinates of the posterior mean
        if not self.variational:
            return self.latent_of(z)
        mean, scale = z.chunk(2, 1)
        if self.deterministic:
            z = mean
        else:
            std = nn.functional.softplus(scale) + 1e-4
            # a contiguous draw: `mean` is a strided view when streaming time-major,
            # and filling a strided tensor draws one value at a time (BRAVE at 2048:
            # 59 us against 10)
            z = mean + std * torch.randn_like(mean, memory_format=torch.contiguous_format)
        return self.pca_coordinates(z)[:, :self.latent_size]

    def pca_coordinates(self, z: torch.Tensor) -> torch.Tensor:
        """A posterior sample or mean ``(batch, D, frames)`` as coordinates on all ``D``
        axes of the latent PCA (``encode`` keeps the first ``latent_size``)."""
        # (D, D) x (batch, D, T): a matrix product, not a 1x1 convolution kernel call
        return torch.matmul(self.latent_pca, z - self.latent_mean.unsqueeze(-1))

    def latent_of(self, z: torch.Tensor) -> torch.Tensor:
        """The exported latent of a model that is not variational, from its encoder's
        output ``(batch, D, frames)``: code indices (discrete), angles (spherical, ``D -
        1`` of them) or the output itself (wasserstein)."""
        if self.codebooks is not None:
            return self.codebooks.encode(z)
        if self.spherical:
            return to_angles(z)
        return z.contiguous()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = z.contiguous()
        if self.latent_folded:
            # the decoder's first convolution reads the coordinates and a ones channel
            # that carries the latent mean (zero in padding, as a zero latent would be)
            z = torch.cat([z, torch.ones_like(z[:, :1])], 1)
        elif self.codebooks is not None:
            z = self.codebooks.decode(z)
        elif self.spherical:
            z = from_angles(z)
        elif self.variational:
            missing = self.full_latent_size - z.shape[1]
            if missing > 0:
                if self.deterministic:
                    fill = torch.zeros(z.shape[0], missing, z.shape[-1], dtype=z.dtype, device=z.device)
                else:
                    fill = torch.randn(z.shape[0], missing, z.shape[-1], dtype=z.dtype, device=z.device)
                z = torch.cat([z, fill], 1)
            z = torch.matmul(self.latent_pca.t(), z)
            z = z + self.latent_mean.unsqueeze(-1)
        if self.noise_augmentation > 0 and not self.latent_folded:
            noise = torch.zeros(z.shape[0], self.noise_augmentation, z.shape[-1], dtype=z.dtype, device=z.device)
            if not self.deterministic:
                noise = torch.randn_like(noise)
            z = torch.cat([z, noise], 1)
        y = self.decoder(z)
        batch = y.shape[0]
        y = self.pqmf.inverse(y.reshape(batch * self.n_channels, -1, y.shape[-1]))
        return y.reshape(batch, self.n_channels, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    # ---------------------------------------------------------------- state
    def state_layers(self) -> List[Tuple[str, nn.Module]]:
        """Stateful layers, in the fixed order of explicit state tensors."""
        return streaming_layers(self)

    def reset(self, batch_size: int = 1) -> None:
        """Back to silence (all streaming states zero)."""
        set_streaming(self, self.streaming, batch_size)

    def lay_out_weights_for_block(self, block: int) -> None:
        """Store each convolution's weights in the memory order its matrix product reads
        fastest for the frames it computes in one streaming call of ``block`` samples
        (see :meth:`Conv1d.lay_out_weight_for_matmul`). Speed only: any block size still
        gives the same output. ``block`` is rounded down to whole frames (at least one) and
        kept as ``tuned_block``. States are reset."""
        # a whole number of frames: hosts call with multiples of the ratio
        self.tuned_block = max(int(block) // self.ratio, 1) * self.ratio
        frames: Dict[nn.Module, int] = {}

        def record(layer: nn.Module, inputs, output: torch.Tensor) -> None:
            # rows of the layer's product: output frames (convolution), input frames
            # (transposed convolution)
            x = output if isinstance(layer, Conv1d) else inputs[0]
            frames[layer] = int(x.shape[0] * x.shape[-1])

        hooks = [m.register_forward_hook(record) for m in self.modules()
                 if isinstance(m, (Conv1d, ConvTranspose1d))]
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                self.forward(torch.zeros(1, self.n_channels, self.tuned_block))
        finally:
            for hook in hooks:
                hook.remove()
        for layer, n in frames.items():
            layer.lay_out_weight_for_matmul(n)
        self.reset()
