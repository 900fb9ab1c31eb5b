"""Metrics as pure functions of arrays: segmentation overlap and surface distances, classification scores.

Nothing here reads files or knows about runs (that is :mod:`vesalius.evaluation`), so training, evaluation and
reports all compute a metric with the same code.
"""
