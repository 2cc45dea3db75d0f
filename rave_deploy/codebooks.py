"""The residual codebooks of a discrete (RVQ) RAVE, as an export carries them.

Training's :class:`~rave_core.models.quantization.ResidualVectorQuantization` also holds
what only training needs (k-means initialisation, EMA statistics, dead-code re-seeding);
:class:`ResidualCodebooks` keeps the codes and the lookups, in plain ops that TorchScript
scripts and ONNX traces.

Exported latents follow acids-rave's export of discrete models: ``encode`` returns the
code index of each quantiser as a float (hosts pass float signals), ``decode`` clamps its
input to ``[0, codebook_size - 1]`` and truncates it to an integer (``3.9`` is code 3;
NaN is code 0), then sums the codes of every quantiser.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from rave_core.models.quantization import ResidualVectorQuantization, VectorQuantization


class Codebook(nn.Module):
    """One quantiser: ``codebook_size`` codes, with the projections to and from the code
    space when the codes are smaller than the latent (identity otherwise).

    Args:
        quantizer: a trained :class:`~rave_core.models.quantization.VectorQuantization`
            (copied; left untouched).
    """

    def __init__(self, quantizer: VectorQuantization) -> None:
        super().__init__()
        codes = quantizer.codebook.detach().clone()
        self.project_in = _copy_linear(quantizer.project_in)
        self.project_out = _copy_linear(quantizer.project_out)
        self.register_buffer("codes", codes)
        # |c|^2 of the nearest-code distance, computed once as training computes it
        self.register_buffer("code_norms", codes.pow(2).sum(1))

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, dim) -> (n,)``: index of the nearest code (squared Euclidean distance,
        summed in training's order so that the same latent picks the same code)."""
        h = self.project_in(x)
        distances = (h.pow(2).sum(1, keepdim=True) - 2 * h @ self.codes.t()
                     + self.code_norms.unsqueeze(0))
        return distances.argmin(-1)

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """``(n,) -> (n, dim)``: the codes, projected back to the latent."""
        return self.project_out(F.embedding(index, self.codes))


def _copy_linear(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.Linear):
        copy = nn.Linear(module.in_features, module.out_features)
        copy.load_state_dict(module.state_dict())
        return copy
    return nn.Identity()


class ResidualCodebooks(nn.Module):
    """Residual quantisation of a latent into code indices, and back.

    Args:
        rvq: a trained :class:`~rave_core.models.quantization.ResidualVectorQuantization`
            (copied; left untouched).

    ``encode``: ``(batch, dim, frames) -> (batch, num_quantizers, frames)`` indices as
    ``float``; ``decode``: the inverse, ``(batch, num_quantizers, frames) -> (batch, dim,
    frames)``. Frame by frame: no state, so streaming needs nothing here.
    """

    def __init__(self, rvq: ResidualVectorQuantization) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Codebook(layer) for layer in rvq.layers])
        #: whether training ever set the codes (k-means on its first batch)
        self.initialised = all(bool(layer._codebook.inited.item()) for layer in rvq.layers)
        self.num_quantizers = len(rvq.layers)
        self.codebook_size = int(rvq.layers[0].codebook_size)
        self.dim = int(rvq.layers[0].project_out.out_features
                       if isinstance(rvq.layers[0].project_out, nn.Linear)
                       else rvq.layers[0].codebook.shape[1])

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        batch, frames = z.shape[0], z.shape[-1]
        residual = z.transpose(1, 2).reshape(batch * frames, z.shape[1])
        indices = []
        for layer in self.layers:
            index = layer.nearest(residual)
            residual = residual - layer.lookup(index)
            indices.append(index)
        codes = torch.stack(indices, 0).reshape(self.num_quantizers, batch, frames)
        return codes.transpose(0, 1).to(z.dtype)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        batch, frames = codes.shape[0], codes.shape[-1]
        # NaN is code 0 (a cast of NaN is no index: nn~ would raise on every block, ONNX
        # Runtime refuses the Gather); isnan + masked_fill are IsNaN + Where in ONNX
        index = codes.masked_fill(torch.isnan(codes), 0.0).clamp(0, self.codebook_size - 1).long()
        index = index.transpose(1, 2).reshape(batch * frames, self.num_quantizers)
        z = torch.zeros((), dtype=codes.dtype, device=codes.device)  # as training sums
        for i, layer in enumerate(self.layers):
            z = z + layer.lookup(index[:, i])
        return z.reshape(batch, frames, self.dim).transpose(1, 2).contiguous()
