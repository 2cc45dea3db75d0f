"""A spherical RAVE's latent as hosts see it: the angles of a point on the unit sphere.

acids-rave exports a ``spherical`` model's latent of ``D`` dimensions as its ``D - 1``
hyperspherical angles, each scaled to ``[-1, 1]``: ``encode`` gives the angles of the
encoder's output (its direction: the norm does not matter), ``decode`` turns angles back
into a unit vector (any value is an angle: ``decode`` wraps it around). Both are written
here in the order of acids-rave's operations (its cumulative sums and products
accumulate in float64), so that the same latent gives the same angles, and in ops that TorchScript scripts and ONNX exports (no in-place writes, a
cumulative product unrolled: ONNX has no ``CumProd``).

Where acids-rave's conversion gives NaN, these give a number: a direction whose last
coordinates are all zero (0 / 0), and ratios that float rounding puts just past 1.
"""
from __future__ import annotations

import math
from typing import List

import torch


def to_angles(z: torch.Tensor) -> torch.Tensor:
    """``(batch, D, frames) -> (batch, D - 1, frames)``: the angles of each frame's
    direction, in ``[-1, 1]``."""
    squares = z.flip(1).pow(2)
    # |z[k:]| for k < D - 1: the last two squares summed first, as acids-rave sums them
    tail = torch.cat([squares[:, :1] + squares[:, 1:2], squares[:, 2:]], 1)
    tail = tail.cumsum(1).flip(1).sqrt()
    # float32's smallest normal number: only an all-zero tail changes (0 / 0 in acids-rave)
    ratio = (z[:, :-1] / tail.clamp_min(1.1754944e-38)).clamp(-1.0, 1.0)
    angles = torch.arccos(ratio)
    first, last = angles[:, :-1], angles[:, -1:]
    last = torch.where(z[:, -1:] >= 0, last, 2 * math.pi - last)  # the full turn
    angles = torch.cat([first / math.pi, last / (2 * math.pi)], 1)
    return 2 * (angles - .5)


def from_angles(angles: torch.Tensor) -> torch.Tensor:
    """``(batch, D - 1, frames) -> (batch, D, frames)``: the unit vectors at these angles
    (values outside ``[-1, 1]`` wrap around)."""
    turns = torch.remainder(angles / 2 + .5, 1)
    turns = torch.cat([turns[:, :-1] * math.pi, turns[:, -1:] * (2 * math.pi)], 1)
    # the running product of the sines in float64, as torch's cumprod accumulates it
    sines = turns.sin().to(torch.float64)
    products: List[torch.Tensor] = [sines[:, :1]]
    for k in range(1, sines.shape[1]):
        products.append(products[-1] * sines[:, k:k + 1])
    ones = torch.ones_like(turns[:, :1])
    sines = torch.cat(products, 1).to(turns.dtype)
    return torch.cat([turns.cos(), ones], 1) * torch.cat([ones, sines], 1)
