"""Prediction: Gaussian-weighted sliding windows with mirroring test-time augmentation
(:mod:`.sliding_window`), and whole cases predicted back on their native grid (:mod:`.predict`)."""

from vesalius.inference.predict import predict_image
from vesalius.inference.sliding_window import predict_probabilities, tta_flips

__all__ = ["predict_image", "predict_probabilities", "tta_flips"]
