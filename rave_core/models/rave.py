"""The RAVE model: PQMF, encoder, decoder (and, for training, discriminator and losses).

Keys, buffers and methods are those users of acids-rave's ``rave.RAVE`` know; training
logic lives in :mod:`rave_core.training`, not here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import gin
import torch
import torch.nn as nn

from ..nn.conv import Conv1d
from ..nn.streaming import configure_delay, set_streaming
from .encoders import VariationalEncoder


@dataclass(frozen=True)
class StreamingDelays:
    """Delays of the streaming model relative to the offline one, in audio samples."""

    encode: int   # encode(x) in streaming == encode offline, `encode // ratio` frames late
    decode: int   # decode(z) in streaming == decode offline, this many samples late
    forward: int  # encode then decode


@gin.configurable(module="rave.model")
class RAVE(nn.Module):
    """A RAVE-family autoencoder.

    Shapes: ``encode``: ``(batch, channels, time) -> (batch, n_out * latent, time / ratio)``
    (the encoder's raw output, before reparametrisation); ``decode``:
    ``(batch, decoder_latent_size, frames) -> (batch, channels, frames * ratio)``, where
    ``decoder_latent_size`` is the latent plus any noise-augmentation channels that
    ``reparametrize`` appends; ``forward`` chains them with the encoder's reparametrisation.

    Arguments are acids-rave's (so that its configs bind); those only training uses are
    kept as attributes. ``n_bands`` is accepted for acids-rave's configs, unused (the band
    count is the PQMF's ``n_band``). ``build_discriminator=False`` skips the discriminator
    (export).
    """

    def __init__(self, latent_size: int, sampling_rate: int, encoder: Callable[..., nn.Module],
                 decoder: Callable[..., nn.Module], discriminator: Optional[Callable[..., nn.Module]] = None,
                 phase_1_duration: int = 1000000, gan_loss: Optional[Callable] = None,
                 valid_signal_crop: bool = False, feature_matching_fun: Optional[Callable] = None,
                 num_skipped_features: int = 0, audio_distance: Optional[Callable[[], nn.Module]] = None,
                 multiband_audio_distance: Optional[Callable[[], nn.Module]] = None,
                 n_bands: int = 16, balancer=None, weights: Optional[Dict[str, float]] = None,
                 warmup_quantize: Optional[int] = None,
                 pqmf: Optional[Callable[..., nn.Module]] = None, spectrogram=None,
                 update_discriminator_every: int = 2, n_channels: int = 1,
                 input_mode: str = "pqmf", output_mode: str = "pqmf",
                 audio_monitor_epochs: int = 1, enable_pqmf_encode: Optional[bool] = None,
                 enable_pqmf_decode: Optional[bool] = None, is_mel_input: Optional[bool] = None,
                 loss_weights=None, build_discriminator: bool = True) -> None:
        super().__init__()
        if enable_pqmf_encode is not None or enable_pqmf_decode is not None:
            input_mode = "pqmf" if enable_pqmf_encode else "raw"
            output_mode = "pqmf" if enable_pqmf_decode else "raw"
        if is_mel_input or input_mode != "pqmf" or output_mode != "pqmf":
            raise NotImplementedError(
                f"input_mode={input_mode!r} / output_mode={output_mode!r}: only PQMF models are supported")
        if pqmf is None:
            raise ValueError("RAVE needs a `pqmf` (set rave.model.RAVE.pqmf in the config)")
        self.pqmf = pqmf(n_channels=n_channels)
        self.encoder = encoder(n_channels=n_channels)
        self.decoder = decoder(n_channels=n_channels)
        self.discriminator = (discriminator(n_channels=n_channels)
                              if build_discriminator and discriminator is not None else None)
        if audio_distance is not None:
            self.audio_distance = audio_distance()
        if multiband_audio_distance is not None:
            self.multiband_audio_distance = multiband_audio_distance()

        self.register_buffer("latent_pca", torch.eye(latent_size))
        self.register_buffer("latent_mean", torch.zeros(latent_size))
        self.register_buffer("fidelity", torch.zeros(latent_size))
        self.register_buffer("receptive_field", torch.tensor([0, 0]).long())

        self.latent_size = latent_size
        self.sr = sampling_rate
        self.n_channels = n_channels
        # Training settings (read by rave_core.training).
        self.phase_1_duration = phase_1_duration
        self.gan_loss = gan_loss
        self.valid_signal_crop = valid_signal_crop
        self.feature_matching_fun = feature_matching_fun
        self.num_skipped_features = num_skipped_features
        self.update_discriminator_every = update_discriminator_every
        self.warmup_quantize = warmup_quantize
        self.weights = {"audio_distance": 1., "multiband_audio_distance": 1.,
                        "adversarial": 1., "feature_matching": 20.}
        self.weights.update(loss_weights if loss_weights is not None else (weights or {}))
        self._delays: Optional[StreamingDelays] = None

    # ------------------------------------------------------------------ inference
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Audio ``(batch, channels, time)`` -> raw encoder output ``(batch, n_out * latent, frames)``."""
        batch, channels, time = x.shape
        bands = self.pqmf(x.reshape(batch * channels, 1, time))
        return self.encoder(bands.reshape(batch, channels * bands.shape[1], -1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> audio ``(batch, channels, frames * ratio)``.

        The latent is ``(batch, decoder_latent_size, frames)``: the latent size plus the
        noise-augmentation channels (what ``reparametrize`` returns), not the encoder's
        latent size alone.
        """
        y = self.decoder(z)
        batch = y.shape[0]
        y = self.pqmf.inverse(y.reshape(batch * self.n_channels, -1, y.shape[-1]))
        return y.reshape(batch, self.n_channels, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder.reparametrize(self.encode(x))[0]
        return self.decode(z)

    def latent_mean_of(self, z: torch.Tensor) -> torch.Tensor:
        """The posterior mean of a raw encoder output (the output itself if not variational)."""
        if isinstance(self.encoder, VariationalEncoder):
            return z.chunk(2, 1)[0]
        return z

    # ----------------------------------------------------------------- structure
    @property
    def is_variational(self) -> bool:
        return isinstance(self.encoder, VariationalEncoder)

    @property
    def ratio(self) -> int:
        """Audio samples per latent frame (PQMF bands times the encoder's strides)."""
        r = self.pqmf.n_band
        for m in self.encoder.modules():
            if isinstance(m, Conv1d):
                r *= m.stride[0]
        return r

    @property
    def decoder_latent_size(self) -> int:
        """Channels the decoder takes (latent plus any noise augmentation)."""
        return int(self.decoder.latent_size)

    def streaming_delays(self) -> StreamingDelays:
        """Configure every streaming layer for exactness and return the delays."""
        if self._delays is None:
            z_frames = configure_delay(self.encoder, self.pqmf.configure_delay(0))
            decode = self.pqmf.configure_inverse_delay(configure_delay(self.decoder, 0))
            encode = z_frames * self.ratio
            self._delays = StreamingDelays(encode=encode, decode=decode, forward=encode + decode)
        return self._delays

    @property
    def latency_samples(self) -> int:
        """Delay of streaming ``forward`` against offline ``forward``, in samples."""
        return self.streaming_delays().forward

    def set_noise(self, enabled: bool) -> "RAVE":
        """Turn the decoder's filtered-noise branch on or off (off: deterministic decode)."""
        if hasattr(self.decoder, "noise_enabled"):
            self.decoder.noise_enabled = enabled
        return self

    def set_streaming(self, streaming: bool, batch_size: int = 1) -> "RAVE":
        """Switch to block-by-block processing (state starts from silence) or back.

        Unlike the bare :func:`rave_core.nn.streaming.set_streaming`, this first configures
        every delay line and strided-conv alignment (``streaming_delays``, through
        ``configure_delay``), so the streaming output is the offline one delayed by
        ``latency_samples``.
        """
        self.streaming_delays()
        set_streaming(self, streaming, batch_size)
        return self
