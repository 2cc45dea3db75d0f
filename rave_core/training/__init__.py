"""Training: the RAVE schedule (phase 1 representation, phase 2 adversarial), checkpoints,
resumption, torch.distributed."""
from .trainer import TrainingError, TrainResult, train

__all__ = ["TrainResult", "TrainingError", "train"]
