"""Torch-free prediction from an exported model package (``vesalius export``): NumPy, SciPy, SimpleITK and ONNX
Runtime only (``pip install vesalius[runtime]``).

:class:`Predictor` (:mod:`.predictor`) predicts with a package; :mod:`.package` reads and checks the package file;
:mod:`.contract` is its ``vesalius.json``.
"""

from vesalius.runtime.predictor import Predictor

__all__ = ["Predictor"]
