from vesalius.models.families import build_network
from vesalius.models.unet import UNet

__all__ = ["UNet", "build_network"]
