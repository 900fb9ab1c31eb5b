"""Deployment: export a trained model as a package (:mod:`.export`), its model card (:mod:`.model_card`)."""
