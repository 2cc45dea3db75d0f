"""One training step of RAVE's two-phase schedule (see :mod:`rave_core.training.trainer`).

:class:`RAVETrainer` holds the model, its optimisers and schedulers, and computes one step:
phase 1 reconstruction (spectral distances plus the KL term weighted by the beta warm-up),
phase 2 adversarial training of the decoder against the discriminator (updated on every
``update_discriminator_every``-th step instead of the generator). The loop around it
(data, validation, checkpoints, processes) is :func:`rave_core.training.trainer.train`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..losses import adversarial_losses, feature_matching_loss, split_features
from ..models.quantization import EuclideanCodebook
from .analysis import valid_signal_crop
from .distributed import DistContext
from .errors import TrainingError
from .schedule import BetaWarmup

GEN_LR, DIS_LR, BETAS = 1e-3, 1e-4, (.5, .9)
FINAL_LR_FACTOR = .1


def _analysis(pqmf: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(batch, channels, time)`` -> multiband ``(batch, channels * bands, time / bands)``."""
    batch, channels, time = x.shape
    return pqmf(x.reshape(batch * channels, 1, time)).reshape(batch, -1, time // pqmf.n_band)


class _Decoder(nn.Module):
    """Latent -> ``(y_multiband, y)``: the decoder and the PQMF synthesis.

    Phase 2's trainable generator (the frozen encoder runs outside it).
    """

    def __init__(self, pqmf: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.pqmf, self.decoder = pqmf, decoder

    def forward(self, z: torch.Tensor, channels: int) -> Tuple[torch.Tensor, torch.Tensor]:
        y_mb = self.decoder(z)
        batch = y_mb.shape[0]
        y = self.pqmf.inverse(y_mb.reshape(batch * channels, -1, y_mb.shape[-1]))
        return y_mb, y.reshape(batch, channels, -1)


class _Autoencoder(nn.Module):
    """Audio -> ``(x_multiband, y_multiband, y, regularisation)``: phase 1's generator.

    One module so that DDP sees one forward. Multiband signals are
    ``(batch, channels * bands, time / bands)``.
    """

    def __init__(self, pqmf: nn.Module, encoder: nn.Module, decoder: _Decoder) -> None:
        super().__init__()
        self.pqmf, self.encoder, self.decoder = pqmf, encoder, decoder

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x_mb = _analysis(self.pqmf, x)
        z, reg = self.encoder.reparametrize(self.encoder(x_mb))[:2]
        return (x_mb, *self.decoder(z, x.shape[1]), reg)


def _phase_1_has_unused_parameters(model: nn.Module) -> bool:
    """Parameters phase 1 leaves unused: v1's noise branch (added only once warmed up),
    an RVQ's projections while quantisation is off. DDP must be told."""
    if getattr(model.decoder, "use_noise", False):
        return True
    rvq = getattr(model.encoder, "rvq", None)
    start = getattr(model, "warmup_quantize", None)
    return rvq is not None and any(True for _ in rvq.parameters()) and (start is None or start > 0)


class RAVETrainer:
    """RAVE's training step, its optimisers and its validation, for one process.

    Args:
        model: a :class:`~rave_core.models.rave.RAVE` built with its discriminator and
            losses, already on ``device``.
        beta: the KL weight schedule.
        device: where the model lives.
        dist: the process group (DDP-wraps the generator and discriminator when enabled).
    """

    def __init__(self, model: nn.Module, beta: BetaWarmup, device: torch.device,
                 dist: Optional[DistContext] = None) -> None:
        self.model = model
        self.beta = beta
        self.device = device
        self.dist = dist or DistContext()
        # The PQMF filters are fixed: no gradient, not in any optimiser.
        model.pqmf.requires_grad_(False)
        self.decoder = _Decoder(model.pqmf, model.decoder)
        self.autoencoder = _Autoencoder(model.pqmf, model.encoder, self.decoder)
        gen_params = [*model.encoder.parameters(), *model.decoder.parameters()]
        self.gen_opt = torch.optim.Adam(gen_params, GEN_LR, BETAS)
        self.gen_sched = torch.optim.lr_scheduler.LinearLR(
            self.gen_opt, start_factor=1.0, end_factor=FINAL_LR_FACTOR,
            total_iters=max(1, int(model.phase_1_duration)))
        disc = model.discriminator
        self.dis_opt = torch.optim.Adam(disc.parameters(), DIS_LR, BETAS) if disc is not None else None

        self._wrapped: Dict[str, nn.Module] = {}
        self._phase: Optional[bool] = None  # warmed up? (None: not set yet)
        self._crop: Optional[Tuple[int, int]] = None

    def _ddp(self, key: str) -> nn.Module:
        """The module for ``key`` ("autoencoder", "decoder", "discriminator"), DDP-wrapped
        when distributed. Wrapped on first use: phase 2's modules only exist from phase 2,
        each with exactly the parameters its backward reaches."""
        module = {"autoencoder": self.autoencoder, "decoder": self.decoder,
                  "discriminator": self.model.discriminator}[key]
        if not self.dist.enabled:
            return module
        if key not in self._wrapped:
            ids = [self.device.index] if self.device.type == "cuda" else None
            unused = key == "autoencoder" and _phase_1_has_unused_parameters(self.model)
            # Buffers (RVQ codebooks, BatchNorm statistics) follow rank 0 at every forward
            # (DDP broadcasts them); phase 2's frozen encoder, outside any wrapper, takes
            # them in step().
            self._wrapped[key] = DistributedDataParallel(module, device_ids=ids,
                                                         find_unused_parameters=unused)
        return self._wrapped[key]

    def drop_ddp_wrappers(self) -> None:
        """Training is over: each DDP wrapper holds the process group, which
        :meth:`DistContext.close` frees (the model stays usable, unwrapped)."""
        self._wrapped.clear()

    # ---------------------------------------------------------------- schedule
    def is_adversarial(self, step: int) -> bool:
        """Whether 0-based step ``step`` is in phase 2."""
        return step >= int(self.model.phase_1_duration)

    def _set_phase(self, step: int) -> bool:
        warmed = self.is_adversarial(step)
        if warmed != self._phase:
            self.model.encoder.set_warmed_up(warmed)
            self.model.decoder.set_warmed_up(warmed)
            self._phase = warmed
        enabled = getattr(self.model.encoder, "enabled", None)
        start = self.model.warmup_quantize
        if enabled is not None and start is not None and step >= start and not bool(enabled):
            self.model.encoder.enabled = torch.ones_like(enabled)
        return warmed

    # ---------------------------------------------------------------- step
    def step(self, x: torch.Tensor, step: int, stop: bool = False) -> Tuple[Dict[str, float], bool]:
        """Train on batch ``x`` ``(batch, channels, n_signal)`` as 0-based step ``step``.

        Returns the logged values and whether any process asked to stop (``stop`` is this
        process's request). Raises :class:`TrainingError` on a non-finite loss, before
        any weight is touched.
        """
        model, weights = self.model, self.model.weights
        warmed = self._set_phase(step)
        beta = self.beta(step + 1)  # acids-rave counts warm-up steps from 1
        adversarial = warmed and model.discriminator is not None
        dis_step = adversarial and step % int(model.update_discriminator_every) == 0

        with torch.set_grad_enabled(not dis_step):
            if warmed:
                # Frozen encoder: it runs outside the trained module, without a graph. In
                # train mode it still updates its buffers (an RVQ's codebooks, BatchNorm's
                # statistics) from this rank's batch: rank 0's first, as DDP does in phase 1,
                # so that every rank quantises with the same codebooks.
                if self.dist.enabled:
                    self.dist.broadcast_tensors(self._buffers_trained(model.encoder))
                with torch.no_grad():
                    x_mb = _analysis(model.pqmf, x)
                    z_raw = model.encoder(x_mb)
                z, reg = model.encoder.reparametrize(z_raw)[:2]
                y_mb, y = self._ddp("decoder")(z, x.shape[1])
            else:
                x_mb, y_mb, y, reg = self._ddp("autoencoder")(x)
            y_mb, y = y_mb[..., :x_mb.shape[-1]], y[..., :x.shape[-1]]
            if self._crop is None:  # read once: the buffer lives on the device
                rf = [int(v) for v in model.receptive_field.tolist()]
                self._crop = (rf[0], rf[1]) if model.valid_signal_crop and sum(rf) else (0, 0)
            if sum(self._crop):
                x_mb = valid_signal_crop(x_mb, *self._crop)
                y_mb = valid_signal_crop(y_mb, *self._crop)
            losses: Dict[str, torch.Tensor] = {}
            for k, v in model.multiband_audio_distance(x_mb, y_mb).items():
                losses[f"multiband_{k}"] = weights["multiband_audio_distance"] * v
            for k, v in model.audio_distance(x, y).items():
                losses[f"fullband_{k}"] = weights["audio_distance"] * v
            losses["regularization"] = reg * beta

        extra: Dict[str, torch.Tensor] = {}
        if adversarial:
            # The discriminator's own step trains it on a detached reconstruction, through
            # DDP; the generator's step only needs gradients *through* it, so it calls the
            # plain module (its parameter gradients are discarded before its next step).
            disc = self._ddp("discriminator") if dis_step else model.discriminator
            real, fake = split_features(disc(torch.cat([x, y.detach() if dis_step else y], 0)))
            loss_dis, loss_adv, pred_real, pred_fake = adversarial_losses(real, fake, model.gan_loss)
            with torch.set_grad_enabled(not dis_step):
                fm = feature_matching_loss(real, fake, model.feature_matching_fun,
                                           int(model.num_skipped_features))
            losses["feature_matching"] = weights["feature_matching"] * fm
            losses["adversarial"] = weights["adversarial"] * loss_adv
            extra = {"loss_dis": loss_dis, "pred_real": pred_real, "pred_fake": pred_fake}

        # acids-rave weighs each term once more by `weights.get(name, 1)`: feature matching
        # ends up at weight**2 (20 -> 400 for v2). Kept, so configs train as they do there.
        loss_gen = sum(v * weights.get(k, 1.) for k, v in losses.items())
        loss = extra["loss_dis"] if dis_step else loss_gen

        # One host sync per step: the finite check and every logged value together.
        flags = torch.stack([(~torch.isfinite(loss)).float(),
                             torch.tensor(float(stop), device=loss.device)])
        flags = self.dist.any(flags)
        names = [*losses, *extra]
        values = torch.stack([t.detach().float().reshape(()) for t in [*losses.values(), *extra.values()]])
        flag_values, logged = flags.tolist(), values.tolist()
        logs = dict(zip(names, logged))
        if flag_values[0]:
            which = "discriminator" if dis_step else "generator"
            raise TrainingError(f"the {which} loss is not finite at step {step + 1}"
                                f"{self._where_not_finite(loss, logs)}")

        learning_rate = self.gen_opt.param_groups[0]["lr"]
        if dis_step:
            self.dis_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.dis_opt.step()
        else:
            self.gen_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.gen_opt.step()  # the frozen encoder has no gradient: Adam skips it
        self.gen_sched.step()
        logs["beta_factor"] = beta
        logs["learning_rate"] = learning_rate
        return logs, bool(flag_values[1])

    @staticmethod
    def _buffers_trained(module: nn.Module) -> List[torch.Tensor]:
        """The buffers of ``module`` that a forward in train mode updates: the RVQ
        codebooks' and BatchNorm's statistics (not the streaming states, the fast path's
        indices or v3's style buffers, which only change outside training)."""
        return [buffer for layer in module.modules()
                if isinstance(layer, (EuclideanCodebook, nn.modules.batchnorm._BatchNorm))
                for buffer in layer.buffers(recurse=False)]

    def _where_not_finite(self, loss: torch.Tensor, logs: Dict[str, float]) -> str:
        """The end of the message of a loss that is not finite: the values logged.
        Every rank, once some rank's loss was not finite (the flags are shared): the ranks
        where it was not, and the first one's values (each other rank's are finite)."""
        def values(logged: Dict[str, float]) -> str:
            return ", ".join(f"{k}={v:.4g}" for k, v in logged.items())

        if not self.dist.enabled:
            return f" ({values(logs)})"
        # (one gather, on this path only: every rank knows from the shared flags)
        ranks = self.dist.gather(None if bool(torch.isfinite(loss)) else logs)
        failed = [rank for rank, logged in enumerate(ranks) if logged is not None]
        if not failed:   # (not reached: some rank set the flag)
            return f" ({values(logs)})"
        if len(failed) == 1:
            return f" on rank {failed[0]} ({values(ranks[failed[0]])})"
        shown = ", ".join(str(rank) for rank in failed[:-1]) + f" and {failed[-1]}"
        return f" on ranks {shown} (rank {failed[0]}: {values(ranks[failed[0]])})"

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self, loader: DataLoader, seed: int = 0, n_audio: int = 4
                 ) -> Tuple[float, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Mean fullband spectral distance over ``loader``'s windows.

        Returns ``(distance, posterior means (frames, latent) or None, audio)`` where
        ``audio`` is ``(channels, time)``: the first ``n_audio`` windows, each input then
        its reconstruction. Uses its own seeded RNG so training's is untouched.
        """
        model = self.model
        was_training = model.training
        model.eval()
        total, count, means, audio = 0.0, 0, [], []
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                for x in loader:
                    x = x.to(self.device, non_blocking=True)
                    z = model.encode(x)
                    if model.is_variational:
                        means.append(model.latent_mean_of(z).transpose(1, 2).reshape(-1, z.shape[1] // 2).cpu())
                    y = model.decode(model.encoder.reparametrize(z)[0])[..., :x.shape[-1]]
                    distance = sum(model.audio_distance(x, y).values())
                    total += float(distance) * x.shape[0]
                    count += x.shape[0]
                    for xi, yi in zip(x, y):
                        if len(audio) < 2 * n_audio:
                            audio += [xi.cpu(), yi.cpu()]
        finally:
            model.train(was_training)
        z_all = torch.cat(means, 0) if means else None
        wav = torch.cat(audio, -1) if audio else None
        return total / max(count, 1), z_all, wav

    # ---------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        return {
            "optimizer_states": [self.gen_opt.state_dict()]
            + ([self.dis_opt.state_dict()] if self.dis_opt is not None else []),
            "lr_schedulers": [self.gen_sched.state_dict()],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> bool:
        """Restore optimisers and scheduler; False (and untouched) if they do not fit."""
        opts = state.get("optimizer_states") or []
        scheds = state.get("lr_schedulers") or []
        expected = 1 + (self.dis_opt is not None)
        if len(opts) != expected or len(scheds) != 1:
            return False
        try:
            self.gen_opt.load_state_dict(opts[0])
            if self.dis_opt is not None:
                self.dis_opt.load_state_dict(opts[1])
            self.gen_sched.load_state_dict(scheds[0])
        except (ValueError, KeyError, RuntimeError):
            return False
        return True
