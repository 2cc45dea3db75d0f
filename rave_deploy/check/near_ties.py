"""Discrete models: codes that are almost equally near.

A discrete (RVQ) model's latent is an argmin over distances to its codes. A streaming
artefact computes the encoder's output in another order of float operations than the
eager model (about 1e-6 of its size apart), so where the two nearest codes of a frame are
within that of each other, the artefact may pick the other one, and the later
quantisers of the frame then quantise another residual. Both picks are right; a check
that compared them with the eager pick alone would fail a correct file. (On acids-rave's
full-size discrete checkpoint, 19 of 41344 frame-quantiser pairs of 60 s of test signal
were within 1e-6 of a tie; no file was seen to take one the other way past the warm-up.)

:func:`tie_alternatives` finds those near-ties in the eager encoding of a signal and
returns, for each, the codes the eager model gives when it takes the other code there;
:func:`tie_segments` the outputs around them. :func:`to_eager_choices` then maps an
artefact's output back onto the eager model's choices wherever it is nearer the other
pick's output than the eager one's: the harness
compares that with the eager output, and reports how many near-ties the artefact took
the other way. An artefact that is wrong is not nearer any alternative, so nothing is
hidden: alternatives exist only at genuine near-ties of the eager encoder.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

#: a near-tie: the two nearest codes' distances within this share of the distance
#: scale (``|h|^2 + |c|^2``); the rounding a streaming artefact adds is about 1e-6
TIE_TOLERANCE = 1e-5


@dataclass
class NearTie:
    """The second-nearest code at one frame of one quantiser, and the codes the eager
    model gives with it, ``(batch, quantisers, frames)``."""

    frame: int
    quantizer: int
    codes: torch.Tensor


def tie_alternatives(core, x: torch.Tensor, tolerance: Optional[float] = None
                     ) -> List[NearTie]:
    """Near-ties of the eager encoding of ``x`` ``(1, channels, time)`` by ``core`` (a
    :class:`~rave_deploy.model.DeployModel` with codebooks, offline), gaps up to
    ``tolerance`` (default :data:`TIE_TOLERANCE`): for each, the codes with the other
    pick there, the later quantisers of that frame re-quantised."""
    tolerance = TIE_TOLERANCE if tolerance is None else tolerance
    books = core.codebooks
    with torch.inference_mode():
        z = core.encoder(core._analysis(x.contiguous()))
        base = books.encode(z)
        residual = z[0].transpose(0, 1).contiguous()       # (frames, dim)
        ties: List[NearTie] = []
        for q, layer in enumerate(books.layers):
            h = layer.project_in(residual)
            norms = h.pow(2).sum(1, keepdim=True)
            distances = norms - 2 * h @ layer.codes.t() + layer.code_norms.unsqueeze(0)
            two = distances.topk(2, largest=False)
            scale = norms[:, 0] + layer.code_norms[two.indices[:, 0]]
            gap = (two.values[:, 1] - two.values[:, 0]) / scale.clamp(min=1e-12)
            for t in torch.nonzero(gap <= tolerance).flatten().tolist():
                codes = base.clone()
                codes[0, q, t] = float(two.indices[t, 1])
                rest = residual[t:t + 1] - layer.lookup(two.indices[t, 1:2])
                for later in range(q + 1, len(books.layers)):
                    index = books.layers[later].nearest(rest)
                    codes[0, later, t] = float(index[0])
                    rest = rest - books.layers[later].lookup(index)
                ties.append(NearTie(t, q, codes))
            residual = residual - layer.lookup(distances.argmin(-1))
    return ties


def tie_segments(core, x: torch.Tensor, method: str, context: int
                 ) -> List[Tuple[int, np.ndarray]]:
    """``method``'s eager output around each near-tie of ``x``'s encoding with the other
    pick: ``(start, values)`` pairs, ``values`` ``(channels, length)`` from output step
    ``start`` on. ``encode``: the codes of the tied frame. ``forward``: the decode of a
    window of the codes around it, ``context`` frames (the decoder's receptive field)
    each side of the outputs it keeps, so those are what a decode of the whole signal
    gives."""
    ties = tie_alternatives(core, x)
    if method == "encode":
        return [(t.frame, t.codes[0, :, t.frame:t.frame + 1].numpy()) for t in ties]
    out = []
    ratio, frames = int(core.ratio), ties[0].codes.shape[-1] if ties else 0
    with torch.inference_mode():
        for t in ties:
            first, last = max(0, t.frame - context), min(frames, t.frame + context + 1)
            lo, hi = max(0, first - context), min(frames, last + context)
            window = core.decode(t.codes[..., lo:hi])[0].numpy()
            out.append((first * ratio, window[:, (first - lo) * ratio:(last - lo) * ratio]))
    return out


def to_eager_choices(exported: np.ndarray, eager: np.ndarray,
                     segments: List[Tuple[int, np.ndarray]]) -> Tuple[np.ndarray, int]:
    """``exported`` with, wherever it is clearly nearer a near-tie's other output (a
    ``(start, values)`` segment) than the eager one, over the steps where the two differ, the
    eager output's difference from the other one added back: the output the artefact
    would give with the eager model's picks. ``exported`` and ``eager`` ``(channels,
    n)``, aligned with the segments. Returns it and how many near-ties the artefact took
    the other way.

    Near-ties of one frame, or of frames closer than the decoder's reach, overlap: the
    one the artefact took explains most of its difference, so they are tried in order of
    how much of it each explains, each against the output as mapped so far."""
    out = exported.copy()
    n = out.shape[-1]
    spans = []
    for start, values in segments:
        stop = min(n, start + values.shape[-1])
        if start < 0 or stop <= start:
            continue
        other, base = values[:, :stop - start], eager[:, start:stop]
        differ = np.nonzero(np.abs(other - base).max(0) > 0)[0]
        if differ.size:
            lo, hi = start + int(differ[0]), start + int(differ[-1]) + 1
            spans.append((lo, hi, other[:, lo - start:hi - start]))

    def explained(lo: int, hi: int, other: np.ndarray) -> float:
        here = out[:, lo:hi]
        return float(np.abs(here - eager[:, lo:hi]).sum() - np.abs(here - other).sum())

    taken = 0
    for lo, hi, other in sorted(spans, key=lambda s: -explained(*s)):
        # taken: nearer the other output by more than half their distance, so that a
        # pick whose effect is below the rounding is not counted by chance
        if explained(lo, hi, other) > 0.5 * float(np.abs(other - eager[:, lo:hi]).sum()):
            out[:, lo:hi] += eager[:, lo:hi] - other
            taken += 1
    return out, taken
