"""Fold a deterministic model's latent path into the two convolutions around it.

Between the encoder's last convolution and the decoder's first one, a deterministic
export computes only affine maps: the posterior mean (the first half of the encoder's
output channels), centring on the latent mean and the PCA rotation, the cut to
``latent_size`` dimensions, then the inverse rotation with zeros for the cut
dimensions, the latent mean added back, and zeros for the noise-augmentation
dimensions. They fold into the convolutions:

* the encoder's last convolution outputs the ``latent_size`` kept PCA coordinates
  directly: the scale half and the cut dimensions are never computed;
* the decoder's first convolution takes those coordinates plus one constant channel
  of ones that carries the latent mean. A zero in that channel is what the zero
  padding (offline) and the zero initial state (streaming) hold, so an edge still
  means a zero full latent, exactly as before folding.

Every streaming call reads every weight once, and at small host blocks that read is
most of the cost (see ``benchmarks/streaming_rtf.py``'s ``floor`` row): BRAVE with a
16-dimensional latent loses 2.7 of its 16.8 MB. Outputs equal the unfolded model's up
to float rounding (the sums are reassociated).

Only for graphs whose latent is never sampled nor filled by the host: the ONNX targets'
``forward``. TorchScript files switch ``deterministic`` at run time, and anira's graphs
take the cut dimensions as an input, so both keep the unfolded path.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from rave_core.models.encoders import VariationalEncoder
from rave_core.nn.conv import Conv1d


def dense_weight(conv: Conv1d) -> torch.Tensor:
    """``conv``'s weight as one dense ``(out, in, kernel)`` tensor (groups expanded
    into a block-diagonal)."""
    w = conv.weight.detach()
    if conv.groups == 1:
        return w.clone()
    out_g, in_g = conv.out_channels // conv.groups, conv.in_channels // conv.groups
    dense = w.new_zeros(conv.out_channels, conv.in_channels, w.shape[-1])
    for g in range(conv.groups):
        dense[g * out_g:(g + 1) * out_g, g * in_g:(g + 1) * in_g] = w[g * out_g:(g + 1) * out_g]
    return dense


def _replace_parameters(conv: Conv1d, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    conv.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    conv.bias = None if bias is None else nn.Parameter(bias.contiguous(), requires_grad=False)
    conv.out_channels, conv.in_channels = int(weight.shape[0]), int(weight.shape[1])
    conv.groups = 1


def encoder_output_conv(encoder: nn.Module) -> Optional[Conv1d]:
    """The convolution whose output *is* the variational encoder's output, if the
    encoder has that shape (acids-rave's ``Encoder`` and ``EncoderV2`` do)."""
    if not isinstance(encoder, VariationalEncoder):
        return None
    net = getattr(encoder.encoder, "net", None)
    last = net[-1] if isinstance(net, nn.Sequential) and len(net) else None
    return last if isinstance(last, Conv1d) else None


def decoder_input_conv(decoder: nn.Module, latent_channels: int) -> Optional[Conv1d]:
    """The convolution that alone reads the decoder's input (RAVE's generators start
    with one), if it takes ``latent_channels`` channels."""
    net = getattr(decoder, "net", None)
    first = net[0] if isinstance(net, nn.Sequential) and len(net) else None
    if isinstance(first, Conv1d) and first.groups == 1 and first.in_channels == latent_channels:
        return first
    return None


def fold_latent_path(encoder_conv: Conv1d, decoder_conv: Conv1d, pca: torch.Tensor,
                     mean: torch.Tensor, latent_size: int) -> int:
    """Fold mean, PCA and cut into ``encoder_conv`` and their inverse into
    ``decoder_conv`` (in place). Returns how many parameters were removed.

    Args:
        encoder_conv: outputs ``(mean, scale)`` stacked on channels, ``2 * L`` of them.
        decoder_conv: reads the full latent ``(batch, L + augmentation, time)``.
        pca: ``(L, L)`` rotation, rows are components (``z_pca = pca @ (z - mean)``).
        mean: ``(L,)`` latent mean.
        latent_size: kept dimensions ``K``. Afterwards the encoder conv outputs
            ``(batch, K, time)`` and the decoder conv reads ``(batch, K + 1, time)``,
            the last channel all ones.
    """
    full = int(pca.shape[0])
    before = sum(p.numel() for conv in (encoder_conv, decoder_conv) for p in conv.parameters())
    rows = pca[:latent_size].detach().to(torch.float64)
    mean = mean.detach().to(torch.float64)
    with torch.no_grad():
        w = dense_weight(encoder_conv)[:full].to(torch.float64)       # posterior mean half
        b = torch.zeros(full, dtype=torch.float64) if encoder_conv.bias is None \
            else encoder_conv.bias.detach()[:full].to(torch.float64)
        _replace_parameters(encoder_conv,
                            torch.einsum("kc,cit->kit", rows, w).float(),
                            (rows @ (b - mean)).float())
        w = decoder_conv.weight.detach()[:, :full].to(torch.float64)  # augmentation reads zeros
        coords = torch.einsum("oct,kc->okt", w, rows)
        offset = torch.einsum("oct,c->ot", w, mean).unsqueeze(1)
        bias = None if decoder_conv.bias is None else decoder_conv.bias.detach().clone()
        _replace_parameters(decoder_conv, torch.cat([coords, offset], 1).float(), bias)
    after = sum(p.numel() for conv in (encoder_conv, decoder_conv) for p in conv.parameters())
    return before - after
