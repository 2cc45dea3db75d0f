"""v3's AdaIN layers in an export: style transfer that the host can teach.

A v3 model puts an :class:`~rave_core.models.layers.AdaptiveInstanceNormalization`
before each residual unit of its encoder and decoder. It is the identity in training; at
inference it can learn the per-channel mean and standard deviation of a *target* sound
and of a *source* sound (one running average over host calls, per batch row), then
re-normalise the source's activations to the target's statistics. acids-rave's v3 export
lets hosts drive that through four nn~ attributes, which a TorchScript export here keeps:

* ``learn_target``: while on, every call adds its statistics to the target's; the output
  is left as it is (play the sound whose style you want);
* ``learn_source``: while on, every call adds its statistics to the source's, and
  transfers once both are known (play what you will perform);
* ``reset_target`` / ``reset_source``: forget one side; applied at the next call, then
  off again (a one-shot message).

Hosts set attributes between calls; as in acids-rave's export, the flags reach the layers
at the start of the next ``encode``, ``decode`` or ``forward`` call, so a change never
splits a block.

:class:`StyleTransfer` is that layer for TorchScript: its statistics are *replaced*, never
written in place (in-place writes made ``torch.jit.freeze`` fold a different set of
weights from one export to the next). ONNX graphs and the checker's eager reference apply
what the checkpoint learned and nothing more (:func:`freeze_adain`): ONNX hosts have no
attribute messages.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn as nn

from rave_core.models.layers import AdaptiveInstanceNormalization

def _transfer(x: torch.Tensor, mean_x: torch.Tensor, std_x: torch.Tensor,
              mean_y: torch.Tensor, std_y: torch.Tensor) -> torch.Tensor:
    """Re-normalise ``x`` ``(batch, channels, time)`` from the source statistics
    ``(rows, channels, 1)`` to the target's, row by row (rows >= batch)."""
    bs = x.size(0)
    x = (x - mean_x[:bs]) / (std_x[:bs] + 1e-5)  # acids-rave's epsilon
    return x * std_y[:bs] + mean_y[:bs]


def adain_layers(module: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(path, layer)`` of every AdaIN of ``module`` (a run's model), in module order."""
    return [(name, m) for name, m in module.named_modules()
            if isinstance(m, AdaptiveInstanceNormalization)]


def _replace(module: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, child, new)


class LearnedAdaIN(nn.Module):
    """What an AdaIN does with its checkpoint's statistics and nothing left to learn: the
    transfer from source to target, per batch row. ``(batch, channels, time)``, batch up
    to 64 (the statistics' rows)."""

    def __init__(self, adain: nn.Module) -> None:
        super().__init__()
        for name in ("mean_x", "std_x", "mean_y", "std_y"):
            self.register_buffer(name, getattr(adain, name).detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _transfer(x, self.mean_x, self.std_x, self.mean_y, self.std_y)


def freeze_adain(module: nn.Module) -> int:
    """Replace every AdaIN by what it computes at export: :class:`LearnedAdaIN` when its
    checkpoint learned both statistics, else nothing (``nn.Identity``). Returns how many."""
    found = adain_layers(module)
    for name, adain in found:
        learned = bool(adain.num_update_x) and bool(adain.num_update_y)
        _replace(module, name, LearnedAdaIN(adain) if learned else nn.Identity())
    return len(found)


class StyleTransfer(nn.Module):
    """An AdaIN a host can teach (see the module docstring). Computes what
    :class:`~rave_core.models.layers.AdaptiveInstanceNormalization` computes at inference,
    to the bit, from the same statistics.

    Buffers keep AdaIN's names and shapes (``x``: source, ``y``: target; means and
    standard deviations ``(64, channels, 1)``, one row per batch row, counts ``(1,)``), so
    a file's statistics read like a checkpoint's. ``learn_source`` / ``learn_target`` are
    set by the file's top-level attributes (:class:`~rave_deploy.torchscript.ScriptedRAVE`).

    ``(batch, channels, time) -> (batch, channels, time)``. Rows past the 64th are left
    as they are; a call of a single frame teaches nothing (its standard deviation is
    undefined: acids-rave's layer would store NaN and transfer NaN from then on).
    """

    def __init__(self, adain: nn.Module) -> None:
        super().__init__()
        for name in ("mean_x", "std_x", "num_update_x", "mean_y", "std_y", "num_update_y"):
            self.register_buffer(name, getattr(adain, name).detach().clone())
        self.learn_source = False
        self.learn_target = False
        # plain flags beside the counts: no tensor read on the path of every call
        self.has_source = bool(adain.num_update_x)
        self.has_target = bool(adain.num_update_y)

    @staticmethod
    def _running_mean(average: torch.Tensor, value: torch.Tensor,
                      count: torch.Tensor) -> torch.Tensor:
        # AdaIN's in-place `average[:bs] += (value - average[:bs]) / (count + 1)`, as a
        # new tensor: the same float operations, so the same bits
        bs = value.size(0)
        rows = average[:bs] + (value - average[:bs]) / (count + 1)
        return torch.cat([rows, average[bs:]], 0)

    def _teaches(self, x: torch.Tensor) -> bool:
        # one frame has no standard deviation; rows past the statistics' have no slot
        return x.size(-1) > 1 and x.size(0) <= self.mean_x.size(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.learn_target:
            if self._teaches(x):
                mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True)
                self.mean_y = self._running_mean(self.mean_y, mean, self.num_update_y)
                self.std_y = self._running_mean(self.std_y, std, self.num_update_y)
                self.num_update_y = self.num_update_y + 1
                self.has_target = True
            return x
        if self.learn_source and self._teaches(x):
            mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True)
            self.mean_x = self._running_mean(self.mean_x, mean, self.num_update_x)
            self.std_x = self._running_mean(self.std_x, std, self.num_update_x)
            self.num_update_x = self.num_update_x + 1
            self.has_source = True
        if self.has_source and self.has_target and x.size(0) <= self.mean_x.size(0):
            x = _transfer(x, self.mean_x, self.std_x, self.mean_y, self.std_y)
        return x

    @torch.jit.export
    def reset_source(self) -> None:
        """Forget the source's statistics."""
        self.mean_x = torch.zeros_like(self.mean_x)
        self.std_x = torch.ones_like(self.std_x)
        self.num_update_x = torch.zeros_like(self.num_update_x)
        self.has_source = False

    @torch.jit.export
    def reset_target(self) -> None:
        """Forget the target's statistics."""
        self.mean_y = torch.zeros_like(self.mean_y)
        self.std_y = torch.ones_like(self.std_y)
        self.num_update_y = torch.zeros_like(self.num_update_y)
        self.has_target = False


def make_style_learnable(module: nn.Module) -> int:
    """Replace every AdaIN of ``module`` by a :class:`StyleTransfer` that starts from its
    checkpoint's statistics. Returns how many."""
    found = adain_layers(module)
    for name, adain in found:
        _replace(module, name, StyleTransfer(adain))
    return len(found)


def style_layers(module: nn.Module) -> List[Tuple[str, StyleTransfer]]:
    """``(path, layer)`` of every :class:`StyleTransfer` in ``module``, in module order."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, StyleTransfer)]
