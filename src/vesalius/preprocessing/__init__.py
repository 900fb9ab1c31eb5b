"""Crop, resample, normalise and cache cases; and the exact inverse for predictions."""
