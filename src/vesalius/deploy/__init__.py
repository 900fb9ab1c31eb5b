"""Deployment: export a trained model as a package (:mod:`.export`) or a MONAI Bundle (:mod:`.monai_bundle`), its
model card (:mod:`.model_card`), the torch backend for packages (:mod:`.torch_backend`)."""
