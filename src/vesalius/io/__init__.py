"""Image I/O with geometry: read and write every supported format (see :mod:`vesalius.io.read_write`)."""

from vesalius.io.image import Geometry, Image, from_sitk, to_sitk
from vesalius.io.read_write import (
    IMAGE_SUFFIXES,
    channels_in_file,
    has_header_text,
    image_suffix,
    read_image,
    reorient,
    strip_suffix,
    write_image,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "Geometry",
    "Image",
    "channels_in_file",
    "from_sitk",
    "has_header_text",
    "image_suffix",
    "read_image",
    "reorient",
    "strip_suffix",
    "to_sitk",
    "write_image",
]
