"""Residual vector quantisation (SoundStream's Algorithm 1) for the ``discrete`` config.

Codebooks are learnt by exponential moving averages (no gradient), initialised by k-means
on the first training batch. Codes that fall out of use are re-seeded from the batch, but
the EMA update that follows recomputes every code from ``embed_avg / cluster_size``, so
the re-seed does not survive the step; this is kept as acids-rave (and EnCodec, whose
code it follows) does it, for parity.
The encoder output reaches the quantiser through a straight-through estimator and is
pulled towards its code by a commitment loss.

State-dict keys are acids-rave's: ``layers.<i>._codebook.{inited, cluster_size, embed,
embed_avg}`` (plus ``layers.<i>.project_{in,out}`` when ``codebook_dim != dim``). Gin name:
``rave.quantization.ResidualVectorQuantization``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import gin
import torch
import torch.nn as nn
import torch.nn.functional as F


def _pick_rows(samples: torch.Tensor, num: int) -> torch.Tensor:
    """``num`` rows of ``samples`` ``(n, dim)``: without replacement when ``n >= num``."""
    n = samples.shape[0]
    if n >= num:
        index = torch.randperm(n, device=samples.device)[:num]
    else:
        index = torch.randint(0, n, (num,), device=samples.device)
    return samples[index]


def _squared_distances(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``(n, dim), (k, dim) -> (n, k)`` squared Euclidean distances."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ codes.t()
            + codes.pow(2).sum(1).unsqueeze(0))


def kmeans(samples: torch.Tensor, num_clusters: int, num_iters: int = 10
           ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on ``(n, dim)`` samples. Returns ``(centroids (k, dim), counts (k,))``;
    a cluster left empty keeps its previous centroid."""
    centroids = _pick_rows(samples, num_clusters)
    counts = torch.zeros(num_clusters, dtype=torch.long, device=samples.device)
    for _ in range(num_iters):
        assign = _squared_distances(samples, centroids).argmin(-1)
        counts = torch.bincount(assign, minlength=num_clusters)
        sums = torch.zeros_like(centroids).index_add_(0, assign, samples)
        empty = counts == 0
        means = sums / counts.clamp(min=1).unsqueeze(1).to(samples.dtype)
        centroids = torch.where(empty.unsqueeze(1), centroids, means)
    return centroids, counts


