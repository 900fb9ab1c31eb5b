"""Metrics and evaluation of predictions against references."""
