from vesalius.models.unet import UNet, build_network

__all__ = ["UNet", "build_network"]
