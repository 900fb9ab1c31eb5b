"""Pictures of results: overlays of segmentations on images and the self-contained HTML report."""
