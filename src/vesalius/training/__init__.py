"""Training: settings, schedules, checkpoints, logs and the segmentation trainer."""

from vesalius.training.config import TrainingConfig
from vesalius.training.trainer import TrainingResult, train_segmentation

__all__ = ["TrainingConfig", "TrainingResult", "train_segmentation"]