class EuclideanCodebook(nn.Module):
    """``codebook_size`` codes of size ``dim``, nearest-neighbour lookup, EMA updates.

    Buffers: ``inited`` (1 once initialised), ``cluster_size`` (EMA code usage),
    ``embed`` (the codes), ``embed_avg`` (EMA of the sums of the vectors each code got).
    """

    def __init__(self, dim: int, codebook_size: int, kmeans_init: bool = False,
                 kmeans_iters: int = 10, decay: float = 0.99, epsilon: float = 1e-5,
                 threshold_ema_dead_code: int = 2) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.kmeans_iters = kmeans_iters
        self.decay = decay
        self.epsilon = epsilon
        self.threshold_ema_dead_code = threshold_ema_dead_code
        if kmeans_init:
            codes = torch.zeros(codebook_size, dim)
        else:
            codes = nn.init.kaiming_uniform_(torch.empty(codebook_size, dim))
        self.register_buffer("inited", torch.tensor([0.0 if kmeans_init else 1.0]))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed", codes)
        self.register_buffer("embed_avg", codes.clone())

    @torch.jit.unused
    def _init_from(self, x: torch.Tensor) -> None:
        codes, counts = kmeans(x, self.codebook_size, self.kmeans_iters)
        self.embed.copy_(codes)
        self.embed_avg.copy_(codes)
        self.cluster_size.copy_(counts.to(self.cluster_size.dtype))
        self.inited.fill_(1.0)

    def _expire_codes(self, x: torch.Tensor) -> None:
        """Re-seed codes whose EMA usage fell below the threshold with batch vectors.

        As in acids-rave and EnCodec, only ``embed`` is re-seeded (not ``embed_avg`` or
        ``cluster_size``), after this batch's lookup, and :meth:`_ema_update` then
        overwrites every row of ``embed``: the re-seed is lost (it only draws from the
        random generator). Kept for parity, not fixed.
        """
        if self.threshold_ema_dead_code == 0:
            return
        dead = self.cluster_size < self.threshold_ema_dead_code
        if not bool(dead.any()):
            return
        fresh = _pick_rows(x, self.codebook_size)
        self.embed.copy_(torch.where(dead.unsqueeze(1), fresh, self.embed))

    def _ema_update(self, x: torch.Tensor, onehot: torch.Tensor) -> None:
        """EMA of code usage and vector sums; every code becomes ``embed_avg`` divided by
        its Laplace-smoothed usage (overwriting any re-seed of :meth:`_expire_codes`)."""
        keep = self.decay
        self.cluster_size.mul_(keep).add_(onehot.sum(0), alpha=1 - keep)
        self.embed_avg.mul_(keep).add_(onehot.t() @ x, alpha=1 - keep)
        total = self.cluster_size.sum()
        smoothed = ((self.cluster_size + self.epsilon)
                    / (total + self.codebook_size * self.epsilon) * total)
        self.embed.copy_(self.embed_avg / smoothed.unsqueeze(1))

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, dim) -> (n,)`` index of the nearest code."""
        return _squared_distances(x, self.embed).argmin(-1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, time, dim) -> (batch, time)`` code indices."""
        return self.nearest(x.reshape(-1, x.shape[-1])).reshape(x.shape[0], x.shape[1])

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """``(batch, time) -> (batch, time, dim)`` codes."""
        return F.embedding(indices, self.embed)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(batch, time, dim) -> (codes (batch, time, dim), indices (batch, time))``.

        Initialises the codebook by k-means if not yet done; in training, updates it by
        EMA after the lookup.
        """
        flat = x.reshape(-1, x.shape[-1])
        if not bool(self.inited.item()):
            self._init_from(flat.detach())
        index = self.nearest(flat)
        indices = index.reshape(x.shape[0], x.shape[1])
        codes = self.decode(indices)
        if self.training:
            with torch.no_grad():
                data = flat.detach()
                self._expire_codes(data)
                self._ema_update(data, F.one_hot(index, self.codebook_size).to(data.dtype))
        return codes, indices


class VectorQuantization(nn.Module):
    """One quantiser on ``(batch, dim, time)``, with optional linear projections to and
    from a ``codebook_dim`` codebook. ``forward`` returns ``(quantized (batch, dim, time),
    indices (batch, time), loss (1,))``; in training the output passes gradients straight
    through to the input and ``loss`` is ``commitment_weight * mse(code, input)``.
    """

    def __init__(self, dim: int, codebook_size: int, codebook_dim: Optional[int] = None,
                 decay: float = 0.99, epsilon: float = 1e-5, kmeans_init: bool = True,
                 kmeans_iters: int = 50, threshold_ema_dead_code: int = 2,
                 commitment_weight: float = 1.) -> None:
        super().__init__()
        inner = codebook_dim or dim
        project = inner != dim
        self.project_in = nn.Linear(dim, inner) if project else nn.Identity()
        self.project_out = nn.Linear(inner, dim) if project else nn.Identity()
        self.commitment_weight = commitment_weight
        self.codebook_size = codebook_size
        self._codebook = EuclideanCodebook(inner, codebook_size, kmeans_init=kmeans_init,
                                           kmeans_iters=kmeans_iters, decay=decay,
                                           epsilon=epsilon,
                                           threshold_ema_dead_code=threshold_ema_dead_code)

    @property
    def codebook(self) -> torch.Tensor:
        return self._codebook.embed

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, dim, time) -> (batch, time)`` indices."""
        return self._codebook.encode(self.project_in(x.transpose(1, 2)))

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """``(batch, time) -> (batch, dim, time)``."""
        return self.project_out(self._codebook.decode(indices)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.project_in(x.transpose(1, 2))  # (batch, time, inner)
        codes, indices = self._codebook(h)
        loss = torch.zeros(1, device=x.device, dtype=x.dtype)
        if self.training:
            codes = h + (codes - h).detach()
            if self.commitment_weight > 0:
                loss = loss + self.commitment_weight * F.mse_loss(codes.detach(), h)
        return self.project_out(codes).transpose(1, 2), indices, loss


@gin.configurable(module="rave.quantization")
class ResidualVectorQuantization(nn.Module):
    """``num_quantizers`` vector quantisers, each coding the residual of the previous ones.

    ``forward``: ``(batch, dim, time) -> (quantized (batch, dim, time), summed loss (),
    indices (batch, num_quantizers, time))``. ``encode`` / ``decode`` convert between
    ``(batch, dim, time)`` and indices ``(batch, num_quantizers, time)``.
    """

    def __init__(self, num_quantizers: int, dim: int, codebook_size: int,
                 codebook_dim: Optional[int] = None, decay: float = 0.99,
                 epsilon: float = 1e-5, kmeans_init: bool = True, kmeans_iters: int = 50,
                 threshold_ema_dead_code: int = 2, commitment_weight: float = 1.) -> None:
        super().__init__()
        self.layers = nn.ModuleList([
            VectorQuantization(dim, codebook_size, codebook_dim=codebook_dim, decay=decay,
                               epsilon=epsilon, kmeans_init=kmeans_init,
                               kmeans_iters=kmeans_iters,
                               threshold_ema_dead_code=threshold_ema_dead_code,
                               commitment_weight=commitment_weight)
            for _ in range(num_quantizers)
        ])

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        residual = x
        quantized = torch.zeros_like(x)
        losses, indices = [], []
        for layer in self.layers:
            q, idx, loss = layer(residual)
            residual = residual - q
            quantized = quantized + q
            indices.append(idx)
            losses.append(loss)
        return quantized, torch.stack(losses, 0).sum(), torch.stack(indices, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        indices = []
        for layer in self.layers:
            idx = layer.encode(residual)
            residual = residual - layer.decode(idx)
            indices.append(idx)
        return torch.stack(indices, 1)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((), device=indices.device)
        for i, layer in enumerate(self.layers):
            out = out + layer.decode(indices[:, i])
        return out
