"""What validation measures about a model: latent statistics and receptive field.

Both end up in buffers of :class:`~rave_core.models.rave.RAVE` that export reads:
``latent_mean``, ``latent_pca`` and ``fidelity`` (the PCA behind the export's fidelity
cut), and ``receptive_field`` (which ``valid_signal_crop`` configs use in training).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch


def latent_statistics(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCA of posterior means, as RAVE computes it at validation.

    Args:
        z: posterior means ``(frames, latent)`` (every frame of every validation window).

    Returns:
        ``(mean (latent,), components (latent, latent), fidelity (latent,))``: the mean
        frame, the principal axes as rows (largest variance first), and the cumulative
        explained-variance ratio. Signs are fixed so the largest entry of each axis is
        positive (scikit-learn's convention), so the result does not depend on LAPACK.
    """
    x = z.detach().double().cpu().numpy()
    n, c = x.shape
    mean = x.mean(0)
    centred = x - mean
    # Fewer frames than dimensions: the full V still gives an orthonormal basis.
    _, s, vt = np.linalg.svd(centred, full_matrices=n < c)
    s = np.concatenate([s, np.zeros(c - len(s))])
    sign = np.sign(vt[np.arange(c), np.abs(vt).argmax(1)])
    vt = vt * np.where(sign == 0, 1.0, sign)[:, None]
    variance = s ** 2 / max(n - 1, 1)
    total = variance.sum()
    if total > 0:
        fidelity = np.cumsum(variance / total)
    else:  # a constant latent: every dimension is as (un)informative as any other
        fidelity = np.arange(1, c + 1) / c
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(z.dtype)  # noqa: E731
    return as_tensor(mean), as_tensor(vt), as_tensor(np.minimum(fidelity, 1.0))


def fidelity_dimensions(fidelity: torch.Tensor, levels=(.8, .9, .95, .99)) -> dict:
    """Latent dimensions needed to reach each explained-variance level (what RAVE logs)."""
    f = fidelity.cpu().numpy()
    return {f"fidelity_{p}": float(np.argmax(f > p)) for p in levels}


def receptive_field(model, start: int = 2 ** 15, limit: int = 2 ** 22) -> Tuple[int, int]:
    """Input samples that reach one output sample of ``model`` offline: ``(left, right)``.

    Measured by gradient: the input samples on which output sample ``N // 2`` depends are
    those with a non-zero gradient. ``left`` counts them before ``N // 2``, ``right``
    from ``N // 2`` on (so a strictly causal path gives ``right == 0``). ``N`` doubles
    until the gradient vanishes at both ends. The model's mode, warm-up state, gradients
    and the global RNG are left as they were.
    """
    was_training = model.training
    warmed = bool(getattr(model.encoder, "warmed_up", torch.tensor(0)))
    device = next(model.parameters()).device
    model.eval()
    model.encoder.set_warmed_up(False)  # a frozen encoder would cut the gradient
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            n = start
            while True:
                x = torch.randn(1, model.n_channels, n, device=device, requires_grad=True)
                z = model.encoder.reparametrize(model.encode(x))[0]
                y = model.decode(z)
                (grad,) = torch.autograd.grad(y[0, 0, n // 2], x)
                nonzero = grad.abs().sum(1)[0].nonzero().flatten()
                if len(nonzero) == 0:
                    return 0, 0
                first, last = int(nonzero[0]), int(nonzero[-1])
                if (first > 0 and last < n - 1) or n >= limit:
                    break
                n *= 2
    finally:
        model.encoder.set_warmed_up(warmed)
        model.train(was_training)
    half = n // 2
    return max(half - first, 0), max(last - half + 1, 0)


def valid_signal_crop(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Drop the edges of a multiband ``(batch, bands, frames)`` signal that see padding.

    ``left`` / ``right`` are the receptive field in audio samples, divided by the number
    of rows (RAVE's arithmetic, channels included: floor on the left, ceiling on the right).
    """
    bands = x.shape[1]
    x = x[..., left // bands:]
    if right:
        x = x[..., :-_ceil_div(right, bands)]
    return x


def cropped_length(n_signal: int, n_band: int, dim: int, left: int, right: int) -> int:
    """Frames left per band of ``n_signal`` samples after :func:`valid_signal_crop` of a
    multiband signal with ``dim`` rows (``n_band`` times the audio channels)."""
    frames = n_signal // n_band - left // dim
    if right:
        frames -= _ceil_div(right, dim)
    return frames


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)
