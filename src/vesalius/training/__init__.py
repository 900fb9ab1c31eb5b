"""Training: settings, the shared loop and each task's head (segmentation, classification), schedules and logs."""

from vesalius.training.loop import TrainingResult
from vesalius.training.settings import ClassificationSettings, SegmentationSettings

__all__ = ["ClassificationSettings", "SegmentationSettings", "TrainingResult"]
