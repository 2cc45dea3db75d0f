"""Training schedules that configs bind: the KL weight (beta) warm-up."""
from __future__ import annotations

import math

import gin


@gin.configurable("BetaWarmupCallback", module="rave.model")
class BetaWarmup:
    """Weight of the KL term over training steps (acids-rave's ``BetaWarmupCallback``).

    From ``initial_value`` to ``target_value`` over ``warmup_len`` steps, interpolated in
    the log domain when ``log`` (the default), linearly otherwise.
    """

    def __init__(self, initial_value: float = .2, target_value: float = .2,
                 warmup_len: int = 1, log: bool = True) -> None:
        self.initial_value = initial_value
        self.target_value = target_value
        self.warmup_len = warmup_len
        self.log = log

    def __call__(self, step: int) -> float:
        """Beta at training step ``step`` (1-based, as acids-rave counts)."""
        if step >= self.warmup_len:
            return self.target_value
        t = step / self.warmup_len
        if self.log:
            return math.exp(math.log(self.initial_value) * (1 - t)
                            + math.log(self.target_value) * t)
        return min(t * (self.target_value - self.initial_value) + self.initial_value,
                   self.target_value)
