"""Patch sampling with foreground oversampling (:mod:`.sampling`, NumPy) and batched augmentation on the
batch's device (:mod:`.transforms`, torch; import it directly so that this package does not load torch)."""

from vesalius.augmentation.sampling import PatchSampler

__all__ = ["PatchSampler"]
